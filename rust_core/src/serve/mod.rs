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
//! Production calls one function, [`serve`]`(store, api, body, config, caller)`; a router
//! calls [`prepare`] on its own catalog, which holds no rows. The steps, one file each:
//!
//! | step | file |
//! |---|---|
//! | parse a JSON body (Feast HTTP, v1 HTTP) | `serve/request_json.rs` |
//! | parse a protobuf body (Feast gRPC, v1 gRPC, a router's `GetCellsRequest`) | `serve/request_proto.rs` |
//! | check scope and entities, plan ([`prepare`]), read ([`Prepared::execute`]) | here, `query.rs` |
//! | encode JSON ([`Prepared::encode`]) | `serve/encode_json.rs` (text primitives: `serve/json.rs`) |
//! | encode protobuf | `serve/encode_proto.rs` (wire writer: `serve/pb.rs`) |
//! | encode raw cells for a router | `cells_codec.rs` |
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

mod encode_json;
mod encode_proto;
pub mod feature_log;
mod json;
pub mod on_demand;
mod pb;
mod request_json;
mod request_proto;
#[cfg(test)]
pub(crate) mod tests;

use crate::catalog::Catalog;
use crate::cells_codec;
use crate::error::Result;
use crate::invalid;
use crate::partition::ShardCheck;
use crate::query::{self, Answer, CellSource, Entities, Limits, Plan, Selector};
use crate::scope::Scope;
use crate::store::Store;
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// Serving options that are not part of a request.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServeConfig {
    pub limits: Limits,
    /// JSON: write float32 as its shortest text (`4.8`) instead of widened to double
    /// (`4.800000190734863`). Both parse back to the same float32.
    pub json_float32_shortest: bool,
    /// Feast JSON: at most this many threads encode a large answer (ranges of its columns;
    /// `encode_json::encode_threads`); 0 and 1: the calling thread alone.
    pub encode_threads: usize,
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
            encode_threads: 1,
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
    /// ([`crate::cells_codec`]).
    Cells,
}

/// Who asks, and when: what a request is checked against besides its body.
#[derive(Debug, Clone, Copy, Default)]
pub struct Caller<'a> {
    /// The caller's read scope, checked before the catalog is consulted; `None` reads all.
    pub scope: Option<&'a Scope>,
    /// On a node that owns one shard of the stream-sourced views' keys: that shard. A request
    /// for an entity of another shard is refused.
    pub shard: Option<&'a ShardCheck>,
    /// The time of the request (us since the epoch), against which TTLs are checked.
    pub now_us: i64,
    /// Served-feature logging (`serve/feature_log.rs`): the log and this request's id.
    pub log: Option<&'a feature_log::LogTag>,
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
struct V1Opts {
    include_statuses: bool,
    include_event_timestamps: bool,
    dense: bool,
}

/// A request body as parsed, before planning.
struct Request {
    sel: Selector,
    entities: Entities,
    full_feature_names: bool,
    v1: V1Opts,
    /// A router's part of a feature-service request: the service, which the caller's scope is
    /// checked against.
    part_of_service: Option<String>,
}

impl Request {
    fn new(sel: Selector, entities: Entities) -> Self {
        Self {
            sel,
            entities,
            full_feature_names: false,
            v1: V1Opts::default(),
            part_of_service: None,
        }
    }
}

/// A parsed and planned request, not yet executed.
pub struct Prepared {
    api: Api,
    plan: Arc<Plan>,
    pub(crate) entities: Entities,
    /// The feature service the request named, if any (a router passes it on to the shards).
    pub(crate) service: Option<String>,
    /// The feature service whose log the answer goes to: the one named, or the one a router's
    /// part belongs to (`serve/feature_log.rs`).
    pub(crate) log_service: Option<String>,
    full_feature_names: bool,
    v1: V1Opts,
    /// Entity columns answered beside the features: the join keys, in request order (request
    /// fields of on-demand views are not answered, as in Feast). `None`: all of them.
    answered_keys: Option<Vec<usize>>,
    num_key_columns: usize,
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

    /// The entity columns the Feast APIs answer: the join keys of the request's views.
    fn key_columns(&self) -> impl Iterator<Item = &(String, crate::key::KeyColumn)> {
        let all = &self.entities.columns;
        let (whole, some) = match &self.answered_keys {
            None => (&all[..], &[][..]),
            Some(idx) => (&[][..], &idx[..]),
        };
        whole.iter().chain(some.iter().map(|&c| &all[c]))
    }

    /// Reads the rows of every view involved (on a sharded node, refusing entities another
    /// shard owns).
    pub fn execute(
        &self,
        store: &Store,
        now_us: i64,
        shard: Option<&ShardCheck>,
    ) -> Result<Answer> {
        query::execute(store, &self.plan, &self.entities, now_us, shard)
    }

    /// Encodes the cells of this request (read locally, `answer.cells(plan)`, or gathered from
    /// shards) as the API's response body.
    #[must_use]
    pub fn encode(&self, cells: &(impl CellSource + Sync), cfg: &ServeConfig) -> Vec<u8> {
        let shortest = cfg.json_float32_shortest;
        match self.api {
            Api::FeastHttp => encode_json::feast(self, cells, shortest, cfg.encode_threads),
            Api::FeastGrpc => encode_proto::feast(self, cells),
            Api::V1Grpc if self.v1.dense => encode_proto::v1_dense(self, cells),
            Api::V1Grpc => encode_proto::v1_columns(self, cells),
            Api::V1Http if self.v1.dense => encode_json::v1_dense(self, cells, shortest),
            Api::V1Http => encode_json::v1_columns(self, cells, shortest),
            Api::Cells => cells_codec::encode(&self.plan, cells),
        }
    }

    /// Counts ([`crate::stats`]), logs (when the request's service is logged,
    /// [`feature_log`]) and encodes the answer read for this request.
    pub(crate) fn finish(
        &self,
        store: &Store,
        answer: &Answer,
        cfg: &ServeConfig,
        log: Option<&feature_log::LogTag>,
    ) -> Served {
        store.serve_stats.record(
            self.views().zip(answer.view_stats(&self.plan)),
            self.num_entities(),
            self.num_features(),
        );
        let cells = answer.cells(&self.plan);
        if let Some(tag) = log {
            feature_log::FeatureLog::append(tag, self, &cells);
        }
        Served {
            body: self.encode(&cells, cfg),
            views: self.views().map(str::to_string).collect(),
            num_entities: self.num_entities(),
            num_features: self.num_features(),
        }
    }

    /// The output name of feature column `c` in the Feast APIs.
    fn feast_name(&self, c: usize) -> Cow<'_, str> {
        let col = &self.plan.columns[c];
        if self.full_feature_names {
            let view = &self.plan.views[col.view].def.name;
            format!("{view}__{}", col.feature).into()
        } else {
            col.feature.as_str().into()
        }
    }
}

/// Parses `body` as a request of `api`, checks it against the caller's `scope` (before the
/// catalog is consulted) and plans it against `cat`. Nothing is read yet.
pub fn prepare(
    cat: &Catalog,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    scope: Option<&Scope>,
) -> Result<Prepared> {
    let req = match api {
        Api::FeastHttp | Api::V1Http => request_json::parse(api, body)?,
        Api::FeastGrpc => request_proto::parse_feast(body)?,
        Api::V1Grpc => request_proto::parse_v1(body)?,
        Api::Cells => request_proto::parse_cells(body)?,
    };
    plan_request(cat, api, req, cfg, scope)
}

/// The features of given entities (a vector search's hits, `crate::search`) as a v1
/// request of `api` (`V1Http` or `V1Grpc`) asking for `sel`, planned like a parsed one.
pub fn prepare_v1_for(
    cat: &Catalog,
    api: Api,
    sel: Selector,
    entities: Entities,
    (include_statuses, include_event_timestamps, dense): (bool, bool, bool),
    cfg: &ServeConfig,
    scope: Option<&Scope>,
) -> Result<Prepared> {
    let req = Request {
        v1: V1Opts {
            include_statuses,
            include_event_timestamps,
            dense,
        },
        ..Request::new(sel, entities)
    };
    plan_request(cat, api, req, cfg, scope)
}

fn plan_request(
    cat: &Catalog,
    api: Api,
    req: Request,
    cfg: &ServeConfig,
    scope: Option<&Scope>,
) -> Result<Prepared> {
    if let Some(scope) = scope {
        match &req.part_of_service {
            Some(service) => scope.check_service_part(cat, service, &req.sel)?,
            None => scope.check(cat, &req.sel)?,
        }
    }
    req.entities.check(cfg.limits)?;
    // A column that cannot be a join key is only accepted as some on-demand view's request
    // field; otherwise it is answered as before there were any.
    for (name, col) in &req.entities.values {
        let is_field = cat.views.iter().any(|v| {
            v.on_demand
                .as_ref()
                .is_some_and(|od| od.request_fields.iter().any(|(f, _)| f == name))
        });
        if !is_field {
            return Err(invalid!("{}", col.not_a_key));
        }
    }
    let names: Vec<&str> = req
        .entities
        .columns
        .iter()
        .map(|c| c.0.as_str())
        .chain(req.entities.values.iter().map(|c| c.0.as_str()))
        .collect();
    let plan = query::plan_cached(cat, &req.sel, &names, cfg.limits)?;
    let n_keys = req.entities.columns.len();
    for pv in &plan.views {
        if let Some(&c) = pv.key_columns.iter().find(|&&c| c >= n_keys) {
            return Err(invalid!("{}", req.entities.values[c - n_keys].1.not_a_key));
        }
    }
    if req.v1.dense {
        if let Some(c) = plan.columns.iter().find(|c| !c.dtype.is_dense_compatible()) {
            return Err(invalid!(
                "feature '{}' has type {} and cannot be returned in the dense layout (only \
                 bool, int32, int64, float32 and float64 features can); use the columns layout",
                c.reference,
                c.dtype.name()
            ));
        }
    }
    let service = match req.sel {
        Selector::Service(s) => Some(s),
        Selector::Refs(_) => None,
    };
    let log_service = service.clone().or(req.part_of_service);
    let answered_keys = (!plan.on_demand.is_empty()).then(|| {
        (0..n_keys)
            .filter(|c| plan.views.iter().any(|pv| pv.key_columns.contains(c)))
            .collect::<Vec<_>>()
    });
    Ok(Prepared {
        api,
        num_key_columns: answered_keys.as_ref().map_or(n_keys, Vec::len),
        answered_keys,
        plan,
        entities: req.entities,
        service,
        log_service,
        full_feature_names: req.full_feature_names,
        v1: req.v1,
    })
}

/// The serving path: parses, checks and plans ([`prepare`]), reads ([`Prepared::execute`]),
/// counts ([`crate::stats`]) and encodes ([`Prepared::encode`]) one request.
pub fn serve(
    store: &Store,
    api: Api,
    body: &[u8],
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Served> {
    match on_demand::start(store, api, body, cfg, caller)? {
        on_demand::Started::Done(served) => Ok(served),
        on_demand::Started::Pending(p) => Err(crate::error::CoreError::InvalidArgument(format!(
            "the request names on-demand feature views ({}), whose transforms only a server \
             runs (serve_start)",
            p.views().join(", ")
        ))),
    }
}
