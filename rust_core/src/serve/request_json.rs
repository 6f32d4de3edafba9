//! Request parsing of the JSON APIs (Feast HTTP, v1 HTTP): one pass of serde over the body,
//! entity values straight into key columns, messages that name the offending member.

use super::{Api, Request, V1Opts};
use crate::error::Result;
use crate::invalid;
use crate::key::KeyColumn;
use crate::query::{Entities, Selector};
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
    let Some(entities) = req.entities else {
        return Err(invalid!(
            "missing 'entities': give an object of join key -> list of values, for example \
             {{\"user_id\": [1, 2]}}"
        ));
    };
    let mut v1 = V1Opts::default();
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
        ..Request::new(
            sel,
            Entities {
                columns: entities.0,
            },
        )
    })
}

/// One JSON array element, classified.
enum Elem {
    Int(i64),
    Str(String),
    /// An integer outside int64, as the request wrote it (serde gives a JSON integer past
    /// u64 as an f64, so `1e20` and `100000000000000000000` both arrive here).
    OutOfRange(String),
    Other(String),
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
            fn visit_u64<E>(self, v: u64) -> Result<Elem, E> {
                Ok(i64::try_from(v).map_or_else(|_| Elem::OutOfRange(v.to_string()), Elem::Int))
            }
            #[allow(clippy::cast_precision_loss)]
            fn visit_f64<E>(self, v: f64) -> Result<Elem, E> {
                let integral = v.is_finite() && v.fract() == 0.0;
                let int64 = (i64::MIN as f64)..(i64::MAX as f64);
                Ok(if !integral {
                    Elem::Other(format!("the non-integer number {v}"))
                } else if !int64.contains(&v) {
                    Elem::OutOfRange(format!("{v:e}"))
                } else {
                    Elem::Other(format!(
                        "the number {v} in floating-point form ({v:e}); write an integer \
                         without a fraction or exponent"
                    ))
                })
            }
            fn visit_bool<E>(self, v: bool) -> Result<Elem, E> {
                Ok(Elem::Other(format!("the boolean {v}")))
            }
            fn visit_unit<E>(self) -> Result<Elem, E> {
                Ok(Elem::Other("null".into()))
            }
            fn visit_none<E>(self) -> Result<Elem, E> {
                Ok(Elem::Other("null".into()))
            }
            fn visit_str<E>(self, v: &str) -> Result<Elem, E> {
                Ok(Elem::Str(v.to_string()))
            }
            fn visit_string<E>(self, v: String) -> Result<Elem, E> {
                Ok(Elem::Str(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Elem, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Elem::Other("a list".into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Elem, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Elem::Other("an object".into()))
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
                        Elem::OutOfRange(n) => {
                            return Err(de::Error::custom(format!(
                            "features[{}] must be a \"view:feature\" string, not the number {n}",
                            out.len()
                        )))
                        }
                        Elem::Other(what) => {
                            return Err(de::Error::custom(format!(
                                "features[{}] must be a \"view:feature\" string, not {what}",
                                out.len()
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

/// `entities`: an object of join key -> list of values, in document order.
struct JsonEntities(Vec<(String, KeyColumn)>);

impl<'de> Deserialize<'de> for JsonEntities {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = JsonEntities;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("'entities' as an object of join key -> list of values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<JsonEntities, A::Error> {
                let mut out: Vec<(String, KeyColumn)> = Vec::new();
                while let Some(name) = a.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!(
                            "entities: join key '{name}' is given twice"
                        )));
                    }
                    let col = a.next_value_seed(KeySeed(&name))?;
                    out.push((name, col));
                }
                Ok(JsonEntities(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// The values of one join key: all integers or all strings.
struct KeySeed<'n>(&'n str);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = KeyColumn;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<KeyColumn, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = KeyColumn;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a list of values for join key '{}'", self.0)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<KeyColumn, A::Error> {
        let name = self.0;
        let cap = a.size_hint().unwrap_or(16);
        let mut col: Option<KeyColumn> = None;
        let mut i = 0usize;
        while let Some(e) = a.next_element::<Elem>()? {
            let bad = |what: &str| {
                de::Error::custom(format!(
                    "entities: join key '{name}' value #{i} is {what}; the values of a join key \
                     must be all integers or all strings"
                ))
            };
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
                    return Err(bad(&format!("the number {x} after strings")))
                }
                (Elem::Str(s), Some(_)) => {
                    return Err(bad(&format!("the string {s:?} after numbers")))
                }
                (Elem::OutOfRange(n), _) => {
                    return Err(de::Error::custom(format!(
                        "entities: join key '{name}' value #{i} is the integer {n}, which is out \
                         of range for int64 ({} to {})",
                        i64::MIN,
                        i64::MAX
                    )))
                }
                (Elem::Other(what), _) => return Err(bad(&what)),
            }
            i += 1;
        }
        Ok(col.unwrap_or(KeyColumn::Int64(Vec::new())))
    }
}
