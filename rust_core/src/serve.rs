//! The serving APIs end to end: raw request body in, complete response body out. The Python
//! frontends only pass bytes through (after auth and limits); a feature value never becomes a
//! Python object.
//!
//! | API | request | response |
//! |---|---|---|
//! | Feast HTTP `POST /get-online-features` | JSON | JSON (Feast's shape) |
//! | Feast gRPC `feast.serving.ServingService/GetOnlineFeatures` | protobuf | protobuf |
//! | v1 gRPC `feature_serving.v1.FeatureService/GetFeatureVector` | protobuf | protobuf |
//! | v1 HTTP `POST /v1/feature-vector` | JSON | JSON (below) |
//!
//! Each call is two steps, so the auth layer can check scopes before any lookup:
//! [`prepare`] parses and plans (and knows [`Prepared::views`]), [`Prepared::respond`] reads
//! and encodes. [`serve`] (and [`feast_http`], [`feast_grpc`], [`v1_grpc`], [`v1_http`]) do
//! both and return a [`Served`].
//!
//! # Feast HTTP JSON
//!
//! Request: `{"features": ["view:feat", ...], "entities": {"user_id": [1, 2]}}` or
//! `{"feature_service": "name", "entities": {...}}`, optional `"full_feature_names": bool`;
//! other members (such as `include_feature_view_version_metadata`) are ignored. A join key's
//! values are all integers (int64) or all strings.
//!
//! Response, column-major: the join-key columns first (in the order of the request's
//! `entities` object), then one column per requested feature in request order:
//!
//! ```json
//! {"metadata":{"feature_names":["user_id","f000"]},
//!  "results":[{"values":[123],"statuses":["PRESENT"],"event_timestamps":["1970-01-01T00:00:00Z"]},
//!             {"values":[38.29999923706055],"statuses":["PRESENT"],"event_timestamps":["2024-01-01T00:00:00Z"]}]}
//! ```
//! Feature names are bare (`f000`), or `view__feature` with `full_feature_names` (Feast's
//! form). Values that are not PRESENT are `null`; event timestamps are RFC 3339 UTC
//! (`1970-01-01T00:00:00Z` when there is no row). float32 is widened to double text
//! (`4.800000190734863`) unless [`ServeConfig::json_float32_shortest`] (`4.8`); bytes are
//! base64; timestamp features are RFC 3339 strings; float32 arrays are arrays of numbers;
//! non-finite floats are `null`.
//!
//! # v1 HTTP JSON
//!
//! Request: `{"features": [...] | "feature_service": "...", "entities": {"user_id": [1, 2]},
//! "include_statuses": bool, "include_event_timestamps": bool, "layout": "columns" | "dense"}`
//! (layout defaults to `"columns"`). Responses:
//!
//! ```json
//! {"feature_names":["user_profile:f000"],"num_entities":2,
//!  "columns":[{"values":[38.29999923706055,null],"statuses":["PRESENT","NOT_FOUND"],"event_timestamps":[1704067200000000,0]}]}
//!
//! {"feature_names":["user_profile:f000","user_profile:f001"],"num_entities":2,
//!  "dense":{"rows":2,"cols":2,"values":[[38.29999923706055,40.0],[null,null]],
//!           "statuses":[["PRESENT","PRESENT"],["NOT_FOUND","NOT_FOUND"]],"event_timestamps":[[1704067200000000,1704067200000000],[0,0]]}}
//! ```
//! `feature_names` are the `view:feature` references. Column values are typed as in Feast
//! JSON (null where not PRESENT); dense values are float32 (bool as 0/1) with `null` where not
//! PRESENT. `statuses` / `event_timestamps` (microseconds since the epoch, 0 when there is no
//! row) are present only when asked for.
//!
//! # Protobuf encoding
//!
//! Responses are written straight into one buffer (no intermediate prost structs); the tests
//! check that the bytes decode with the prost structs of [`crate::proto`] and equal what prost
//! itself encodes for the same answer.

// The encoders name their loop variables the same way everywhere: p (request), n entities, f
// features, c column, e or i entity.
#![allow(clippy::many_single_char_names)]

use crate::catalog::Catalog;
use crate::error::Result;
use crate::invalid;
use crate::json;
use crate::key::KeyColumn;
use crate::partition::ShardCheck;
use crate::proto::{feast, v1};
use crate::query::{self, Answer, CellSource, Cells, ColPos, Entities, Limits, Plan, Selector};
use crate::route;
use crate::row::ValueRef;
use crate::scope::Scope;
use crate::store::Store;
use crate::types::{DType, Status};
use prost::Message as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::sync::Arc;

/// Serving options that are not part of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeConfig {
    pub limits: Limits,
    /// JSON: write float32 as its shortest text (`4.8`) instead of widened to double
    /// (`4.800000190734863`). Both parse back to the same float32.
    pub json_float32_shortest: bool,
}

impl ServeConfig {
    #[must_use]
    pub fn new(max_entities: usize, max_features: usize, json_float32_shortest: bool) -> Self {
        Self {
            limits: Limits {
                max_entities,
                max_features,
            },
            json_float32_shortest,
        }
    }
}

/// Which API a body belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    FeastHttp,
    FeastGrpc,
    V1Grpc,
    V1Http,
    /// Internal: a router's part of a request (`GetCellsRequest`), answered as raw cells
    /// ([`crate::route`]).
    Cells,
}

/// A complete response and what the request touched.
#[derive(Debug, Clone)]
pub struct Served {
    pub body: Vec<u8>,
    /// Names of the feature views the request read (each once, in first-use order).
    pub views: Vec<String>,
    pub num_entities: usize,
    pub num_features: usize,
}

/// v1 request options.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct V1Opts {
    include_statuses: bool,
    include_event_timestamps: bool,
    dense: bool,
}

/// A parsed and planned request, not yet executed.
pub struct Prepared {
    api: Api,
    plan: Arc<Plan>,
    pub(crate) entities: Entities,
    /// The feature service the request named, if any (a router passes it on to the shards).
    pub(crate) service: Option<String>,
    full_feature_names: bool,
    v1: V1Opts,
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("api", &self.api)
            .field("views", &self.views().collect::<Vec<_>>())
            .field("num_entities", &self.num_entities())
            .field("num_features", &self.num_features())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    #[must_use]
    pub fn api(&self) -> Api {
        self.api
    }

    /// The feature views the request reads (for scope checks).
    pub fn views(&self) -> impl Iterator<Item = &str> {
        self.plan.views.iter().map(|v| v.def.name.as_str())
    }

    #[must_use]
    pub fn num_entities(&self) -> usize {
        self.entities.num_rows()
    }

    #[must_use]
    pub fn num_features(&self) -> usize {
        self.plan.columns.len()
    }

    #[must_use]
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Reads the rows of every view involved.
    pub fn execute(&self, store: &Store, cfg: &ServeConfig, now_us: i64) -> Result<Answer> {
        query::execute(store, &self.plan, &self.entities, cfg.limits, now_us)
    }

    /// [`Self::execute`] on a sharded node (refuses entities another shard owns).
    pub fn execute_sharded(
        &self,
        store: &Store,
        cfg: &ServeConfig,
        now_us: i64,
        shard: Option<&ShardCheck>,
    ) -> Result<Answer> {
        query::execute_sharded(store, &self.plan, &self.entities, cfg.limits, now_us, shard)
    }

    /// Encodes an answer of this request as the API's response body.
    #[must_use]
    pub fn encode(&self, answer: &Answer, cfg: &ServeConfig) -> Vec<u8> {
        self.encode_from(&Cells::new(&self.plan, answer), cfg)
    }

    /// Encodes the cells of this request (read locally or gathered from shards) as the API's
    /// response body.
    #[must_use]
    pub fn encode_from(&self, cells: &impl CellSource, cfg: &ServeConfig) -> Vec<u8> {
        let shortest = cfg.json_float32_shortest;
        match self.api {
            Api::FeastHttp => encode_feast_json(self, cells, shortest),
            Api::FeastGrpc => encode_feast_proto(self, cells),
            Api::V1Grpc if self.v1.dense => encode_v1_dense_proto(self, cells),
            Api::V1Grpc => encode_v1_columns_proto(self, cells),
            Api::V1Http if self.v1.dense => encode_v1_dense_json(self, cells, shortest),
            Api::V1Http => encode_v1_columns_json(self, cells, shortest),
            Api::Cells => route::encode_cells(self, cells),
        }
    }

    /// [`Self::execute`] then [`Self::encode`].
    pub fn respond(&self, store: &Store, cfg: &ServeConfig, now_us: i64) -> Result<Vec<u8>> {
        let answer = self.execute(store, cfg, now_us)?;
        Ok(self.encode(&answer, cfg))
    }
}

/// Parses `body` as a request of `api` and plans it against the store's catalog. Nothing is
/// read yet.
pub fn prepare(store: &Store, api: Api, body: &[u8], cfg: &ServeConfig) -> Result<Prepared> {
    prepare_scoped(store, api, body, cfg, None)
}

/// [`prepare`] for a caller limited to `scope`, checked before the catalog is consulted.
pub fn prepare_scoped(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    scope: Option<&Scope>,
) -> Result<Prepared> {
    prepare_in(&store.catalog(), api, body, cfg, scope)
}

/// [`prepare_scoped`] against a catalog (a router's, which holds no rows).
pub fn prepare_in(
    cat: &Catalog,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    scope: Option<&Scope>,
) -> Result<Prepared> {
    let mut via_service = None;
    let (sel, entities, full_feature_names, v1) = match api {
        Api::FeastHttp | Api::V1Http => parse_json(api, body)?,
        Api::FeastGrpc => parse_feast_proto(body)?,
        Api::V1Grpc => parse_v1_proto(body)?,
        Api::Cells => {
            let (parsed, service) = route::parse_cells_request(body)?;
            via_service = service;
            parsed
        }
    };
    if let Some(scope) = scope {
        match &via_service {
            Some(service) => route::check_service_scope(scope, cat, service, &sel)?,
            None => scope.check(cat, &sel)?,
        }
    }
    check_entities(&entities, cfg.limits)?;
    let names: Vec<&str> = entities.columns.iter().map(|c| c.0.as_str()).collect();
    let service = match &sel {
        Selector::Service(s) if api != Api::Cells => Some(s.clone()),
        _ => None,
    };
    let plan = query::plan_cached(cat, &sel, &names, cfg.limits)?;
    if v1.dense {
        if let Some(c) = plan.columns.iter().find(|c| !c.dtype.is_dense_compatible()) {
            return Err(invalid!(
                "feature '{}' has type {} and cannot be returned in the dense layout (only \
                 bool, int32, int64, float32 and float64 features can); use the columns layout",
                c.reference,
                c.dtype.name()
            ));
        }
    }
    Ok(Prepared {
        api,
        plan,
        entities,
        service,
        full_feature_names,
        v1,
    })
}

/// Parses, plans, reads and encodes one request.
pub fn serve(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    now_us: i64,
) -> Result<Served> {
    serve_scoped(store, api, body, cfg, now_us, None)
}

/// [`serve`] for a caller limited to `scope`.
pub fn serve_scoped(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    now_us: i64,
    scope: Option<&Scope>,
) -> Result<Served> {
    serve_sharded(store, api, body, cfg, now_us, scope, None)
}

/// [`serve_scoped`] on a node that owns only `shard` of the stream-sourced views' keys.
pub fn serve_sharded(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    now_us: i64,
    scope: Option<&Scope>,
    shard: Option<&ShardCheck>,
) -> Result<Served> {
    let p = prepare_scoped(store, api, body, cfg, scope)?;
    let answer = p.execute_sharded(store, cfg, now_us, shard)?;
    store.serve_stats.record(&p.plan, &answer);
    let body = p.encode(&answer, cfg);
    Ok(Served {
        body,
        views: p.views().map(str::to_string).collect(),
        num_entities: p.num_entities(),
        num_features: p.num_features(),
    })
}

/// Feast HTTP `POST /get-online-features`: JSON in, JSON out.
pub fn feast_http(store: &Store, body: &[u8], cfg: &ServeConfig, now_us: i64) -> Result<Served> {
    serve(store, Api::FeastHttp, body, cfg, now_us)
}

/// Feast gRPC `GetOnlineFeatures`: `GetOnlineFeaturesRequest` in, `GetOnlineFeaturesResponse`
/// out.
pub fn feast_grpc(store: &Store, body: &[u8], cfg: &ServeConfig, now_us: i64) -> Result<Served> {
    serve(store, Api::FeastGrpc, body, cfg, now_us)
}

/// v1 gRPC `GetFeatureVector`: `GetFeatureVectorRequest` in, `GetFeatureVectorResponse` out.
pub fn v1_grpc(store: &Store, body: &[u8], cfg: &ServeConfig, now_us: i64) -> Result<Served> {
    serve(store, Api::V1Grpc, body, cfg, now_us)
}

/// v1 HTTP `POST /v1/feature-vector`: JSON in, JSON out (shapes in the module docs).
pub fn v1_http(store: &Store, body: &[u8], cfg: &ServeConfig, now_us: i64) -> Result<Served> {
    serve(store, Api::V1Http, body, cfg, now_us)
}

fn check_entities(e: &Entities, limits: Limits) -> Result<()> {
    let Some((first, col)) = e.columns.first() else {
        return Err(invalid!("no entities given: 'entities' has no join key"));
    };
    let n = col.len();
    for (name, col) in &e.columns {
        if col.is_empty() {
            return Err(invalid!("entities: join key '{name}' has no values"));
        }
        if col.len() != n {
            return Err(invalid!(
                "entities: join keys have different lengths: '{first}' has {n} values, \
                 '{name}' has {}",
                col.len()
            ));
        }
    }
    if n > limits.max_entities {
        return Err(invalid!(
            "{n} entities requested; the limit is {}",
            limits.max_entities
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// JSON requests
// ---------------------------------------------------------------------------------------------

pub(crate) type Parsed = (Selector, Entities, bool, V1Opts);

#[derive(Deserialize)]
struct JsonRequest<'a> {
    #[serde(default)]
    features: Option<FeatureRefs>,
    #[serde(default, borrow)]
    feature_service: Option<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    entities: Option<JsonEntities>,
    #[serde(default)]
    full_feature_names: bool,
    #[serde(default)]
    include_statuses: bool,
    #[serde(default)]
    include_event_timestamps: bool,
    #[serde(default, borrow)]
    layout: Option<std::borrow::Cow<'a, str>>,
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

fn parse_json(api: Api, body: &[u8]) -> Result<Parsed> {
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
    Ok((
        sel,
        Entities {
            columns: entities.0,
        },
        req.full_feature_names,
        v1,
    ))
}

/// One JSON array element, classified.
enum Elem {
    Int(i64),
    Str(String),
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
                Ok(i64::try_from(v).map_or_else(
                    |_| Elem::Other(format!("{v}, which is out of the int64 range")),
                    Elem::Int,
                ))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Elem, E> {
                Ok(Elem::Other(format!("the non-integer number {v}")))
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
                (Elem::Other(what), _) => return Err(bad(&what)),
            }
            i += 1;
        }
        Ok(col.unwrap_or(KeyColumn::Int64(Vec::new())))
    }
}

// ---------------------------------------------------------------------------------------------
// Protobuf requests
// ---------------------------------------------------------------------------------------------

fn parse_feast_proto(body: &[u8]) -> Result<Parsed> {
    use feast::get_online_features_request::Kind;
    let req = feast::GetOnlineFeaturesRequest::decode(body)
        .map_err(|e| invalid!("malformed GetOnlineFeaturesRequest: {e}"))?;
    if !req.request_context.is_empty() {
        return Err(invalid!(
            "request_context is not supported (on-demand feature views are not served); got \
             [{}]",
            req.request_context
                .keys()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
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
    Ok((
        sel,
        Entities { columns },
        req.full_feature_names,
        V1Opts::default(),
    ))
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
pub(crate) fn v1_entities(
    entities: std::collections::BTreeMap<String, v1::EntityColumn>,
) -> Result<Vec<(String, KeyColumn)>> {
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

fn parse_v1_proto(body: &[u8]) -> Result<Parsed> {
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
    let columns = v1_entities(req.entities)?;
    Ok((
        sel,
        Entities { columns },
        false,
        V1Opts {
            include_statuses: req.include_statuses,
            include_event_timestamps: req.include_event_timestamps,
            dense,
        },
    ))
}

// ---------------------------------------------------------------------------------------------
// Fast cell access
// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// JSON responses
// ---------------------------------------------------------------------------------------------

/// Quoted status names, indexed by the status number.
const STATUS_JSON: [&[u8]; 5] = [
    b"\"INVALID\"",
    b"\"PRESENT\"",
    b"\"NULL_VALUE\"",
    b"\"NOT_FOUND\"",
    b"\"OUTSIDE_MAX_AGE\"",
];

/// Remembers the last formatted timestamp: a column's rows mostly share one.
struct TsText {
    ts: i64,
    text: Vec<u8>,
}

impl TsText {
    fn new() -> Self {
        let mut text = Vec::with_capacity(40);
        json::write_rfc3339(&mut text, 0);
        Self { ts: 0, text }
    }

    #[inline]
    fn write(&mut self, out: &mut Vec<u8>, ts: i64) {
        if ts != self.ts {
            self.ts = ts;
            self.text.clear();
            json::write_rfc3339(&mut self.text, ts);
        }
        out.extend_from_slice(&self.text);
    }
}

/// One value as JSON (Feast's rendering); `null` unless present.
#[inline]
/// Writes one value as JSON. `feast`: timestamp features as integer Unix seconds, as Feast's
/// feature server writes them (its `unix_timestamp_val`); otherwise RFC 3339 text.
fn json_value(out: &mut Vec<u8>, v: ValueRef<'_>, shortest: bool, feast: bool) {
    match v {
        ValueRef::Timestamp(us) if feast => json::write_i64(out, us.div_euclid(1_000_000)),
        ValueRef::Missing | ValueRef::Null => json::write_null(out),
        ValueRef::Bool(b) => json::write_bool(out, b),
        ValueRef::Int32(x) => json::write_i64(out, i64::from(x)),
        ValueRef::Int64(x) => json::write_i64(out, x),
        ValueRef::Float32(x) => json::write_f32(out, x, shortest),
        ValueRef::Float64(x) => json::write_f64(out, x),
        ValueRef::Str(b) => json::write_str_bytes(out, b),
        ValueRef::Bytes(b) => json::write_base64(out, b),
        ValueRef::Timestamp(us) => json::write_rfc3339(out, us),
        ValueRef::Float32Array(b) => {
            out.push(b'[');
            for (i, c) in b.chunks_exact(4).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                let x = f32::from_le_bytes(c.try_into().expect("4 bytes"));
                json::write_f32(out, x, shortest);
            }
            out.push(b']');
        }
    }
}

fn json_key_value(out: &mut Vec<u8>, col: &KeyColumn, i: usize) {
    match col {
        KeyColumn::Int64(v) => json::write_i64(out, v[i]),
        KeyColumn::Int32(v) => json::write_i64(out, i64::from(v[i])),
        KeyColumn::Str(v) => json::write_str(out, &v[i]),
        KeyColumn::Bytes(v) => json::write_base64(out, &v[i]),
    }
}

/// Rough size of a JSON answer, to allocate once.
fn json_capacity(p: &Prepared) -> usize {
    let n = p.num_entities();
    let f = p.num_features() + p.entities.columns.len();
    256 + f * (64 + n * 56)
}

/// The output name of feature column `c` in the Feast APIs.
fn feast_name(p: &Prepared, c: usize) -> std::borrow::Cow<'_, str> {
    let col = &p.plan.columns[c];
    if p.full_feature_names {
        let view = &p.plan.views[col.view].def.name;
        format!("{view}__{}", col.feature).into()
    } else {
        col.feature.as_str().into()
    }
}

fn encode_feast_json(p: &Prepared, cells: &impl CellSource, shortest: bool) -> Vec<u8> {
    let n = cells.num_entities();
    let mut out = Vec::with_capacity(json_capacity(p));
    out.extend_from_slice(b"{\"metadata\":{\"feature_names\":[");
    let mut first = true;
    for (name, _) in &p.entities.columns {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::write_str(&mut out, name);
    }
    for c in 0..p.plan.columns.len() {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::write_str(&mut out, &feast_name(p, c));
    }
    out.extend_from_slice(b"]},\"results\":[");
    let mut first = true;
    for (_, col) in &p.entities.columns {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"values\":[");
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            json_key_value(&mut out, col, i);
        }
        out.extend_from_slice(b"],\"statuses\":[");
        repeat_sep(&mut out, STATUS_JSON[Status::Present as usize], n);
        out.extend_from_slice(b"],\"event_timestamps\":[");
        repeat_sep(&mut out, b"\"1970-01-01T00:00:00Z\"", n);
        out.extend_from_slice(b"]}");
    }
    let mut st = vec![0u8; n];
    let mut ts = vec![0i64; n];
    let mut tstext = TsText::new();
    for c in 0..p.plan.columns.len() {
        let cp = cells.col(c);
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"values\":[");
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let cell = cells.cell(c, cp, i);
            st[i] = cell.status as u8;
            ts[i] = if cell.status == Status::NotFound {
                0
            } else {
                cell.event_ts
            };
            json_value(&mut out, cell.value, shortest, true);
        }
        out.extend_from_slice(b"],\"statuses\":[");
        for (i, s) in st.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(STATUS_JSON[*s as usize]);
        }
        out.extend_from_slice(b"],\"event_timestamps\":[");
        for (i, t) in ts.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            tstext.write(&mut out, *t);
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}");
    out
}

fn repeat_sep(out: &mut Vec<u8>, item: &[u8], n: usize) {
    for i in 0..n {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
}

fn v1_json_head(p: &Prepared, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"feature_names\":[");
    for (i, c) in p.plan.columns.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json::write_str(out, &c.reference);
    }
    out.extend_from_slice(b"],\"num_entities\":");
    json::write_u64(out, p.num_entities() as u64);
}

fn encode_v1_columns_json(p: &Prepared, cells: &impl CellSource, shortest: bool) -> Vec<u8> {
    let n = cells.num_entities();
    let mut out = Vec::with_capacity(json_capacity(p));
    v1_json_head(p, &mut out);
    out.extend_from_slice(b",\"columns\":[");
    let mut st = vec![0u8; n];
    let mut ts = vec![0i64; n];
    for c in 0..p.plan.columns.len() {
        let cp = cells.col(c);
        if c > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"values\":[");
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let cell = cells.cell(c, cp, i);
            st[i] = cell.status as u8;
            ts[i] = cell.event_ts;
            json_value(&mut out, cell.value, shortest, false);
        }
        out.push(b']');
        if p.v1.include_statuses {
            out.extend_from_slice(b",\"statuses\":[");
            for (i, s) in st.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(STATUS_JSON[*s as usize]);
            }
            out.push(b']');
        }
        if p.v1.include_event_timestamps {
            out.extend_from_slice(b",\"event_timestamps\":[");
            for (i, t) in ts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json::write_i64(&mut out, *t);
            }
            out.push(b']');
        }
        out.push(b'}');
    }
    out.extend_from_slice(b"]}");
    out
}

fn encode_v1_dense_json(p: &Prepared, cells: &impl CellSource, shortest: bool) -> Vec<u8> {
    let (n, f) = (cells.num_entities(), p.plan.columns.len());
    let mut out = Vec::with_capacity(json_capacity(p));
    v1_json_head(p, &mut out);
    out.extend_from_slice(b",\"dense\":{\"rows\":");
    json::write_u64(&mut out, n as u64);
    out.extend_from_slice(b",\"cols\":");
    json::write_u64(&mut out, f as u64);
    out.extend_from_slice(b",\"values\":[");
    let mut st = Vec::with_capacity(if p.v1.include_statuses { n * f } else { 0 });
    let mut ts = Vec::with_capacity(if p.v1.include_event_timestamps {
        n * f
    } else {
        0
    });
    let cps: Vec<ColPos> = (0..f).map(|c| cells.col(c)).collect();
    for e in 0..n {
        if e > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (c, cp) in cps.iter().enumerate() {
            if c > 0 {
                out.push(b',');
            }
            let (x, s, t) = cells.f32(c, *cp, e);
            json::write_f32(&mut out, x, shortest);
            if p.v1.include_statuses {
                st.push(s as u8);
            }
            if p.v1.include_event_timestamps {
                ts.push(t);
            }
        }
        out.push(b']');
    }
    out.push(b']');
    if p.v1.include_statuses {
        out.extend_from_slice(b",\"statuses\":");
        json_matrix(&mut out, &st, f, |o, s| {
            o.extend_from_slice(STATUS_JSON[*s as usize]);
        });
    }
    if p.v1.include_event_timestamps {
        out.extend_from_slice(b",\"event_timestamps\":");
        json_matrix(&mut out, &ts, f, |o, t| json::write_i64(o, *t));
    }
    out.extend_from_slice(b"}}");
    out
}

fn json_matrix<T>(out: &mut Vec<u8>, v: &[T], cols: usize, w: impl Fn(&mut Vec<u8>, &T)) {
    out.push(b'[');
    for (r, row) in v.chunks(cols.max(1)).enumerate() {
        if r > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (i, x) in row.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            w(out, x);
        }
        out.push(b']');
    }
    out.push(b']');
}

// ---------------------------------------------------------------------------------------------
// Protobuf responses, written directly
// ---------------------------------------------------------------------------------------------

/// Minimal protobuf wire writer.
mod pb {
    pub const VARINT: u32 = 0;
    pub const I64: u32 = 1;
    pub const LEN: u32 = 2;
    pub const I32: u32 = 5;

    #[inline]
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    #[inline]
    pub fn varint_len(v: u64) -> usize {
        // 1 byte per 7 significant bits, at least 1.
        (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
    }

    #[inline]
    pub fn key(out: &mut Vec<u8>, field: u32, wire: u32) {
        varint(out, u64::from(field << 3 | wire));
    }

    #[inline]
    pub fn bytes(out: &mut Vec<u8>, field: u32, b: &[u8]) {
        key(out, field, LEN);
        varint(out, b.len() as u64);
        out.extend_from_slice(b);
    }

    /// A length-delimited field whose body `f` writes; the length is patched in afterwards
    /// (the body is moved left when the length takes fewer than 5 bytes).
    #[inline]
    pub fn nested(out: &mut Vec<u8>, field: u32, f: impl FnOnce(&mut Vec<u8>)) {
        key(out, field, LEN);
        let at = out.len();
        out.extend_from_slice(&[0; 5]);
        f(out);
        let len = out.len() - at - 5;
        let mut tmp = Vec::with_capacity(5);
        varint(&mut tmp, len as u64);
        out[at..at + tmp.len()].copy_from_slice(&tmp);
        if tmp.len() < 5 {
            out.copy_within(at + 5.., at + tmp.len());
            out.truncate(at + tmp.len() + len);
        }
    }
}

/// `feast.types.Value` body length and writer.
fn feast_value_len(v: &ValueRef<'_>) -> usize {
    match *v {
        ValueRef::Missing | ValueRef::Null => 0,
        ValueRef::Bool(_) => 2,
        ValueRef::Int32(x) => 1 + pb::varint_len(i64::from(x) as u64),
        ValueRef::Int64(x) => 1 + pb::varint_len(x as u64),
        ValueRef::Timestamp(us) => 1 + pb::varint_len(us.div_euclid(1_000_000) as u64),
        ValueRef::Float32(_) => 5,
        ValueRef::Float64(_) => 9,
        ValueRef::Str(b) => {
            let n = str_len(b);
            1 + pb::varint_len(n as u64) + n
        }
        ValueRef::Bytes(b) => 1 + pb::varint_len(b.len() as u64) + b.len(),
        ValueRef::Float32Array(b) => {
            let list = if b.is_empty() {
                0
            } else {
                1 + pb::varint_len(b.len() as u64) + b.len()
            };
            2 + pb::varint_len(list as u64) + list
        }
    }
}

/// Length of a string value once made valid UTF-8.
#[inline]
fn str_len(b: &[u8]) -> usize {
    match std::str::from_utf8(b) {
        Ok(_) => b.len(),
        Err(_) => String::from_utf8_lossy(b).len(),
    }
}

fn write_str_field(out: &mut Vec<u8>, field: u32, b: &[u8]) {
    match std::str::from_utf8(b) {
        Ok(_) => pb::bytes(out, field, b),
        Err(_) => pb::bytes(out, field, String::from_utf8_lossy(b).as_bytes()),
    }
}

fn feast_value(out: &mut Vec<u8>, field: u32, v: ValueRef<'_>) {
    pb::key(out, field, pb::LEN);
    pb::varint(out, feast_value_len(&v) as u64);
    match v {
        ValueRef::Missing | ValueRef::Null => {}
        ValueRef::Bool(b) => {
            pb::key(out, 7, pb::VARINT);
            out.push(u8::from(b));
        }
        ValueRef::Int32(x) => {
            pb::key(out, 3, pb::VARINT);
            pb::varint(out, i64::from(x) as u64);
        }
        ValueRef::Int64(x) => {
            pb::key(out, 4, pb::VARINT);
            pb::varint(out, x as u64);
        }
        ValueRef::Timestamp(us) => {
            pb::key(out, 8, pb::VARINT);
            pb::varint(out, us.div_euclid(1_000_000) as u64);
        }
        ValueRef::Float32(x) => {
            pb::key(out, 6, pb::I32);
            out.extend_from_slice(&x.to_le_bytes());
        }
        ValueRef::Float64(x) => {
            pb::key(out, 5, pb::I64);
            out.extend_from_slice(&x.to_le_bytes());
        }
        ValueRef::Str(b) => write_str_field(out, 2, b),
        ValueRef::Bytes(b) => pb::bytes(out, 1, b),
        ValueRef::Float32Array(b) => {
            pb::key(out, 16, pb::LEN);
            if b.is_empty() {
                out.push(0);
            } else {
                pb::varint(out, (1 + pb::varint_len(b.len() as u64) + b.len()) as u64);
                pb::bytes(out, 1, b);
            }
        }
    }
}

/// `google.protobuf.Timestamp` as field `field`.
#[inline]
fn pb_timestamp(out: &mut Vec<u8>, field: u32, micros: i64) {
    let t = feast::Timestamp::from_micros(micros);
    let len = if t.seconds == 0 {
        0
    } else {
        1 + pb::varint_len(t.seconds as u64)
    } + if t.nanos == 0 {
        0
    } else {
        1 + pb::varint_len(i64::from(t.nanos) as u64)
    };
    pb::key(out, field, pb::LEN);
    out.push(len as u8);
    if t.seconds != 0 {
        pb::key(out, 1, pb::VARINT);
        pb::varint(out, t.seconds as u64);
    }
    if t.nanos != 0 {
        pb::key(out, 2, pb::VARINT);
        pb::varint(out, i64::from(t.nanos) as u64);
    }
}

fn encode_feast_proto(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
    let n = cells.num_entities();
    let f = p.plan.columns.len();
    let mut out = Vec::with_capacity(256 + (f + p.entities.columns.len()) * (16 + n * 20));
    // metadata { feature_names { val: [...] } }
    pb::nested(&mut out, 1, |out| {
        pb::nested(out, 1, |out| {
            for (name, _) in &p.entities.columns {
                pb::bytes(out, 1, name.as_bytes());
            }
            for c in 0..f {
                pb::bytes(out, 1, feast_name(p, c).as_bytes());
            }
        });
    });
    for (_, col) in &p.entities.columns {
        pb::nested(&mut out, 2, |out| {
            for i in 0..n {
                let v = match col {
                    KeyColumn::Int64(v) => ValueRef::Int64(v[i]),
                    KeyColumn::Int32(v) => ValueRef::Int32(v[i]),
                    KeyColumn::Str(v) => ValueRef::Str(v[i].as_bytes()),
                    KeyColumn::Bytes(v) => ValueRef::Bytes(&v[i]),
                };
                feast_value(out, 1, v);
            }
            pb::key(out, 2, pb::LEN);
            pb::varint(out, n as u64);
            out.resize(out.len() + n, Status::Present as u8);
            for _ in 0..n {
                pb_timestamp(out, 3, 0);
            }
        });
    }
    let mut st = vec![0u8; n];
    let mut ts = vec![0i64; n];
    for c in 0..f {
        let cp = cells.col(c);
        pb::nested(&mut out, 2, |out| {
            for i in 0..n {
                let cell = cells.cell(c, cp, i);
                st[i] = cell.status as u8;
                ts[i] = if cell.status == Status::NotFound {
                    0
                } else {
                    cell.event_ts
                };
                feast_value(out, 1, cell.value);
            }
            pb::bytes(out, 2, &st);
            for t in &ts {
                pb_timestamp(out, 3, *t);
            }
        });
    }
    out
}

fn v1_head(p: &Prepared, out: &mut Vec<u8>) {
    for c in &p.plan.columns {
        pb::bytes(out, 1, c.reference.as_bytes());
    }
    let n = p.num_entities() as u64;
    if n != 0 {
        pb::key(out, 2, pb::VARINT);
        pb::varint(out, n);
    }
}

/// A packed repeated field (skipped when empty, like prost).
fn packed(out: &mut Vec<u8>, field: u32, n: usize, f: impl FnOnce(&mut Vec<u8>)) {
    if n > 0 {
        pb::nested(out, field, f);
    }
}

fn encode_v1_columns_proto(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
    let n = cells.num_entities();
    let mut out = Vec::with_capacity(256 + p.num_features() * (32 + n * 20));
    v1_head(p, &mut out);
    let mut st = vec![0u8; n];
    let mut ts = vec![0i64; n];
    for (c, col) in p.plan.columns.iter().enumerate() {
        let cp = cells.col(c);
        let dtype = col.dtype;
        let tag = match dtype {
            DType::Bool => 1,
            DType::Int32 => 2,
            DType::Int64 => 3,
            DType::Float32 => 4,
            DType::Float64 => 5,
            DType::String => 6,
            DType::Bytes => 7,
            DType::Timestamp => 8,
            DType::Float32Array => 9,
        };
        let dim = col.dim as usize;
        pb::nested(&mut out, 3, |out| {
            pb::nested(out, tag, |out| {
                if dtype == DType::Float32Array && dim > 0 {
                    pb::key(out, 1, pb::VARINT);
                    pb::varint(out, dim as u64);
                }
                let field = if dtype == DType::Float32Array { 2 } else { 1 };
                let values = |out: &mut Vec<u8>, st: &mut [u8], ts: &mut [i64]| {
                    for i in 0..n {
                        let cell = cells.cell(c, cp, i);
                        st[i] = cell.status as u8;
                        ts[i] = cell.event_ts;
                        v1_value(out, dtype, dim, cell.value);
                    }
                };
                if dtype.is_var() {
                    for i in 0..n {
                        let cell = cells.cell(c, cp, i);
                        st[i] = cell.status as u8;
                        ts[i] = cell.event_ts;
                        match cell.value {
                            ValueRef::Str(b) => write_str_field(out, field, b),
                            ValueRef::Bytes(b) => pb::bytes(out, field, b),
                            _ => pb::bytes(out, field, b""),
                        }
                    }
                } else if dtype == DType::Float32Array && dim == 0 {
                    values(out, &mut st, &mut ts);
                } else {
                    pb::nested(out, field, |out| values(out, &mut st, &mut ts));
                }
            });
            if p.v1.include_statuses {
                pb::bytes(out, 15, &st);
            }
            if p.v1.include_event_timestamps {
                packed(out, 16, n, |out| {
                    for t in &ts {
                        pb::varint(out, *t as u64);
                    }
                });
            }
        });
    }
    out
}

/// One element of a packed typed column (the type's zero when not present).
#[inline]
fn v1_value(out: &mut Vec<u8>, dtype: DType, dim: usize, v: ValueRef<'_>) {
    match (dtype, v) {
        (_, ValueRef::Bool(b)) => out.push(u8::from(b)),
        (_, ValueRef::Int32(x)) => pb::varint(out, i64::from(x) as u64),
        (_, ValueRef::Int64(x) | ValueRef::Timestamp(x)) => pb::varint(out, x as u64),
        (_, ValueRef::Float32(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (_, ValueRef::Float64(x)) => out.extend_from_slice(&x.to_le_bytes()),
        (_, ValueRef::Float32Array(b)) => {
            out.extend_from_slice(b);
            out.resize(out.len() + (4 * dim).saturating_sub(b.len()), 0);
        }
        (DType::Bool | DType::Int32 | DType::Int64 | DType::Timestamp, _) => out.push(0),
        (DType::Float32, _) => out.extend_from_slice(&[0; 4]),
        (DType::Float64, _) => out.extend_from_slice(&[0; 8]),
        (DType::Float32Array, _) => out.resize(out.len() + 4 * dim, 0),
        (DType::String | DType::Bytes, _) => {}
    }
}

fn encode_v1_dense_proto(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
    let (n, f) = (cells.num_entities(), p.plan.columns.len());
    let cells_n = n * f;
    let mut out = Vec::with_capacity(
        64 + p
            .plan
            .columns
            .iter()
            .map(|c| c.reference.len() + 2)
            .sum::<usize>()
            + cells_n * (4 + usize::from(p.v1.include_statuses))
            + if p.v1.include_event_timestamps {
                cells_n * 8
            } else {
                0
            },
    );
    v1_head(p, &mut out);
    pb::nested(&mut out, 4, |out| {
        if n > 0 {
            pb::key(out, 1, pb::VARINT);
            pb::varint(out, n as u64);
        }
        if f > 0 {
            pb::key(out, 2, pb::VARINT);
            pb::varint(out, f as u64);
        }
        if cells_n == 0 {
            return;
        }
        let cps: Vec<ColPos> = (0..f).map(|c| cells.col(c)).collect();
        let (want_st, want_ts) = (p.v1.include_statuses, p.v1.include_event_timestamps);
        let mut st = vec![0u8; if want_st { cells_n } else { 0 }];
        let mut ts = vec![0u8; if want_ts { cells_n * 8 } else { 0 }];
        pb::key(out, 3, pb::LEN);
        pb::varint(out, (cells_n * 4) as u64);
        let start = out.len();
        out.resize(start + cells_n * 4, 0);
        let dst = &mut out[start..];
        for e in 0..n {
            for (c, cp) in cps.iter().enumerate() {
                let (x, s, t) = cells.f32(c, *cp, e);
                let k = e * f + c;
                dst[k * 4..k * 4 + 4].copy_from_slice(&x.to_le_bytes());
                if want_st {
                    st[k] = s as u8;
                }
                if want_ts {
                    ts[k * 8..k * 8 + 8].copy_from_slice(&t.to_le_bytes());
                }
            }
        }
        if p.v1.include_statuses {
            pb::bytes(out, 4, &st);
        }
        if p.v1.include_event_timestamps {
            pb::bytes(out, 5, &ts);
        }
    });
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::catalog::ViewDef;
    use crate::error::CoreError;
    use crate::row::BatchRowWriter;
    use crate::store::StoreOptions;
    use feast::value::Val;
    use std::collections::BTreeMap;

    pub(crate) const TS_2024: i64 = 1_704_067_200_000_000;
    /// "now" of the tests: one day after 2024-01-01.
    pub(crate) const NOW: i64 = TS_2024 + 86_400_000_000;

    pub(crate) fn registry(n_features: usize) -> String {
        let feats: Vec<String> = (0..n_features)
            .map(|i| format!(r#"{{"name":"f{i:03}","dtype":"float32"}}"#))
            .collect();
        format!(
            r#"{{"project":"t","feature_views":[
              {{"name":"user_profile","join_keys":[{{"name":"user_id","dtype":"int64"}}],"features":[{}]}},
              {{"name":"kitchen","join_keys":[{{"name":"sku","dtype":"string"}}],"features":[
                {{"name":"b","dtype":"bool"}},{{"name":"i32","dtype":"int32"}},{{"name":"i64","dtype":"int64"}},
                {{"name":"f64","dtype":"float64"}},{{"name":"s","dtype":"string"}},{{"name":"y","dtype":"bytes"}},
                {{"name":"t","dtype":"timestamp"}},{{"name":"emb","dtype":"float32_array","dim":3}},
                {{"name":"f32","dtype":"float32"}}]}},
              {{"name":"fresh","join_keys":[{{"name":"user_id","dtype":"int64"}}],"ttl_seconds":3600,
                "features":[{{"name":"score","dtype":"float32"}}]}}],
             "feature_services":[{{"name":"svc","features":[{{"view":"user_profile","feature":"f001"}},{{"view":"fresh","feature":"score"}}]}}]}}"#,
            feats.join(",")
        )
    }

    /// WORKLOADS' value of feature `f` for user `u`.
    fn formula(u: i64, f: usize) -> f32 {
        (((u * 31 + f as i64 * 17) % 1000) as f64 / 10.0) as f32
    }

    fn write_rows(
        store: &Store,
        view: &str,
        keys: KeyColumn,
        ts: &[i64],
        fill: impl Fn(&mut BatchRowWriter, &ViewDef, usize),
    ) {
        let cat = store.catalog();
        let def = cat.view(view).unwrap();
        let n = keys.len();
        let ents = Entities {
            columns: vec![("k".into(), keys)],
        };
        let k = query::encode_keys(def, &[0], &ents, n).unwrap();
        let mut w = BatchRowWriter::new(&def.layout, ts);
        for r in 0..n {
            fill(&mut w, def, r);
        }
        store.write(def, &k, w.finish(), &[]).unwrap();
    }

    const TRICKY: &str = "he said \"hi\" \\ é 😀\n\t\u{1}";

    pub(crate) fn fixture(users: i64, n_features: usize) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            hot_tier_bytes: 64 << 20,
            block_cache_bytes: 8 << 20,
            sync_writes: false,
        };
        let store = Store::open(dir.path(), &registry(n_features), opts, false).unwrap();
        let ids: Vec<i64> = (0..users).collect();
        write_rows(
            &store,
            "user_profile",
            KeyColumn::Int64(ids.clone()),
            &vec![TS_2024; ids.len()],
            |w, def, r| {
                for f in 0..n_features {
                    let slot = def.by_name[&format!("f{f:03}")];
                    w.set_fixed(r, slot, &formula(r as i64, f).to_le_bytes());
                }
            },
        );
        write_rows(
            &store,
            "kitchen",
            KeyColumn::Str(vec!["a".into(), "b".into()]),
            &[TS_2024 + 500_000, TS_2024],
            |w, def, r| {
                let s = |n: &str| def.by_name[n];
                if r == 0 {
                    w.set_fixed(r, s("b"), &[1]);
                    w.set_fixed(r, s("i32"), &(-5i32).to_le_bytes());
                    w.set_fixed(r, s("i64"), &(1i64 << 40).to_le_bytes());
                    w.set_fixed(r, s("f64"), &0.1f64.to_le_bytes());
                    w.set_var(r, s("s"), Some(TRICKY.as_bytes()));
                    w.set_var(r, s("y"), Some(&[0, 255, 1]));
                    w.set_fixed(r, s("t"), &(TS_2024 + 1_500).to_le_bytes());
                    let emb: Vec<u8> = [1.5f32, -2.0, f32::NAN]
                        .iter()
                        .flat_map(|x| x.to_le_bytes())
                        .collect();
                    w.set_fixed(r, s("emb"), &emb);
                    w.set_fixed(r, s("f32"), &4.8f32.to_le_bytes());
                } else {
                    w.set_var(r, s("s"), None);
                    w.set_var(r, s("y"), None);
                }
            },
        );
        write_rows(
            &store,
            "fresh",
            KeyColumn::Int64(vec![1, 2]),
            &[NOW - 10_000_000, NOW - 7_200_000_000],
            |w, def, r| {
                w.set_fixed(r, def.by_name["score"], &(r as f32 + 1.5).to_le_bytes());
            },
        );
        (dir, store)
    }

    pub(crate) fn cfg() -> ServeConfig {
        ServeConfig::default()
    }

    fn http(store: &Store, body: &str) -> String {
        let s = feast_http(store, body.as_bytes(), &cfg(), NOW).unwrap();
        String::from_utf8(s.body).unwrap()
    }

    #[test]
    fn feast_http_exact_bytes() {
        let (_d, store) = fixture(10, 5);
        let body = r#"{"features":["user_profile:f001","user_profile:f000"],"entities":{"user_id":[1,99]},"include_feature_view_version_metadata":true}"#;
        let served = feast_http(&store, body.as_bytes(), &cfg(), NOW).unwrap();
        assert_eq!(served.views, ["user_profile"]);
        assert_eq!((served.num_entities, served.num_features), (2, 2));
        let expected = concat!(
            r#"{"metadata":{"feature_names":["user_id","f001","f000"]},"results":["#,
            r#"{"values":[1,99],"statuses":["PRESENT","PRESENT"],"event_timestamps":["1970-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
            r#"{"values":[4.800000190734863,null],"statuses":["PRESENT","NOT_FOUND"],"event_timestamps":["2024-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
            r#"{"values":[3.0999999046325684,null],"statuses":["PRESENT","NOT_FOUND"],"event_timestamps":["2024-01-01T00:00:00Z","1970-01-01T00:00:00Z"]}"#,
            "]}"
        );
        assert_eq!(String::from_utf8(served.body).unwrap(), expected);

        let short = ServeConfig {
            json_float32_shortest: true,
            ..cfg()
        };
        let out = feast_http(&store, body.as_bytes(), &short, NOW)
            .unwrap()
            .body;
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains(r#"{"values":[4.8,null]"#), "{out}");
        assert!(out.contains(r#"{"values":[3.1,null]"#), "{out}");
    }

    #[test]
    fn feast_http_full_names_service_and_ttl() {
        let (_d, store) = fixture(10, 5);
        let out = http(
            &store,
            r#"{"feature_service":"svc","entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v["metadata"]["feature_names"],
            serde_json::json!(["user_id", "user_profile__f001", "fresh__score"])
        );
        let score = &v["results"][2];
        assert_eq!(score["values"], serde_json::json!([1.5, null, null]));
        assert_eq!(
            score["statuses"],
            serde_json::json!(["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"])
        );
        assert_eq!(
            score["event_timestamps"],
            serde_json::json!([
                "2024-01-01T23:59:50Z",
                "2024-01-01T22:00:00Z",
                "1970-01-01T00:00:00Z"
            ])
        );
        let served = feast_http(
            &store,
            br#"{"feature_service":"svc","entities":{"user_id":[1]}}"#,
            &cfg(),
            NOW,
        )
        .unwrap();
        assert_eq!(served.views, ["user_profile", "fresh"]);
        // Feast's request model: `features` defaults to [] beside a feature service, and an
        // empty `feature_service` means none.
        for body in [
            r#"{"feature_service":"svc","features":[],"entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
            r#"{"feature_service":"","features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2,3]},"full_feature_names":true}"#,
        ] {
            assert_eq!(http(&store, body), out, "{body}");
        }
    }

    #[test]
    fn feast_http_every_type() {
        let (_d, store) = fixture(2, 2);
        let out = http(
            &store,
            r#"{"features":["kitchen:b","kitchen:i32","kitchen:i64","kitchen:f64","kitchen:s","kitchen:y","kitchen:t","kitchen:emb","kitchen:f32"],"entities":{"sku":["a","b","zz"]}}"#,
        );
        let expected = concat!(
            r#"{"metadata":{"feature_names":["sku","b","i32","i64","f64","s","y","t","emb","f32"]},"results":["#,
            r#"{"values":["a","b","zz"],"statuses":["PRESENT","PRESENT","PRESENT"],"event_timestamps":["1970-01-01T00:00:00Z","1970-01-01T00:00:00Z","1970-01-01T00:00:00Z"]},"#,
        );
        assert!(out.starts_with(expected), "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let col = |i: usize| &v["results"][i + 1];
        let vals: Vec<serde_json::Value> = (0..9).map(|i| col(i)["values"][0].clone()).collect();
        assert_eq!(
            serde_json::Value::Array(vals),
            serde_json::json!([
                true,
                -5,
                1_099_511_627_776i64,
                0.1,
                TRICKY,
                "AP8B",
                1_704_067_200,
                [1.5, -2.0, null],
                4.800_000_190_734_863
            ])
        );
        for i in 0..9 {
            assert_eq!(col(i)["values"][1], serde_json::Value::Null, "col {i}");
            assert_eq!(col(i)["statuses"][0], "PRESENT");
            assert_eq!(col(i)["statuses"][1], "NULL_VALUE", "col {i}");
            assert_eq!(col(i)["statuses"][2], "NOT_FOUND");
            assert_eq!(col(i)["event_timestamps"][0], "2024-01-01T00:00:00.500Z");
            assert_eq!(col(i)["event_timestamps"][1], "2024-01-01T00:00:00Z");
            assert_eq!(col(i)["event_timestamps"][2], "1970-01-01T00:00:00Z");
        }
        assert!(
            out.contains(r#""he said \"hi\" \\ é 😀\n\t\u0001""#),
            "{out}"
        );
    }

    fn err(api: Api, store: &Store, body: &[u8]) -> CoreError {
        serve(store, api, body, &cfg(), NOW).unwrap_err()
    }

    #[test]
    fn json_bad_input() {
        let (_d, store) = fixture(3, 5);
        let cases: &[(&str, &str)] = &[
            (
                r#"{"features":["user_profile:f000"]}"#,
                "missing 'entities'",
            ),
            (r#"{"entities":{"user_id":[1]}}"#, "missing 'features'"),
            (
                r#"{"features":["user_profile:f000"],"feature_service":"svc","entities":{"user_id":[1]}}"#,
                "not both",
            ),
            (
                r#"{"features":["user_profile:f000",7],"entities":{"user_id":[1]}}"#,
                "features[1] must be a \"view:feature\" string, not the number 7",
            ),
            (
                r#"{"features":"user_profile:f000","entities":{"user_id":[1]}}"#,
                "'features' as a list",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[]}}"#,
                "join key 'user_id' has no values",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{}}"#,
                "no entities given",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1,"x"]}}"#,
                "join key 'user_id' value #1 is the string \"x\" after numbers",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1.5]}}"#,
                "join key 'user_id' value #0 is the non-integer number 1.5",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[true]}}"#,
                "join key 'user_id' value #0 is the boolean true",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[null]}}"#,
                "join key 'user_id' value #0 is null",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[[1]]}}"#,
                "join key 'user_id' value #0 is a list",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":5}}"#,
                "a list of values for join key 'user_id'",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":["1"]}}"#,
                "join key 'user_id' has type int64 but the request gives string values",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1],"shop":[2]}}"#,
                "entity column 'shop' is not a join key",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1,2],"user_id":[3]}}"#,
                "'user_id' is given twice",
            ),
            (
                r#"{"features":["user_profile"],"entities":{"user_id":[1]}}"#,
                "'user_profile' is not of the form",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1]}"#,
                "invalid JSON request body: EOF while parsing an object at line 1 column 60",
            ),
            (
                r"[]",
                "invalid JSON request body: invalid type: sequence, expected a JSON object",
            ),
            (
                r#"{"features":["user_profile:f000"],"entities":{"user_id":[1]}} x"#,
                "trailing characters",
            ),
        ];
        for (body, want) in cases {
            let e = err(Api::FeastHttp, &store, body.as_bytes());
            assert!(matches!(e, CoreError::InvalidArgument(_)), "{body}: {e:?}");
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        let nf: &[(&str, &str)] = &[
            (
                r#"{"features":["user_profle:f000"],"entities":{"user_id":[1]}}"#,
                "unknown feature view 'user_profle' (did you mean 'user_profile'?)",
            ),
            (
                r#"{"features":["user_profile:f999"],"entities":{"user_id":[1]}}"#,
                "has no feature 'f999'",
            ),
            (
                r#"{"feature_service":"nope","entities":{"user_id":[1]}}"#,
                "unknown feature service 'nope'",
            ),
        ];
        for (body, want) in nf {
            let e = err(Api::FeastHttp, &store, body.as_bytes());
            assert!(matches!(e, CoreError::NotFound(_)), "{body}: {e:?}");
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
        let tight = ServeConfig {
            limits: Limits {
                max_entities: 2,
                max_features: 10,
            },
            ..cfg()
        };
        let e = feast_http(
            &store,
            br#"{"features":["user_profile:f000"],"entities":{"user_id":[1,2,3]}}"#,
            &tight,
            NOW,
        )
        .unwrap_err();
        assert!(matches!(e, CoreError::InvalidArgument(_)), "{e:?}");
        assert!(
            e.to_string()
                .contains("3 entities requested; the limit is 2"),
            "{e}"
        );
        let e = err(
            Api::V1Http,
            &store,
            br#"{"features":["user_profile:f000"],"entities":{"user_id":[1]},"layout":"rows"}"#,
        );
        assert!(e.to_string().contains("not \"rows\""), "{e}");
    }

    pub(crate) fn fv(v: Val) -> feast::Value {
        feast::Value { val: Some(v) }
    }

    pub(crate) fn feast_req(
        features: &[&str],
        entities: Vec<(&str, Vec<feast::Value>)>,
    ) -> feast::GetOnlineFeaturesRequest {
        feast::GetOnlineFeaturesRequest {
            kind: Some(feast::get_online_features_request::Kind::Features(
                feast::FeatureList {
                    val: features.iter().map(|s| (*s).to_string()).collect(),
                },
            )),
            entities: entities
                .into_iter()
                .map(|(k, v)| (k.to_string(), feast::RepeatedValue { val: v }))
                .collect(),
            full_feature_names: false,
            request_context: BTreeMap::new(),
        }
    }

    /// What prost encodes for the same answer: the reference for the hand-written encoder.
    fn feast_oracle(p: &Prepared, a: &Answer) -> feast::GetOnlineFeaturesResponse {
        use feast::get_online_features_response::FeatureVector;
        let n = a.num_entities;
        let mut names: Vec<String> = p.entities.columns.iter().map(|c| c.0.clone()).collect();
        let mut results = Vec::new();
        for (_, col) in &p.entities.columns {
            let values = (0..n)
                .map(|i| {
                    fv(match col {
                        KeyColumn::Int64(v) => Val::Int64Val(v[i]),
                        KeyColumn::Int32(v) => Val::Int32Val(v[i]),
                        KeyColumn::Str(v) => Val::StringVal(v[i].clone()),
                        KeyColumn::Bytes(v) => Val::BytesVal(v[i].clone()),
                    })
                })
                .collect();
            results.push(FeatureVector {
                values,
                statuses: vec![1; n],
                event_timestamps: vec![feast::Timestamp::default(); n],
            });
        }
        for c in 0..p.plan.columns.len() {
            names.push(feast_name(p, c).into_owned());
            let mut r = FeatureVector {
                values: vec![],
                statuses: vec![],
                event_timestamps: vec![],
            };
            for i in 0..n {
                let cell = a.cell(&p.plan, c, i);
                r.values.push(feast::Value {
                    val: match cell.value {
                        ValueRef::Null | ValueRef::Missing => None,
                        ValueRef::Bool(b) => Some(Val::BoolVal(b)),
                        ValueRef::Int32(x) => Some(Val::Int32Val(x)),
                        ValueRef::Int64(x) => Some(Val::Int64Val(x)),
                        ValueRef::Float32(x) => Some(Val::FloatVal(x)),
                        ValueRef::Float64(x) => Some(Val::DoubleVal(x)),
                        ValueRef::Str(b) => {
                            Some(Val::StringVal(String::from_utf8_lossy(b).into_owned()))
                        }
                        ValueRef::Bytes(b) => Some(Val::BytesVal(b.to_vec())),
                        ValueRef::Timestamp(us) => {
                            Some(Val::UnixTimestampVal(us.div_euclid(1_000_000)))
                        }
                        ValueRef::Float32Array(b) => Some(Val::FloatListVal(feast::FloatList {
                            val: b
                                .chunks_exact(4)
                                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                                .collect(),
                        })),
                    },
                });
                r.statuses.push(cell.status as i32);
                let ts = if cell.status == Status::NotFound {
                    0
                } else {
                    cell.event_ts
                };
                r.event_timestamps.push(feast::Timestamp::from_micros(ts));
            }
            results.push(r);
        }
        feast::GetOnlineFeaturesResponse {
            metadata: Some(feast::GetOnlineFeaturesResponseMetadata {
                feature_names: Some(feast::FeatureList { val: names }),
            }),
            results,
        }
    }

    fn check_against_oracle(store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        let p = prepare(store, api, body, &cfg()).unwrap();
        let a = p.execute(store, &cfg(), NOW).unwrap();
        let ours = p.encode(&a, &cfg());
        let oracle = match api {
            Api::FeastGrpc => feast_oracle(&p, &a).encode_to_vec(),
            Api::V1Grpc => v1_oracle(&p, &a).encode_to_vec(),
            _ => unreachable!(),
        };
        assert_eq!(ours, oracle, "hand-written encoding differs from prost's");
        ours
    }

    #[test]
    fn feast_grpc_round_trip() {
        let (_d, store) = fixture(10, 5);
        let mut req = feast_req(
            &["user_profile:f002", "fresh:score"],
            vec![(
                "user_id",
                vec![
                    fv(Val::Int64Val(1)),
                    fv(Val::Int32Val(2)),
                    fv(Val::Int64Val(-7)),
                ],
            )],
        );
        req.full_feature_names = true;
        let body = req.encode_to_vec();
        let served = feast_grpc(&store, &body, &cfg(), NOW).unwrap();
        assert_eq!(served.views, ["user_profile", "fresh"]);
        let bytes = check_against_oracle(&store, Api::FeastGrpc, &body);
        assert_eq!(bytes, served.body);
        let r = feast::GetOnlineFeaturesResponse::decode(&*bytes).unwrap();
        assert_eq!(
            r.metadata.unwrap().feature_names.unwrap().val,
            ["user_id", "user_profile__f002", "fresh__score"]
        );
        assert_eq!(r.results.len(), 3);
        assert_eq!(
            r.results[0].values,
            [
                fv(Val::Int64Val(1)),
                fv(Val::Int64Val(2)),
                fv(Val::Int64Val(-7))
            ]
        );
        assert_eq!(r.results[0].statuses, [1, 1, 1]);
        let f2 = &r.results[1];
        assert_eq!(
            f2.values,
            [
                fv(Val::FloatVal(formula(1, 2))),
                fv(Val::FloatVal(formula(2, 2))),
                feast::Value { val: None }
            ]
        );
        assert_eq!(f2.statuses, [1, 1, 3]);
        assert_eq!(
            f2.event_timestamps
                .iter()
                .map(feast::Timestamp::to_micros)
                .collect::<Vec<_>>(),
            [TS_2024, TS_2024, 0]
        );
        let sc = &r.results[2];
        assert_eq!(sc.statuses, [1, 4, 3]);
        assert_eq!(sc.values[0], fv(Val::FloatVal(1.5)));
        assert_eq!(sc.values[1], feast::Value { val: None });

        // Every type, string keys, nulls.
        let body = feast_req(
            &[
                "kitchen:b",
                "kitchen:i32",
                "kitchen:i64",
                "kitchen:f64",
                "kitchen:s",
                "kitchen:y",
                "kitchen:t",
                "kitchen:emb",
                "kitchen:f32",
            ],
            vec![(
                "sku",
                vec![
                    fv(Val::StringVal("a".into())),
                    fv(Val::StringVal("b".into())),
                    fv(Val::StringVal("zz".into())),
                ],
            )],
        )
        .encode_to_vec();
        let bytes = check_against_oracle(&store, Api::FeastGrpc, &body);
        let r = feast::GetOnlineFeaturesResponse::decode(&*bytes).unwrap();
        let first: Vec<Option<Val>> = r.results[1..]
            .iter()
            .map(|c| c.values[0].val.clone())
            .collect();
        assert_eq!(first[0], Some(Val::BoolVal(true)));
        assert_eq!(first[1], Some(Val::Int32Val(-5)));
        assert_eq!(first[2], Some(Val::Int64Val(1 << 40)));
        assert_eq!(first[3], Some(Val::DoubleVal(0.1)));
        assert_eq!(first[4], Some(Val::StringVal(TRICKY.into())));
        assert_eq!(first[5], Some(Val::BytesVal(vec![0, 255, 1])));
        assert_eq!(first[6], Some(Val::UnixTimestampVal(TS_2024 / 1_000_000)));
        let Some(Val::FloatListVal(l)) = &first[7] else {
            panic!("{:?}", first[7])
        };
        assert_eq!(&l.val[..2], &[1.5, -2.0]);
        assert!(l.val[2].is_nan());
        assert_eq!(first[8], Some(Val::FloatVal(4.8)));
        for c in &r.results[1..] {
            assert_eq!(c.statuses, [1, 2, 3]);
            assert_eq!(c.values[1].val, None);
            assert_eq!(c.event_timestamps[0].to_micros(), TS_2024 + 500_000);
        }
    }

    #[test]
    fn feast_grpc_bad_input() {
        let (_d, store) = fixture(3, 5);
        let e = err(Api::FeastGrpc, &store, b"\xff\xff\xff");
        assert!(
            e.to_string()
                .starts_with("malformed GetOnlineFeaturesRequest: "),
            "{e}"
        );
        let mixed = feast_req(
            &["user_profile:f000"],
            vec![(
                "user_id",
                vec![fv(Val::Int64Val(1)), fv(Val::StringVal("x".into()))],
            )],
        );
        let e = err(Api::FeastGrpc, &store, &mixed.encode_to_vec());
        assert!(
            e.to_string()
                .contains("entities['user_id'] value #1 is string_val, but value #0 is int64_val"),
            "{e}"
        );
        let dbl = feast_req(
            &["user_profile:f000"],
            vec![("user_id", vec![fv(Val::DoubleVal(1.0))])],
        );
        let e = err(Api::FeastGrpc, &store, &dbl.encode_to_vec());
        assert!(
            e.to_string().contains("'user_id'] value #0 is double_val"),
            "{e}"
        );
        let mut ctx = feast_req(
            &["user_profile:f000"],
            vec![("user_id", vec![fv(Val::Int64Val(1))])],
        );
        ctx.request_context.insert(
            "val_to_add".into(),
            feast::RepeatedValue {
                val: vec![fv(Val::Int64Val(1))],
            },
        );
        let e = err(Api::FeastGrpc, &store, &ctx.encode_to_vec());
        assert!(
            e.to_string().contains("request_context is not supported"),
            "{e}"
        );
        assert!(e.to_string().contains("val_to_add"), "{e}");
        let mut none = feast_req(&[], vec![("user_id", vec![fv(Val::Int64Val(1))])]);
        none.kind = None;
        let e = err(Api::FeastGrpc, &store, &none.encode_to_vec());
        assert!(
            e.to_string()
                .contains("set either features or feature_service"),
            "{e}"
        );
    }

    pub(crate) fn v1_req(
        features: &[&str],
        entities: Vec<(&str, v1::entity_column::Values)>,
        layout: v1::Layout,
    ) -> v1::GetFeatureVectorRequest {
        v1::GetFeatureVectorRequest {
            selector: Some(v1::get_feature_vector_request::Selector::Features(
                v1::FeatureRefs {
                    refs: features.iter().map(|s| (*s).to_string()).collect(),
                },
            )),
            entities: entities
                .into_iter()
                .map(|(k, v)| (k.to_string(), v1::EntityColumn { values: Some(v) }))
                .collect(),
            include_statuses: true,
            include_event_timestamps: true,
            layout: layout as i32,
        }
    }

    fn v1_oracle(p: &Prepared, a: &Answer) -> v1::GetFeatureVectorResponse {
        use v1::feature_column::Values as V;
        let n = a.num_entities;
        let f = p.plan.columns.len();
        let mut resp = v1::GetFeatureVectorResponse {
            feature_names: p.plan.columns.iter().map(|c| c.reference.clone()).collect(),
            num_entities: n as u32,
            columns: vec![],
            dense: None,
        };
        if p.v1.dense {
            let mut m = v1::DenseMatrix {
                rows: n as u32,
                cols: f as u32,
                ..Default::default()
            };
            for e in 0..n {
                for c in 0..f {
                    let (x, s, t) = a.cell_f32(&p.plan, c, e);
                    m.values.extend_from_slice(&x.to_le_bytes());
                    if p.v1.include_statuses {
                        m.statuses.push(s as u8);
                    }
                    if p.v1.include_event_timestamps {
                        m.event_timestamps.extend_from_slice(&t.to_le_bytes());
                    }
                }
            }
            resp.dense = Some(m);
            return resp;
        }
        for (c, col) in p.plan.columns.iter().enumerate() {
            let cells: Vec<_> = (0..n).map(|i| a.cell(&p.plan, c, i)).collect();
            let dim = col.dim as usize;
            macro_rules! typed {
                ($variant:ident, $col:ident, $pat:pat => $e:expr, $zero:expr) => {
                    V::$variant(v1::$col {
                        values: cells
                            .iter()
                            .map(|c| match c.value {
                                $pat => $e,
                                _ => $zero,
                            })
                            .collect(),
                    })
                };
            }
            let values = match col.dtype {
                DType::Bool => typed!(BoolValues, BoolColumn, ValueRef::Bool(b) => b, false),
                DType::Int32 => typed!(Int32Values, Int32Column, ValueRef::Int32(x) => x, 0),
                DType::Int64 => typed!(Int64Values, Int64Column, ValueRef::Int64(x) => x, 0),
                DType::Float32 => typed!(FloatValues, FloatColumn, ValueRef::Float32(x) => x, 0.0),
                DType::Float64 => {
                    typed!(DoubleValues, DoubleColumn, ValueRef::Float64(x) => x, 0.0)
                }
                DType::String => {
                    typed!(StringValues, StringColumn, ValueRef::Str(b) => String::from_utf8_lossy(b).into_owned(), String::new())
                }
                DType::Bytes => {
                    typed!(BytesValues, BytesColumn, ValueRef::Bytes(b) => b.to_vec(), Vec::new())
                }
                DType::Timestamp => {
                    typed!(TimestampValues, TimestampColumn, ValueRef::Timestamp(x) => x, 0)
                }
                DType::Float32Array => V::FloatArrayValues(v1::FloatArrayColumn {
                    dim: dim as u32,
                    values: cells
                        .iter()
                        .flat_map(|c| match c.value {
                            ValueRef::Float32Array(b) => b
                                .chunks_exact(4)
                                .map(|x| f32::from_le_bytes(x.try_into().unwrap()))
                                .collect(),
                            _ => vec![0.0; dim],
                        })
                        .collect(),
                }),
            };
            resp.columns.push(v1::FeatureColumn {
                values: Some(values),
                statuses: if p.v1.include_statuses {
                    cells.iter().map(|c| c.status as u8).collect()
                } else {
                    vec![]
                },
                event_timestamps: if p.v1.include_event_timestamps {
                    cells.iter().map(|c| c.event_ts).collect()
                } else {
                    vec![]
                },
            });
        }
        resp
    }

    #[test]
    fn v1_grpc_columns_and_dense() {
        use v1::entity_column::Values as E;
        let (_d, store) = fixture(10, 5);
        let all = [
            "kitchen:b",
            "kitchen:i32",
            "kitchen:i64",
            "kitchen:f64",
            "kitchen:s",
            "kitchen:y",
            "kitchen:t",
            "kitchen:emb",
            "kitchen:f32",
        ];
        let skus = || {
            E::StringValues(v1::StringColumn {
                values: vec!["a".into(), "b".into(), "zz".into()],
            })
        };
        for (st, ts) in [(true, true), (false, false), (true, false)] {
            let mut req = v1_req(&all, vec![("sku", skus())], v1::Layout::Columns);
            req.include_statuses = st;
            req.include_event_timestamps = ts;
            let bytes = check_against_oracle(&store, Api::V1Grpc, &req.encode_to_vec());
            let r = v1::GetFeatureVectorResponse::decode(&*bytes).unwrap();
            assert_eq!(r.num_entities, 3);
            assert_eq!(r.feature_names[4], "kitchen:s");
            assert_eq!(r.columns.len(), 9);
            assert_eq!(
                r.columns[0].statuses,
                if st { vec![1, 2, 3] } else { vec![] }
            );
            if ts {
                assert_eq!(
                    r.columns[0].event_timestamps,
                    [TS_2024 + 500_000, TS_2024, 0]
                );
            }
            assert_eq!(
                r.columns[4].values,
                Some(v1::feature_column::Values::StringValues(v1::StringColumn {
                    values: vec![TRICKY.into(), String::new(), String::new()]
                }))
            );
            let Some(v1::feature_column::Values::FloatArrayValues(emb)) = &r.columns[7].values
            else {
                panic!()
            };
            assert_eq!(emb.dim, 3);
            assert_eq!(emb.values.len(), 9);
            assert_eq!(&emb.values[3..], &[0.0; 6]);
        }

        let ids = || {
            E::Int64Values(v1::Int64Column {
                values: vec![3, 99, 1],
            })
        };
        let req = v1_req(
            &["user_profile:f000", "fresh:score", "user_profile:f004"],
            vec![("user_id", ids())],
            v1::Layout::Dense,
        );
        let body = req.encode_to_vec();
        let bytes = check_against_oracle(&store, Api::V1Grpc, &body);
        let served = v1_grpc(&store, &body, &cfg(), NOW).unwrap();
        assert_eq!(served.body, bytes);
        assert_eq!(served.views, ["user_profile", "fresh"]);
        let r = v1::GetFeatureVectorResponse::decode(&*bytes).unwrap();
        let m = r.dense.unwrap();
        assert_eq!((m.rows, m.cols), (3, 3));
        let vals: Vec<f32> = m
            .values
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(vals[0].to_bits(), formula(3, 0).to_bits());
        assert!(vals[1].is_nan());
        assert_eq!(vals[2].to_bits(), formula(3, 4).to_bits());
        assert!(vals[3..6].iter().all(|x| x.is_nan()));
        assert_eq!(vals[6..], [formula(1, 0), 1.5, formula(1, 4)]);
        assert_eq!(m.statuses, [1, 3, 1, 3, 3, 3, 1, 1, 1]);
        assert_eq!(m.event_timestamps.len(), 9 * 8);
        let mut no_st = req.clone();
        no_st.include_statuses = false;
        no_st.include_event_timestamps = false;
        let bytes = check_against_oracle(&store, Api::V1Grpc, &no_st.encode_to_vec());
        let m = v1::GetFeatureVectorResponse::decode(&*bytes)
            .unwrap()
            .dense
            .unwrap();
        assert!(m.statuses.is_empty() && m.event_timestamps.is_empty());

        // Dense refuses non-numeric features, naming the feature.
        let bad = v1_req(
            &["kitchen:f32", "kitchen:s"],
            vec![("sku", skus())],
            v1::Layout::Dense,
        );
        let e = err(Api::V1Grpc, &store, &bad.encode_to_vec());
        assert!(matches!(e, CoreError::InvalidArgument(_)));
        assert!(
            e.to_string()
                .contains("feature 'kitchen:s' has type string"),
            "{e}"
        );
        let e = err(Api::V1Grpc, &store, b"\x0a");
        assert!(
            e.to_string()
                .starts_with("malformed GetFeatureVectorRequest"),
            "{e}"
        );
        let mut empty = v1_req(&["user_profile:f000"], vec![], v1::Layout::Columns);
        empty
            .entities
            .insert("user_id".into(), v1::EntityColumn { values: None });
        let e = err(Api::V1Grpc, &store, &empty.encode_to_vec());
        assert!(
            e.to_string().contains("entities['user_id'] has no values"),
            "{e}"
        );
    }

    #[test]
    fn v1_http_shapes() {
        let (_d, store) = fixture(10, 5);
        let s = v1_http(
            &store,
            br#"{"features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2]},"include_statuses":true,"include_event_timestamps":true}"#,
            &cfg(),
            NOW,
        )
        .unwrap();
        let expected = concat!(
            r#"{"feature_names":["user_profile:f001","fresh:score"],"num_entities":2,"columns":["#,
            r#"{"values":[4.800000190734863,7.900000095367432],"statuses":["PRESENT","PRESENT"],"event_timestamps":[1704067200000000,1704067200000000]},"#,
            r#"{"values":[1.5,null],"statuses":["PRESENT","OUTSIDE_MAX_AGE"],"event_timestamps":[1704153590000000,1704146400000000]}"#,
            "]}"
        );
        assert_eq!(String::from_utf8(s.body).unwrap(), expected);
        let s = v1_http(
            &store,
            br#"{"features":["user_profile:f001","fresh:score"],"entities":{"user_id":[1,2]},"layout":"dense","include_statuses":true}"#,
            &ServeConfig {
                json_float32_shortest: true,
                ..cfg()
            },
            NOW,
        )
        .unwrap();
        let expected = concat!(
            r#"{"feature_names":["user_profile:f001","fresh:score"],"num_entities":2,"#,
            r#""dense":{"rows":2,"cols":2,"values":[[4.8,1.5],[7.9,null]],"#,
            r#""statuses":[["PRESENT","PRESENT"],["PRESENT","OUTSIDE_MAX_AGE"]]}}"#,
        );
        assert_eq!(String::from_utf8(s.body).unwrap(), expected);
        let s = v1_http(
            &store,
            br#"{"features":["kitchen:s","kitchen:emb"],"entities":{"sku":["a"]}}"#,
            &cfg(),
            NOW,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&s.body).unwrap();
        assert_eq!(v["columns"][0]["values"][0], TRICKY);
        assert_eq!(
            v["columns"][1]["values"][0],
            serde_json::json!([1.5, -2.0, null])
        );
        assert!(v["columns"][0].get("statuses").is_none());
        let e = err(
            Api::V1Http,
            &store,
            br#"{"features":["kitchen:emb"],"entities":{"sku":["a"]},"layout":"dense"}"#,
        );
        assert!(
            e.to_string()
                .contains("'kitchen:emb' has type float32_array"),
            "{e}"
        );
    }

    /// W2 encode figures: `cargo test --release -p rust_core w2_encode_timing -- --ignored
    /// --nocapture`.
    #[test]
    #[ignore = "timing; run in release with --ignored --nocapture"]
    fn w2_encode_timing() {
        use std::time::Instant;
        let (_d, store) = fixture(20_000, 200);
        let feats: Vec<String> = (0..200)
            .map(|i| format!("\"user_profile:f{i:03}\""))
            .collect();
        let ids: Vec<String> = (0..100).map(|i| (i * 197 % 20_000).to_string()).collect();
        let json_body = format!(
            r#"{{"features":[{}],"entities":{{"user_id":[{}]}}}}"#,
            feats.join(","),
            ids.join(",")
        );
        let refs: Vec<String> = (0..200).map(|i| format!("user_profile:f{i:03}")).collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let idv: Vec<i64> = (0..100).map(|i| i * 197 % 20_000).collect();
        let feast_body = feast_req(
            &refs,
            vec![(
                "user_id",
                idv.iter().map(|&i| fv(Val::Int64Val(i))).collect(),
            )],
        )
        .encode_to_vec();
        let mut dense = v1_req(
            &refs,
            vec![(
                "user_id",
                v1::entity_column::Values::Int64Values(v1::Int64Column {
                    values: idv.clone(),
                }),
            )],
            v1::Layout::Dense,
        );
        dense.include_event_timestamps = false;
        let dense_body = dense.encode_to_vec();
        let short = ServeConfig {
            json_float32_shortest: true,
            ..cfg()
        };
        let time = |label: &str, f: &mut dyn FnMut() -> usize| {
            let mut v = Vec::new();
            let mut size = 0;
            for _ in 0..300 {
                let t = Instant::now();
                size = f();
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
            v.sort_by(f64::total_cmp);
            println!(
                "{label:<44} median {:>8.1} us  min {:>8.1} us  size {size} B",
                v[v.len() / 2],
                v[0]
            );
        };
        let cases: [(&str, Api, &[u8], ServeConfig); 5] = [
            (
                "Feast JSON, float32 widened",
                Api::FeastHttp,
                json_body.as_bytes(),
                cfg(),
            ),
            (
                "Feast JSON, float32 shortest",
                Api::FeastHttp,
                json_body.as_bytes(),
                short,
            ),
            ("Feast gRPC", Api::FeastGrpc, &feast_body, cfg()),
            ("v1 gRPC dense (+statuses)", Api::V1Grpc, &dense_body, cfg()),
            ("v1 HTTP columns", Api::V1Http, json_body.as_bytes(), cfg()),
        ];
        for (label, api, body, c) in cases {
            let p = prepare(&store, api, body, &c).unwrap();
            let a = p.execute(&store, &c, NOW).unwrap();
            time(&format!("encode {label}"), &mut || p.encode(&a, &c).len());
            if api == Api::FeastGrpc {
                time("encode Feast gRPC via prost structs (ref)", &mut || {
                    feast_oracle(&p, &a).encode_to_vec().len()
                });
            }
            time(&format!("parse+plan {label}"), &mut || {
                prepare(&store, api, body, &c).unwrap().num_features()
            });
            time(&format!("execute (hot) {label}"), &mut || {
                p.execute(&store, &c, NOW).unwrap().num_entities
            });
        }
        // Float formatting alone, 20,000 W2 values: ryu vs zmij.
        let vals: Vec<f32> = idv
            .iter()
            .flat_map(|&u| (0..200).map(move |f| formula(u, f)))
            .collect();
        let mut out = Vec::with_capacity(1 << 20);
        time("ryu f64 (widened) x20000", &mut || {
            out.clear();
            for x in &vals {
                out.extend_from_slice(ryu::Buffer::new().format_finite(f64::from(*x)).as_bytes());
                out.push(b',');
            }
            out.len()
        });
        time("zmij f64 (widened) x20000", &mut || {
            out.clear();
            for x in &vals {
                out.extend_from_slice(zmij::Buffer::new().format_finite(f64::from(*x)).as_bytes());
                out.push(b',');
            }
            out.len()
        });
        time("ryu f32 (shortest) x20000", &mut || {
            out.clear();
            for x in &vals {
                out.extend_from_slice(ryu::Buffer::new().format_finite(*x).as_bytes());
                out.push(b',');
            }
            out.len()
        });
        time("zmij f32 (shortest) x20000", &mut || {
            out.clear();
            for x in &vals {
                out.extend_from_slice(zmij::Buffer::new().format_finite(*x).as_bytes());
                out.push(b',');
            }
            out.len()
        });
    }
}
