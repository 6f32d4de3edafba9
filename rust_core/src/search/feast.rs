//! Feast's `POST /retrieve-online-documents` as the Feast SDK's `remote` online store sends it
//! for `FeatureStore.retrieve_online_documents_v2` (Feast 0.67: it tries `/search` first and
//! falls back to this path on a 404):
//! `{"features": ["view:feature", ...], "query": [...], "top_k": k, "api_version": 2,
//!   "distance_metric": null | "L2" | "cosine" | ..., "query_string": null}` (older SDKs send
//! the vector as `embedding`),
//! answered in the shape of Feast's `/get-online-features` (the hits as rows: their join keys,
//! the requested features, then a `distance` column), which is what the SDK parses.
//!
//! The searched feature is the requested feature that has a vector index, else the view's
//! only indexed feature.

use super::request::SearchRequest;
use super::serve::{run, Wire};
use crate::error::Result;
use crate::invalid;
use crate::query::Selector;
use crate::serve::{Caller, ServeConfig, Served};
use crate::store::Store;
use serde::Deserialize;

#[derive(Deserialize)]
struct FeastDocumentsRequest {
    features: Vec<String>,
    #[serde(default, alias = "embedding")]
    query: Option<Vec<f64>>,
    #[serde(default)]
    filters: Option<serde_json::Value>,
    #[serde(default)]
    top_k: Option<i64>,
    #[serde(default)]
    distance_metric: Option<String>,
    #[serde(default)]
    query_string: Option<String>,
}

fn metric_matches(asked: &str, metric: crate::vector::Metric) -> bool {
    use crate::vector::Metric;
    let a = asked.to_ascii_lowercase();
    match metric {
        Metric::Cosine => a == "cosine",
        Metric::L2 => matches!(a.as_str(), "l2" | "euclidean"),
        Metric::InnerProduct => matches!(a.as_str(), "inner_product" | "ip" | "dot"),
    }
}

pub fn retrieve(
    store: &Store,
    body: &[u8],
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Served> {
    let r: FeastDocumentsRequest = serde_json::from_slice(body)
        .map_err(|e| invalid!("invalid retrieve-online-documents JSON body: {e}"))?;
    if r.query_string.as_deref().is_some_and(|q| !q.is_empty()) {
        return Err(invalid!(
            "query_string (keyword search) is not supported; search by 'embedding'"
        ));
    }
    if r.filters.as_ref().is_some_and(|f| !f.is_null()) {
        return Err(invalid!(
            "'filters' are not supported on /retrieve-online-documents; filter with \
             POST /v1/search-nearest"
        ));
    }
    let embedding = r
        .query
        .ok_or_else(|| invalid!("'query' is required (the query vector)"))?;
    let Some(first) = r.features.first() else {
        return Err(invalid!(
            "'features' is empty: name the view's features to return"
        ));
    };
    let (view, _) = crate::query::split_ref(first)?;
    let view = view.to_string();
    let mut feature = None;
    for f in &r.features {
        let (v, name) = crate::query::split_ref(f)?;
        if v != view {
            return Err(invalid!(
                "features of one feature view only: '{f}' is not in '{view}'"
            ));
        }
        if feature.is_none() && store.vectors.get(v, name).is_some() {
            feature = Some(name.to_string());
        }
    }
    let feature = match feature {
        Some(f) => f,
        None => match store.vectors.features_of(&view).as_slice() {
            [only] => only.clone(),
            [] => {
                return Err(invalid!(
                    "feature view '{view}' has no vector-indexed feature"
                ))
            }
            many => {
                return Err(invalid!(
                    "feature view '{view}' has several vector indexes ({}); request the one to \
                     search among 'features'",
                    many.join(", ")
                ))
            }
        },
    };
    if let (Some(m), Some(ix)) = (&r.distance_metric, store.vectors.get(&view, &feature)) {
        if !metric_matches(m, ix.spec.metric) {
            return Err(invalid!(
                "distance_metric '{m}' differs from the index of '{view}:{feature}', which is {}",
                ix.spec.metric.name()
            ));
        }
    }
    let req = SearchRequest {
        view,
        feature,
        query: embedding,
        k: r.top_k.unwrap_or(super::request::DEFAULT_K),
        sel: Some(Selector::Refs(r.features)),
        filters: Vec::new(),
        include_statuses: true,
        include_event_timestamps: true,
        dense: false,
    };
    run(store, Wire::FeastHttp, &req, cfg, caller)
}
