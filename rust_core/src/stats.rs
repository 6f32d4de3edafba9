//! Answer-quality counters of the serving path, kept in Rust and read by the Prometheus
//! collector on scrape: values served per view and status (one add per view and status per
//! request, never per value), the newest event time served per view, and the sizes of requests.

use ahash::AHashMap;
use parking_lot::Mutex;

/// Upper bounds of the entities-per-request and features-per-request histograms.
pub const SIZE_BUCKETS: [u64; 11] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000];

#[derive(Debug, Clone, Copy, Default)]
pub struct ViewStats {
    /// Values served, indexed by status number (Feast's `FieldStatus`).
    pub values: [u64; 5],
    /// Newest event timestamp (us) of a row served; 0 before the first.
    pub newest_event_ts: i64,
}

#[derive(Debug, Clone, Default)]
pub struct StatsSnapshot {
    pub views: Vec<(String, ViewStats)>,
    /// Non-cumulative counts per bucket of `SIZE_BUCKETS`, plus one for larger values.
    pub entities: Vec<u64>,
    pub features: Vec<u64>,
    pub entities_sum: u64,
    pub features_sum: u64,
    pub requests: u64,
}

#[derive(Default)]
struct Inner {
    views: AHashMap<String, ViewStats>,
    entities: [u64; SIZE_BUCKETS.len() + 1],
    features: [u64; SIZE_BUCKETS.len() + 1],
    entities_sum: u64,
    features_sum: u64,
    requests: u64,
}

#[derive(Default)]
pub struct ServeStats {
    inner: Mutex<Inner>,
}

fn bucket(x: u64) -> usize {
    SIZE_BUCKETS
        .iter()
        .position(|&b| x <= b)
        .unwrap_or(SIZE_BUCKETS.len())
}

impl ServeStats {
    /// Adds one request: per view read, its values per status and newest event time (from
    /// `query::Answer::view_stats`); the request's entity and feature counts.
    pub fn record<'a>(
        &self,
        views: impl IntoIterator<Item = (&'a str, ViewStats)>,
        n_entities: usize,
        n_features: usize,
    ) {
        let (n, f) = (n_entities as u64, n_features as u64);
        let mut inner = self.inner.lock();
        for (name, st) in views {
            // The name is copied once per view ever served, not once per request.
            if !inner.views.contains_key(name) {
                inner.views.insert(name.to_string(), ViewStats::default());
            }
            let e = inner.views.get_mut(name).expect("inserted above");
            for (a, b) in e.values.iter_mut().zip(st.values) {
                *a += b;
            }
            e.newest_event_ts = e.newest_event_ts.max(st.newest_event_ts);
        }
        inner.entities[bucket(n)] += 1;
        inner.features[bucket(f)] += 1;
        inner.entities_sum += n;
        inner.features_sum += f;
        inner.requests += 1;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let inner = self.inner.lock();
        let mut views: Vec<(String, ViewStats)> =
            inner.views.iter().map(|(k, v)| (k.clone(), *v)).collect();
        views.sort_by(|a, b| a.0.cmp(&b.0));
        StatsSnapshot {
            views,
            entities: inner.entities.to_vec(),
            features: inner.features.to_vec(),
            entities_sum: inner.entities_sum,
            features_sum: inner.features_sum,
            requests: inner.requests,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets() {
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(100), 6);
        assert_eq!(bucket(101), 7);
        assert_eq!(bucket(1_000_000), SIZE_BUCKETS.len());
    }
}
