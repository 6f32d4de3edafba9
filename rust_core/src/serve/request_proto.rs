//! Request parsing of the protobuf APIs: Feast gRPC `GetOnlineFeaturesRequest`, v1 gRPC
//! `GetFeatureVectorRequest`, and the `GetCellsRequest` a router sends a node.

use super::{Request, V1Opts};
use crate::error::Result;
use crate::invalid;
use crate::key::KeyColumn;
use crate::proto::{feast, v1};
use crate::query::{Entities, Scalar, Selector, ValueColumn};
use prost::Message as _;
use std::collections::BTreeMap;

/// Parses a Feast gRPC `GetOnlineFeaturesRequest`.
pub(super) fn parse_feast(body: &[u8]) -> Result<Request> {
    use feast::get_online_features_request::Kind;
    let req = feast::GetOnlineFeaturesRequest::decode(body)
        .map_err(|e| invalid!("malformed GetOnlineFeaturesRequest: {e}"))?;
    let sel = match req.kind {
        Some(Kind::FeatureService(s)) => Selector::Service(s),
        Some(Kind::Features(f)) => Selector::Refs(f.val),
        None => return Err(invalid!("set either features or feature_service")),
    };
    let mut columns = Vec::with_capacity(req.entities.len());
    for (name, rv) in req.entities {
        let col = feast_key_column(&name, rv.val)?;
        columns.push((name, col));
    }
    let mut entities = Entities::new(columns);
    for (name, rv) in req.request_context {
        if entities.columns.iter().any(|(n, _)| *n == name) {
            return Err(invalid!(
                "'{name}' is given both in entities and in request_context"
            ));
        }
        let col = request_values(&name, rv.val);
        entities.values.push((name, col));
    }
    Ok(Request {
        full_feature_names: req.full_feature_names,
        ..Request::new(sel, entities)
    })
}

/// A `request_context` column: request data of on-demand views.
fn request_values(name: &str, vals: Vec<feast::Value>) -> ValueColumn {
    use feast::value::Val;
    let values = vals
        .into_iter()
        .map(|v| match v.val {
            None => Scalar::Null,
            Some(Val::DoubleVal(x)) => Scalar::Float(x),
            Some(Val::FloatVal(x)) => Scalar::Float(f64::from(x)),
            Some(Val::Int64Val(x)) => Scalar::Int(x),
            Some(Val::Int32Val(x)) => Scalar::Int(i64::from(x)),
            Some(Val::StringVal(s)) => Scalar::Str(s),
            Some(Val::BoolVal(b)) => Scalar::Bool(b),
            Some(_) => Scalar::Other("a bytes, timestamp, list, set or map value"),
        })
        .collect();
    ValueColumn {
        values,
        not_a_key: format!(
            "request_context['{name}'] is not a request field of any on-demand feature view"
        ),
    }
}

fn feast_key_column(name: &str, vals: Vec<feast::Value>) -> Result<KeyColumn> {
    use feast::value::Val;
    let kind = |v: &Option<Val>| match v {
        None => "an unset value (null)",
        Some(Val::Int32Val(_)) => "int32_val",
        Some(Val::Int64Val(_)) => "int64_val",
        Some(Val::StringVal(_)) => "string_val",
        Some(Val::BytesVal(_)) => "bytes_val",
        Some(Val::DoubleVal(_)) => "double_val",
        Some(Val::FloatVal(_)) => "float_val",
        Some(Val::BoolVal(_)) => "bool_val",
        Some(Val::UnixTimestampVal(_)) => "unix_timestamp_val",
        Some(_) => "a list, set or map value",
    };
    let bad = |i: usize, v: &Option<Val>, first: &Option<Val>| {
        invalid!(
            "entities['{name}'] value #{i} is {}, but value #0 is {}; a join key's values must \
             be all int64_val/int32_val, all string_val or all bytes_val",
            kind(v),
            kind(first)
        )
    };
    let Some(first) = vals.first().map(|v| v.val.clone()) else {
        return Ok(KeyColumn::Int64(Vec::new()));
    };
    Ok(match &first {
        Some(Val::Int32Val(_) | Val::Int64Val(_)) => {
            let all32 = vals.iter().all(|v| matches!(v.val, Some(Val::Int32Val(_))));
            if all32 {
                KeyColumn::Int32(
                    vals.iter()
                        .map(|v| match v.val {
                            Some(Val::Int32Val(x)) => x,
                            _ => 0,
                        })
                        .collect(),
                )
            } else {
                let mut out = Vec::with_capacity(vals.len());
                for (i, v) in vals.iter().enumerate() {
                    match v.val {
                        Some(Val::Int64Val(x)) => out.push(x),
                        Some(Val::Int32Val(x)) => out.push(i64::from(x)),
                        _ => return Err(bad(i, &v.val, &first)),
                    }
                }
                KeyColumn::Int64(out)
            }
        }
        Some(Val::StringVal(_)) => {
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.into_iter().enumerate() {
                match v.val {
                    Some(Val::StringVal(s)) => out.push(s),
                    other => return Err(bad(i, &other, &first)),
                }
            }
            KeyColumn::Str(out)
        }
        Some(Val::BytesVal(_)) => {
            let mut out = Vec::with_capacity(vals.len());
            for (i, v) in vals.into_iter().enumerate() {
                match v.val {
                    Some(Val::BytesVal(s)) => out.push(s),
                    other => return Err(bad(i, &other, &first)),
                }
            }
            KeyColumn::Bytes(out)
        }
        other => {
            return Err(invalid!(
                "entities['{name}'] value #0 is {}; join key values must be int64_val, \
                 int32_val, string_val or bytes_val",
                kind(other)
            ))
        }
    })
}

/// The entity columns of a v1 (or `GetCells`) request.
fn v1_entities(entities: BTreeMap<String, v1::EntityColumn>) -> Result<Vec<(String, KeyColumn)>> {
    use v1::entity_column::Values;
    let mut columns = Vec::with_capacity(entities.len());
    for (name, c) in entities {
        let col = match c.values {
            Some(Values::Int64Values(v)) => KeyColumn::Int64(v.values),
            Some(Values::Int32Values(v)) => KeyColumn::Int32(v.values),
            Some(Values::StringValues(v)) => KeyColumn::Str(v.values),
            Some(Values::BytesValues(v)) => KeyColumn::Bytes(v.values),
            None => {
                return Err(invalid!(
                    "entities['{name}'] has no values: set one of int64_values, int32_values, \
                     string_values, bytes_values"
                ))
            }
        };
        columns.push((name, col));
    }
    Ok(columns)
}

/// Parses a v1 gRPC `GetFeatureVectorRequest`.
pub(super) fn parse_v1(body: &[u8]) -> Result<Request> {
    use v1::get_feature_vector_request::Selector as S;
    let req = v1::GetFeatureVectorRequest::decode(body)
        .map_err(|e| invalid!("malformed GetFeatureVectorRequest: {e}"))?;
    let sel = match req.selector {
        Some(S::FeatureService(s)) => Selector::Service(s),
        Some(S::Features(f)) => Selector::Refs(f.refs),
        None => return Err(invalid!("set either features or feature_service")),
    };
    let dense = match v1::Layout::try_from(req.layout) {
        Ok(v1::Layout::Columns) => false,
        Ok(v1::Layout::Dense) => true,
        Err(_) => return Err(invalid!("unknown layout {}", req.layout)),
    };
    let mut entities = Entities::new(v1_entities(req.entities)?);
    for (name, col) in req.request_data {
        if entities.columns.iter().any(|(n, _)| *n == name) {
            return Err(invalid!(
                "'{name}' is given both in entities and in request_data"
            ));
        }
        entities
            .values
            .push((name.clone(), v1_request_values(&name, col)?));
    }
    Ok(Request {
        v1: V1Opts {
            include_statuses: req.include_statuses,
            include_event_timestamps: req.include_event_timestamps,
            dense,
        },
        ..Request::new(sel, entities)
    })
}

/// A v1 `request_data` column.
fn v1_request_values(name: &str, col: v1::RequestColumn) -> Result<ValueColumn> {
    use v1::request_column::Values;
    let values = match col.values {
        Some(Values::DoubleValues(c)) => c.values.into_iter().map(Scalar::Float).collect(),
        Some(Values::FloatValues(c)) => c
            .values
            .into_iter()
            .map(|x| Scalar::Float(f64::from(x)))
            .collect(),
        Some(Values::Int64Values(c)) => c.values.into_iter().map(Scalar::Int).collect(),
        Some(Values::Int32Values(c)) => c
            .values
            .into_iter()
            .map(|x| Scalar::Int(i64::from(x)))
            .collect(),
        Some(Values::StringValues(c)) => c.values.into_iter().map(Scalar::Str).collect(),
        Some(Values::BoolValues(c)) => c.values.into_iter().map(Scalar::Bool).collect(),
        None => {
            return Err(invalid!(
                "request_data['{name}'] has no values: set one of double_values, \
                 int64_values, string_values, bool_values, float_values, int32_values"
            ))
        }
    };
    Ok(ValueColumn {
        values,
        not_a_key: format!(
            "request_data['{name}'] is not a request field of any on-demand feature view"
        ),
    })
}

/// Parses a router's part of a request, a `GetCellsRequest`; the feature service it names, if
/// any, is what the caller's scope is checked against.
pub(super) fn parse_cells(body: &[u8]) -> Result<Request> {
    let req = v1::GetCellsRequest::decode(body)
        .map_err(|e| invalid!("malformed GetCellsRequest: {e}"))?;
    if req.refs.is_empty() {
        return Err(invalid!("GetCellsRequest names no features"));
    }
    let columns = v1_entities(req.entities)?;
    Ok(Request {
        part_of_service: Some(req.feature_service).filter(|s| !s.is_empty()),
        ..Request::new(Selector::Refs(req.refs), Entities::new(columns))
    })
}
