//! Answer-quality counters of the serving path, kept in Rust and read by the Prometheus
//! collector on scrape: values served per view and status (one add per view and status per
//! request, never per value), the newest event time served per view, and the sizes of requests.

use crate::query::{Answer, Plan};
use crate::row::{RowView, HEADER_LEN};
use crate::types::Status;
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
    /// Counts the statuses of one answer. Per row it tests the presence bitmap of the requested
    /// slots (a few bytes) instead of visiting every value.
    pub fn record(&self, plan: &Plan, answer: &Answer) {
        let mut per_view: Vec<ViewStats> = vec![ViewStats::default(); plan.views.len()];
        for (v, pv) in plan.views.iter().enumerate() {
            let slots: Vec<usize> = plan
                .columns
                .iter()
                .filter(|c| c.view == v)
                .map(|c| c.slot)
                .collect();
            let ncols = slots.len() as u64;
            let n_layout = pv.def.layout.len();
            let mut mask = vec![0u8; n_layout.div_ceil(8)];
            for &s in &slots {
                mask[s / 8] |= 1 << (s % 8);
            }
            let distinct: u64 = mask.iter().map(|b| u64::from(b.count_ones())).sum();
            let max_slot = slots.iter().copied().max().unwrap_or(0);
            let st = &mut per_view[v];
            for (e, row) in answer.rows[v].iter().enumerate() {
                let Some(view) = row.as_deref().and_then(RowView::new) else {
                    st.values[Status::NotFound as usize] += ncols;
                    continue;
                };
                st.newest_event_ts = st.newest_event_ts.max(view.event_ts());
                if answer.expired[v][e] {
                    st.values[Status::OutsideMaxAge as usize] += ncols;
                    continue;
                }
                let bytes = row.as_deref().unwrap_or_default();
                if view.n_slots() == n_layout && bytes.len() >= HEADER_LEN + mask.len() {
                    let present: u64 = mask
                        .iter()
                        .zip(&bytes[HEADER_LEN..HEADER_LEN + mask.len()])
                        .map(|(m, b)| u64::from((m & b).count_ones()))
                        .sum();
                    let nulls = distinct - present;
                    st.values[Status::NullValue as usize] += nulls;
                    st.values[Status::Present as usize] += ncols - nulls;
                } else if max_slot < view.n_slots() {
                    for &s in &slots {
                        let status = if view.is_present(s) {
                            Status::Present
                        } else {
                            Status::NullValue
                        };
                        st.values[status as usize] += 1;
                    }
                } else {
                    // An old row without some of the requested (newer) features.
                    for &s in &slots {
                        let status = if s >= view.n_slots() {
                            Status::NotFound
                        } else if view.is_present(s) {
                            Status::Present
                        } else {
                            Status::NullValue
                        };
                        st.values[status as usize] += 1;
                    }
                }
            }
        }
        let n = answer.num_entities as u64;
        let f = plan.columns.len() as u64;
        let mut inner = self.inner.lock();
        for (pv, st) in plan.views.iter().zip(per_view) {
            let e = inner.views.entry(pv.def.name.clone()).or_default();
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
