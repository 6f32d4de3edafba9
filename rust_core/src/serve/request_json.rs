//! Request parsing of the JSON APIs (Feast HTTP, v1 HTTP): one pass of serde over the body,
//! entity values straight into key columns, messages that name the offending member.

use super::{Api, Request, V1Opts};
use crate::error::Result;
use crate::invalid;
use crate::key::KeyColumn;
use crate::query::{Entities, Scalar, Selector, ValueColumn};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    features: Option<FeatureRefs>,
    #[serde(default, borrow)]
    feature_service: Option<Cow<'a, str>>,
    #[serde(default)]
    entities: Option<JsonEntities>,
    #[serde(default)]
    request_data: Option<JsonEntities>,
    #[serde(default)]
    full_feature_names: bool,
    #[serde(default)]
    include_statuses: bool,
    #[serde(default)]
    include_event_timestamps: bool,
    #[serde(default, borrow)]
    layout: Option<Cow<'a, str>>,
}

/// The request body must be an object (serde would also accept a positional array).
struct JsonObject<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for JsonObject<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = JsonObject<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, a: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(a)).map(JsonObject)
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Parses a Feast HTTP or v1 HTTP request body (shapes in the module docs of [`super`]).
pub(super) fn parse(api: Api, body: &[u8]) -> Result<Request> {
    let JsonObject::<JsonRequest>(req) =
        serde_json::from_slice(body).map_err(|e| invalid!("invalid JSON request body: {e}"))?;
    // As Feast's own server does: an empty `feature_service` is absent, and a service wins over
    // an empty `features` (Feast's request model defaults it to `[]`, so a body serialized from
    // that model carries both).
    let service = req.feature_service.filter(|s| !s.is_empty());
    let sel = match (req.features, service) {
        (Some(f), None) => Selector::Refs(f.0),
        (None, Some(s)) => Selector::Service(s.into_owned()),
        (Some(f), Some(s)) if f.0.is_empty() => Selector::Service(s.into_owned()),
        (Some(_), Some(_)) => {
            return Err(invalid!(
                "give either 'features' or 'feature_service', not both"
            ))
        }
        (None, None) => {
            return Err(invalid!(
                "missing 'features' (a list of \"view:feature\" references) or \
                 'feature_service'"
            ))
        }
    };
    let Some(JsonEntities(mut entities)) = req.entities else {
        return Err(invalid!(
            "missing 'entities': give an object of join key -> list of values, for example \
             {{\"user_id\": [1, 2]}}"
        ));
    };
    let mut v1 = V1Opts::default();
    if let Some(JsonEntities(data)) = req.request_data {
        if api != Api::V1Http {
            return Err(invalid!(
                "'request_data' is a v1 member; Feast's API carries request data in 'entities'"
            ));
        }
        let mut all = JsonEntities(entities);
        for (n, c) in data.columns {
            all.push(n, Parsed::Key(c)).map_err(|e| invalid!("{e}"))?;
        }
        for (n, c) in data.values {
            all.push(n, Parsed::Values(c))
                .map_err(|e| invalid!("{e}"))?;
        }
        entities = all.0;
    }
    if api == Api::V1Http {
        v1.include_statuses = req.include_statuses;
        v1.include_event_timestamps = req.include_event_timestamps;
        v1.dense = match req.layout.as_deref() {
            None | Some("columns") => false,
            Some("dense") => true,
            Some(other) => {
                return Err(invalid!(
                    "'layout' must be \"columns\" or \"dense\", not \"{other}\""
                ))
            }
        };
    }
    Ok(Request {
        full_feature_names: req.full_feature_names,
        v1,
        ..Request::new(sel, entities)
    })
}

/// One JSON array element, classified.
enum Elem {
    Int(i64),
    Str(String),
    /// An integer outside int64, as the request wrote it (serde gives a JSON integer past
    /// u64 as an f64, so `1e20` and `100000000000000000000` both arrive here), and as a float.
    OutOfRange(String, f64),
    /// A value no join key can have (a float, a boolean, null, a list, an object).
    NotKey(Scalar),
}

/// How an error message names a value that cannot be a join key.
fn describe(v: &Scalar) -> String {
    match v {
        Scalar::Float(v) if v.is_finite() && v.fract() == 0.0 => format!(
            "the number {v} in floating-point form ({v:e}); write an integer without a fraction \
             or exponent"
        ),
        Scalar::Float(v) => format!("the non-integer number {v}"),
        Scalar::Bool(v) => format!("the boolean {v}"),
        Scalar::Null => "null".into(),
        Scalar::Int(v) => format!("the number {v}"),
        Scalar::Str(v) => format!("the string {v:?}"),
        Scalar::Other(what) => (*what).into(),
    }
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Elem;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_i64<E>(self, v: i64) -> Result<Elem, E> {
                Ok(Elem::Int(v))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_u64<E>(self, v: u64) -> Result<Elem, E> {
                Ok(i64::try_from(v)
                    .map_or_else(|_| Elem::OutOfRange(v.to_string(), v as f64), Elem::Int))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_f64<E>(self, v: f64) -> Result<Elem, E> {
                let integral = v.is_finite() && v.fract() == 0.0;
                let int64 = (i64::MIN as f64)..(i64::MAX as f64);
                Ok(if integral && !int64.contains(&v) {
                    Elem::OutOfRange(format!("{v:e}"), v)
                } else {
                    Elem::NotKey(Scalar::Float(v))
                })
            }
            fn visit_bool<E>(self, v: bool) -> Result<Elem, E> {
                Ok(Elem::NotKey(Scalar::Bool(v)))
            }
            fn visit_unit<E>(self) -> Result<Elem, E> {
                Ok(Elem::NotKey(Scalar::Null))
            }
            fn visit_none<E>(self) -> Result<Elem, E> {
                Ok(Elem::NotKey(Scalar::Null))
            }
            fn visit_str<E>(self, v: &str) -> Result<Elem, E> {
                Ok(Elem::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Elem, E> {
                Ok(Elem::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Elem, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Elem::NotKey(Scalar::Other("a list")))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Elem, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Elem::NotKey(Scalar::Other("an object")))
            }
        }
        d.deserialize_any(V)
    }
}

/// `features`: a list of strings.
struct FeatureRefs(Vec<String>);

impl<'de> Deserialize<'de> for FeatureRefs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FeatureRefs;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("'features' as a list of \"view:feature\" strings")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<FeatureRefs, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(16));
                while let Some(e) = a.next_element::<Elem>()? {
                    match e {
                        Elem::Str(s) => out.push(s),
                        Elem::Int(i) => {
                            return Err(de::Error::custom(format!(
                            "features[{}] must be a \"view:feature\" string, not the number {i}",
                            out.len()
                        )))
                        }
                        Elem::OutOfRange(n, _) => {
                            return Err(de::Error::custom(format!(
                            "features[{}] must be a \"view:feature\" string, not the number {n}",
                            out.len()
                        )))
                        }
                        Elem::NotKey(v) => {
                            return Err(de::Error::custom(format!(
                                "features[{}] must be a \"view:feature\" string, not {}",
                                out.len(),
                                describe(&v)
                            )))
                        }
                    }
                }
                Ok(FeatureRefs(out))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `entities` (and v1's `request_data`): an object of name -> list of values, in document
/// order. Columns of integers or strings may be join keys; any other column is request data
/// (or an error, once the plan shows it is neither).
#[derive(Default)]
struct JsonEntities(Entities);

impl JsonEntities {
    fn push(&mut self, name: String, col: Parsed) -> std::result::Result<(), String> {
        let e = &mut self.0;
        if e.columns.iter().any(|(n, _)| *n == name) || e.values.iter().any(|(n, _)| *n == name) {
            return Err(format!("entities: join key '{name}' is given twice"));
        }
        match col {
            Parsed::Key(c) => e.columns.push((name, c)),
            Parsed::Values(c) => e.values.push((name, c)),
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for JsonEntities {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonEntities;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("'entities' as an object of join key -> list of values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<JsonEntities, A::Error> {
                let mut out = JsonEntities::default();
                while let Some(name) = a.next_key::<String>()? {
                    let col = a.next_value_seed(KeySeed(&name))?;
                    out.push(name, col).map_err(de::Error::custom)?;
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// One parsed column: join-key-able or not.
enum Parsed {
    Key(KeyColumn),
    Values(ValueColumn),
}

/// The values of one column: all integers or all strings (a join key), else request data.
struct KeySeed<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Parsed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
        d.deserialize_seq(self)
    }
}

fn to_scalars(col: Option<KeyColumn>, cap: usize) -> Vec<Scalar> {
    let mut out = Vec::with_capacity(cap);
    match col {
        Some(KeyColumn::Int64(v)) => out.extend(v.into_iter().map(Scalar::Int)),
        Some(KeyColumn::Str(v)) => out.extend(v.into_iter().map(Scalar::Str)),
        _ => {}
    }
    out
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Parsed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of values for join key '{}'", self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Parsed, A::Error> {
        let name = self.0;
        let cap = a.size_hint().unwrap_or(16);
        let mut col: Option<KeyColumn> = None;
        let mut i = 0usize;
        let bad = |i: usize, what: &str| {
            format!(
                "entities: join key '{name}' value #{i} is {what}; the values of a join key must \
                 be all integers or all strings"
            )
        };
        while let Some(e) = a.next_element::<Elem>()? {
            match (e, &mut col) {
                (Elem::Int(x), Some(KeyColumn::Int64(v))) => v.push(x),
                (Elem::Str(s), Some(KeyColumn::Str(v))) => v.push(s),
                (Elem::Int(x), None) => {
                    let mut v = Vec::with_capacity(cap);
                    v.push(x);
                    col = Some(KeyColumn::Int64(v));
                }
                (Elem::Str(s), None) => {
                    let mut v = Vec::with_capacity(cap);
                    v.push(s);
                    col = Some(KeyColumn::Str(v));
                }
                (Elem::Int(x), Some(_)) => {
                    return Err(de::Error::custom(bad(
                        i,
                        &format!("the number {x} after strings"),
                    )))
                }
                (Elem::Str(s), Some(_)) => {
                    return Err(de::Error::custom(bad(
                        i,
                        &format!("the string {s:?} after numbers"),
                    )))
                }
                (Elem::OutOfRange(n, x), _) => {
                    let not_a_key = format!(
                        "entities: join key '{name}' value #{i} is the integer {n}, which is out \
                         of range for int64 ({} to {})",
                        i64::MIN,
                        i64::MAX
                    );
                    return values_rest(a, to_scalars(col, cap), Scalar::Float(x), not_a_key);
                }
                (Elem::NotKey(v), _) => {
                    let not_a_key = bad(i, &describe(&v));
                    return values_rest(a, to_scalars(col, cap), v, not_a_key);
                }
            }
            i += 1;
        }
        Ok(Parsed::Key(col.unwrap_or(KeyColumn::Int64(Vec::new()))))
    }
}

/// The rest of a column that turned out not to be a join key, from its first such value on.
fn values_rest<'de, A: SeqAccess<'de>>(
    mut a: A,
    mut values: Vec<Scalar>,
    first: Scalar,
    not_a_key: String,
) -> Result<Parsed, A::Error> {
    values.push(first);
    while let Some(e) = a.next_element::<Elem>()? {
        values.push(match e {
            Elem::Int(x) => Scalar::Int(x),
            Elem::Str(s) => Scalar::Str(s),
            Elem::OutOfRange(_, x) => Scalar::Float(x),
            Elem::NotKey(v) => v,
        });
    }
    Ok(Parsed::Values(ValueColumn { values, not_a_key }))
}
