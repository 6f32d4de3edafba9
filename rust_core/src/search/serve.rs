//! `SearchNearest` end to end, one call: parse, check, search the index, read the requested
//! features of the hits through the ordinary serving path, encode. The answer holds the hits'
//! join keys and distances (nearest first) and, when features were asked for, the v1
//! `GetFeatureVector` answer for the hits (columns or dense) embedded as is.

use super::request::{self, Cond, Filter, FilterValue, SearchRequest};
use crate::catalog::ViewDef;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::{decode_key, KeyColumn, KeyValue};
use crate::proto::v1 as pb;
use crate::query::{Entities, Selector};
use crate::row::{ReadRow, ValueRef};
use crate::serve::{self, Api, Caller, ServeConfig, Served};
use crate::store::Store;
use crate::types::KeyType;
use std::collections::BTreeMap;

/// The wire format of a `SearchNearest` request and its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wire {
    /// `POST /v1/search-nearest`, JSON.
    V1Http,
    /// `feature_serving.v1.FeatureService/SearchNearest`, protobuf.
    V1Grpc,
    /// Feast's `/retrieve-online-documents` (`feast.rs`), JSON in Feast's shape.
    FeastHttp,
}

/// The checked search of a request: which index, the prepared query, k, filters.
struct Checked<'a> {
    def: &'a ViewDef,
    query: Vec<f32>,
    k: usize,
    filters: Vec<(usize, &'a Filter)>,
}

fn check<'a>(store: &Store, def: &'a ViewDef, req: &'a SearchRequest) -> Result<Checked<'a>> {
    let Some(ix) = store.vectors.get(&req.view, &req.feature) else {
        def.slot(&req.feature).map_err(as_invalid)?;
        let indexed = store.vectors.features_of(&req.view);
        return Err(invalid!(
            "feature '{}:{}' has no vector index{}; declare 'vector_index:' on a float32_array \
             feature in features.yaml",
            req.view,
            req.feature,
            if indexed.is_empty() {
                String::new()
            } else {
                format!(" (indexed in '{}': {})", req.view, indexed.join(", "))
            }
        ));
    };
    if req.query.len() != ix.dim {
        return Err(invalid!(
            "query has {} components; '{}:{}' holds vectors of dimension {}",
            req.query.len(),
            req.view,
            req.feature,
            ix.dim
        ));
    }
    if let Some(i) = req.query.iter().position(|x| !x.is_finite()) {
        return Err(invalid!(
            "query component {i} is {} (NaN and infinite components cannot be searched)",
            req.query[i]
        ));
    }
    let mut query: Vec<f32> = req.query.iter().map(|&x| x as f32).collect();
    if let Some(i) = query.iter().position(|x| !x.is_finite()) {
        return Err(invalid!(
            "query component {i} ({}) is outside float32's range",
            req.query[i]
        ));
    }
    if !crate::vector::index::prepare(ix.spec.metric, &mut query) {
        return Err(invalid!(
            "the query is a zero vector, which has no cosine distance to anything"
        ));
    }
    let max_k = ix.spec.max_k;
    if req.k <= 0 || req.k as u64 > max_k as u64 {
        return Err(invalid!(
            "k must be between 1 and {max_k} (the index's max_k), got {}",
            req.k
        ));
    }
    let mut filters = Vec::with_capacity(req.filters.len());
    for (i, f) in req.filters.iter().enumerate() {
        let slot = def.slot(&f.feature).map_err(|e| {
            invalid!("filter[{i}]: {e} (filters apply to features of the searched view)")
        })?;
        filters.push((slot, f));
    }
    Ok(Checked {
        def,
        query,
        k: req.k as usize,
        filters,
    })
}

/// An unknown view or feature to search is a bad request (`INVALID_ARGUMENT`), as the other
/// search inputs are.
fn as_invalid(e: CoreError) -> CoreError {
    match e {
        CoreError::NotFound(m) => CoreError::InvalidArgument(m),
        other => other,
    }
}

fn as_f64(v: ValueRef<'_>) -> Option<f64> {
    match v {
        ValueRef::Int32(x) => Some(f64::from(x)),
        ValueRef::Int64(x) | ValueRef::Timestamp(x) => Some(x as f64),
        ValueRef::Float32(x) => Some(f64::from(x)),
        ValueRef::Float64(x) => Some(x),
        ValueRef::Bool(b) => Some(f64::from(u8::from(b))),
        _ => None,
    }
}

fn passes(v: ValueRef<'_>, cond: &Cond) -> bool {
    match cond {
        Cond::Equals(FilterValue::Text(t)) => matches!(v, ValueRef::Str(s) if s == t.as_bytes()),
        Cond::Equals(FilterValue::Bool(b)) => matches!(v, ValueRef::Bool(x) if x == *b),
        Cond::Equals(FilterValue::Number(n)) => as_f64(v).is_some_and(|x| x.total_cmp(n).is_eq()),
        Cond::Range { min, max } => as_f64(v).is_some_and(|x| {
            min.is_none_or(|m| x >= m) && max.is_none_or(|m| x <= m) && !x.is_nan()
        }),
    }
}

/// Whether the stored row of entity `key` passes every filter (a missing or null value
/// passes none).
fn row_passes(store: &Store, c: &Checked<'_>, key: &[u8]) -> bool {
    let mut hot = c.def.hot_prefix().to_vec();
    hot.extend_from_slice(key);
    let Ok(mut rows) = store.lookup(c.def, &[hot]) else {
        return false;
    };
    let Some(row) = rows.pop().flatten().and_then(ReadRow::live) else {
        return false;
    };
    let view = row.view();
    c.filters
        .iter()
        .all(|(slot, f)| passes(view.value(&c.def.layout, *slot), &f.cond))
}

/// The hits' join keys as entity columns (of the searched view's key types).
fn key_columns(
    def: &ViewDef,
    hits: &[crate::vector::index::Hit],
) -> Result<Vec<(String, KeyColumn)>> {
    let types: Vec<KeyType> = def.join_keys.iter().map(|k| k.1).collect();
    let mut cols: Vec<KeyColumn> = types
        .iter()
        .map(|t| match t {
            KeyType::Int64 => KeyColumn::Int64(Vec::new()),
            KeyType::Int32 => KeyColumn::Int32(Vec::new()),
            KeyType::String => KeyColumn::Str(Vec::new()),
            KeyType::Bytes => KeyColumn::Bytes(Vec::new()),
        })
        .collect();
    for (key, _) in hits {
        let vals = decode_key(key, &types).ok_or_else(|| {
            CoreError::Storage(format!(
                "vector index of '{}' holds a key that is not one of its entity keys",
                def.name
            ))
        })?;
        for (col, v) in cols.iter_mut().zip(vals) {
            match (col, v) {
                (KeyColumn::Int64(c), KeyValue::Int64(x)) => c.push(x),
                (KeyColumn::Int32(c), KeyValue::Int32(x)) => c.push(x),
                (KeyColumn::Str(c), KeyValue::Str(x)) => c.push(x),
                (KeyColumn::Bytes(c), KeyValue::Bytes(x)) => c.push(x),
                _ => unreachable!("decode_key follows the types"),
            }
        }
    }
    Ok(def
        .join_keys
        .iter()
        .map(|k| k.0.clone())
        .zip(cols)
        .collect())
}

/// The nearest hits of a checked request.
fn nearest(
    store: &Store,
    c: &Checked<'_>,
    req: &SearchRequest,
    now_us: i64,
) -> Result<Vec<crate::vector::index::Hit>> {
    let ix = store
        .vectors
        .get(&req.view, &req.feature)
        .ok_or_else(|| invalid!("feature '{}:{}' has no vector index", req.view, req.feature))?;
    if c.filters.is_empty() {
        ix.search(&c.query, c.k, now_us, &|_| true)
    } else {
        ix.search(&c.query, c.k, now_us, &|key| row_passes(store, c, key))
    }
}

/// `SearchNearest`: `body` of `wire` in, the complete answer out.
pub fn search(
    store: &Store,
    wire: Wire,
    body: &[u8],
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Served> {
    let req = match wire {
        Wire::V1Http => request::parse_json(body)?,
        Wire::V1Grpc => request::parse_proto(body)?,
        Wire::FeastHttp => return super::feast::retrieve(store, body, cfg, caller),
    };
    run(store, wire, &req, cfg, caller)
}

/// A parsed `SearchNearest` request of `wire`: check, search, fetch, encode.
pub(super) fn run(
    store: &Store,
    wire: Wire,
    req: &SearchRequest,
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Served> {
    let cat = store.catalog();
    if let Some(scope) = caller.scope {
        scope.check(
            &cat,
            &Selector::Refs(vec![format!("{}:{}", req.view, req.feature)]),
        )?;
        if let Some(sel) = &req.sel {
            scope.check(&cat, sel)?;
        }
    }
    let def = cat.view(&req.view).map_err(as_invalid)?;
    let checked = check(store, def, req)?;
    let hits = nearest(store, &checked, req, caller.now_us)?;
    let keys = key_columns(def, &hits)?;
    let distances: Vec<f32> = hits.iter().map(|h| h.1).collect();
    let mut views = vec![def.name.clone()];
    let mut num_features = 0;
    let features = match (&req.sel, hits.is_empty()) {
        (Some(sel), false) => {
            let api = match wire {
                Wire::V1Http => Api::V1Http,
                Wire::V1Grpc => Api::V1Grpc,
                Wire::FeastHttp => Api::FeastHttp,
            };
            let prepared = serve::prepare_v1_for(
                &cat,
                api,
                sel.clone(),
                Entities::new(keys.clone()),
                (
                    req.include_statuses,
                    req.include_event_timestamps,
                    req.dense,
                ),
                cfg,
                caller.scope,
            )?;
            let answer = prepared.execute(store, caller.now_us, caller.shard)?;
            let served = prepared.finish(store, &answer, cfg, None);
            num_features = served.num_features;
            views.extend(served.views.into_iter().filter(|v| *v != def.name));
            Some(served.body)
        }
        _ => None,
    };
    let body = match wire {
        Wire::V1Http => encode_json(&keys, &distances, features.as_deref()),
        Wire::V1Grpc => encode_proto(&keys, &distances, features),
        Wire::FeastHttp => encode_feast(&keys, &distances, features, req.sel.as_ref()),
    };
    Ok(Served {
        body,
        views,
        num_entities: hits.len(),
        num_features,
    })
}

fn encode_json(
    keys: &[(String, KeyColumn)],
    distances: &[f32],
    features: Option<&[u8]>,
) -> Vec<u8> {
    let mut k = serde_json::Map::new();
    for (name, col) in keys {
        let v = match col {
            KeyColumn::Int64(c) => serde_json::json!(c),
            KeyColumn::Int32(c) => serde_json::json!(c),
            KeyColumn::Str(c) => serde_json::json!(c),
            KeyColumn::Bytes(c) => serde_json::json!(c
                .iter()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect::<Vec<_>>()),
        };
        k.insert(name.clone(), v);
    }
    let head = serde_json::json!({
        "num_hits": distances.len(),
        "keys": k,
        "distances": distances,
    });
    let mut out = serde_json::to_vec(&head).expect("json");
    if let Some(f) = features {
        out.pop(); // the closing brace
        out.extend_from_slice(b",\"features\":");
        out.extend_from_slice(f);
        out.push(b'}');
    }
    out
}

/// `feature_serving.v1.SearchNearestResponse`; `features` holds the bytes of an encoded
/// `GetFeatureVectorResponse` (an embedded message is its bytes on the wire).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchNearestResponse {
    #[prost(btree_map = "string, message", tag = "1")]
    pub keys: BTreeMap<String, pb::EntityColumn>,
    #[prost(float, repeated, tag = "2")]
    pub distances: Vec<f32>,
    #[prost(bytes = "vec", optional, tag = "3")]
    pub features: Option<Vec<u8>>,
    #[prost(uint32, tag = "4")]
    pub num_hits: u32,
}

fn encode_proto(
    keys: &[(String, KeyColumn)],
    distances: &[f32],
    features: Option<Vec<u8>>,
) -> Vec<u8> {
    use pb::entity_column::Values;
    use prost::Message;
    let keys = keys
        .iter()
        .map(|(name, col)| {
            let values = match col {
                KeyColumn::Int64(c) => Values::Int64Values(pb::Int64Column { values: c.clone() }),
                KeyColumn::Int32(c) => Values::Int32Values(pb::Int32Column { values: c.clone() }),
                KeyColumn::Str(c) => Values::StringValues(pb::StringColumn { values: c.clone() }),
                KeyColumn::Bytes(c) => Values::BytesValues(pb::BytesColumn { values: c.clone() }),
            };
            (
                name.clone(),
                pb::EntityColumn {
                    values: Some(values),
                },
            )
        })
        .collect();
    SearchNearestResponse {
        keys,
        distances: distances.to_vec(),
        features,
        num_hits: distances.len() as u32,
    }
    .encode_to_vec()
}

/// Feast's shape: the Feast HTTP answer for the hits with a `distance` column appended (its
/// name after the others, its values after the other columns). The Feast encoder writes
/// `{"metadata":{"feature_names":[...]},"results":[...]}` and names match
/// `[A-Za-z_][A-Za-z0-9_]*`, so the first `]}` closes the names and the last one the results.
fn encode_feast(
    keys: &[(String, KeyColumn)],
    distances: &[f32],
    features: Option<Vec<u8>>,
    sel: Option<&Selector>,
) -> Vec<u8> {
    let n = distances.len();
    let distance_col = serde_json::json!({
        "values": distances,
        "statuses": vec!["PRESENT"; n],
        "event_timestamps": vec!["1970-01-01T00:00:00Z"; n],
    });
    let col = serde_json::to_vec(&distance_col).expect("json");
    if let Some(body) = features {
        let names_end = find(&body, b"]}").expect("Feast encoder output");
        let results_end = body.len() - 2;
        let mut out = Vec::with_capacity(body.len() + col.len() + 16);
        out.extend_from_slice(&body[..names_end]);
        out.extend_from_slice(b",\"distance\"");
        out.extend_from_slice(&body[names_end..results_end]);
        out.push(b',');
        out.extend_from_slice(&col);
        out.extend_from_slice(&body[results_end..]);
        return out;
    }
    // no hit: every column empty
    let mut names: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
    if let Some(Selector::Refs(refs)) = sel {
        names.extend(
            refs.iter()
                .map(|r| r.split_once(':').map_or(r.as_str(), |x| x.1).to_string()),
        );
    }
    names.push("distance".into());
    let empty = serde_json::json!({"values": [], "statuses": [], "event_timestamps": []});
    serde_json::to_vec(&serde_json::json!({
        "metadata": {"feature_names": names},
        "results": vec![empty; names.len()],
    }))
    .expect("json")
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
