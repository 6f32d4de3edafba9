//! `SearchNearest` requests as they arrive: v1 HTTP JSON and v1 gRPC protobuf, both parsed into
//! one [`SearchRequest`]; the checks every request gets are in `serve.rs`.

use crate::error::Result;
use crate::invalid;
use crate::proto::v1 as pb;
use crate::query::Selector;
use serde::Deserialize;

/// A condition on a stored feature of the searched entity (same view).
#[derive(Debug, Clone, PartialEq)]
pub enum Cond {
    Equals(FilterValue),
    Range { min: Option<f64>, max: Option<f64> },
}

#[derive(Debug, Clone, PartialEq)]
pub enum FilterValue {
    Number(f64),
    Text(String),
    Bool(bool),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Filter {
    pub feature: String,
    pub cond: Cond,
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub view: String,
    pub feature: String,
    /// As sent (f64 so that a JSON value out of float32's range is reported, not turned into
    /// infinity silently).
    pub query: Vec<f64>,
    pub k: i64,
    pub sel: Option<Selector>,
    pub filters: Vec<Filter>,
    pub include_statuses: bool,
    pub include_event_timestamps: bool,
    pub dense: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonFilter {
    feature: String,
    #[serde(default)]
    equals: Option<serde_json::Value>,
    #[serde(default)]
    min: Option<f64>,
    #[serde(default)]
    max: Option<f64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSearch {
    view: String,
    feature: String,
    query: Vec<f64>,
    #[serde(default = "default_k")]
    k: i64,
    #[serde(default)]
    features: Option<Vec<String>>,
    #[serde(default)]
    feature_service: Option<String>,
    #[serde(default)]
    filter: Vec<JsonFilter>,
    #[serde(default)]
    include_statuses: bool,
    #[serde(default)]
    include_event_timestamps: bool,
    #[serde(default)]
    layout: Option<String>,
}

/// k when a request does not say.
pub const DEFAULT_K: i64 = 10;

fn default_k() -> i64 {
    DEFAULT_K
}

fn selector(features: Option<Vec<String>>, service: Option<String>) -> Result<Option<Selector>> {
    match (
        features.filter(|f| !f.is_empty()),
        service.filter(|s| !s.is_empty()),
    ) {
        (None, None) => Ok(None),
        (Some(f), None) => Ok(Some(Selector::Refs(f))),
        (None, Some(s)) => Ok(Some(Selector::Service(s))),
        (Some(_), Some(_)) => Err(invalid!(
            "give either 'features' or 'feature_service' to return, not both"
        )),
    }
}

fn filter_of(
    i: usize,
    feature: String,
    equals: Option<FilterValue>,
    min: Option<f64>,
    max: Option<f64>,
) -> Result<Filter> {
    let cond = match (equals, min, max) {
        (Some(v), None, None) => Cond::Equals(v),
        (None, None, None) => {
            return Err(invalid!(
                "filter[{i}] on '{feature}' has no condition: give 'equals', or 'min' and/or 'max'"
            ))
        }
        (Some(_), _, _) => {
            return Err(invalid!(
                "filter[{i}] on '{feature}': give 'equals' or a range ('min'/'max'), not both"
            ))
        }
        (None, min, max) => {
            if min.is_some_and(f64::is_nan) || max.is_some_and(f64::is_nan) {
                return Err(invalid!("filter[{i}] on '{feature}': min/max is NaN"));
            }
            Cond::Range { min, max }
        }
    };
    Ok(Filter { feature, cond })
}

pub fn parse_json(body: &[u8]) -> Result<SearchRequest> {
    let r: JsonSearch = serde_json::from_slice(body)
        .map_err(|e| invalid!("invalid SearchNearest JSON body: {e}"))?;
    let dense = match r.layout.as_deref() {
        None | Some("columns") => false,
        Some("dense") => true,
        Some(other) => {
            return Err(invalid!(
                "unknown layout '{other}': use \"columns\" or \"dense\""
            ))
        }
    };
    let mut filters = Vec::with_capacity(r.filter.len());
    for (i, f) in r.filter.into_iter().enumerate() {
        let equals = match f.equals {
            None => None,
            Some(serde_json::Value::Bool(b)) => Some(FilterValue::Bool(b)),
            Some(serde_json::Value::String(s)) => Some(FilterValue::Text(s)),
            Some(serde_json::Value::Number(n)) => {
                Some(FilterValue::Number(n.as_f64().ok_or_else(|| {
                    invalid!("filter[{i}]: 'equals' is not a number")
                })?))
            }
            Some(other) => {
                return Err(invalid!(
                "filter[{i}] on '{}': 'equals' must be a number, string or boolean, got {other}",
                f.feature
            ))
            }
        };
        filters.push(filter_of(i, f.feature, equals, f.min, f.max)?);
    }
    Ok(SearchRequest {
        view: r.view,
        feature: r.feature,
        query: r.query,
        k: r.k,
        sel: selector(r.features, r.feature_service)?,
        filters,
        include_statuses: r.include_statuses,
        include_event_timestamps: r.include_event_timestamps,
        dense,
    })
}

/// `feature_serving.v1.SearchNearestRequest` (`proto/feature_serving/v1/feature_service.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchNearestRequest {
    #[prost(string, tag = "1")]
    pub view: String,
    #[prost(string, tag = "2")]
    pub feature: String,
    #[prost(float, repeated, tag = "3")]
    pub query: Vec<f32>,
    #[prost(int32, tag = "4")]
    pub k: i32,
    #[prost(string, tag = "5")]
    pub feature_service: String,
    #[prost(message, optional, tag = "6")]
    pub features: Option<pb::FeatureRefs>,
    #[prost(message, repeated, tag = "7")]
    pub filters: Vec<SearchFilter>,
    #[prost(bool, tag = "8")]
    pub include_statuses: bool,
    #[prost(bool, tag = "9")]
    pub include_event_timestamps: bool,
    #[prost(int32, tag = "10")]
    pub layout: i32,
}

/// `feature_serving.v1.SearchFilter`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SearchFilter {
    #[prost(string, tag = "1")]
    pub feature: String,
    #[prost(oneof = "search_filter::Equals", tags = "2, 3, 4")]
    pub equals: Option<search_filter::Equals>,
    #[prost(double, optional, tag = "5")]
    pub min: Option<f64>,
    #[prost(double, optional, tag = "6")]
    pub max: Option<f64>,
}

pub mod search_filter {
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Equals {
        #[prost(double, tag = "2")]
        Number(f64),
        #[prost(string, tag = "3")]
        Text(String),
        #[prost(bool, tag = "4")]
        Flag(bool),
    }
}

pub fn parse_proto(body: &[u8]) -> Result<SearchRequest> {
    use prost::Message;
    let r = SearchNearestRequest::decode(body)
        .map_err(|e| invalid!("malformed SearchNearestRequest: {e}"))?;
    let dense = match pb::Layout::try_from(r.layout) {
        Ok(pb::Layout::Columns) => false,
        Ok(pb::Layout::Dense) => true,
        Err(_) => return Err(invalid!("unknown layout {}", r.layout)),
    };
    let mut filters = Vec::with_capacity(r.filters.len());
    for (i, f) in r.filters.into_iter().enumerate() {
        let equals = f.equals.map(|e| match e {
            search_filter::Equals::Number(x) => FilterValue::Number(x),
            search_filter::Equals::Text(s) => FilterValue::Text(s),
            search_filter::Equals::Flag(b) => FilterValue::Bool(b),
        });
        filters.push(filter_of(i, f.feature, equals, f.min, f.max)?);
    }
    Ok(SearchRequest {
        view: r.view,
        feature: r.feature,
        query: r.query.into_iter().map(f64::from).collect(),
        k: if r.k == 0 { DEFAULT_K } else { i64::from(r.k) },
        sel: selector(r.features.map(|f| f.refs), Some(r.feature_service))?,
        filters,
        include_statuses: r.include_statuses,
        include_event_timestamps: r.include_event_timestamps,
        dense,
    })
}
