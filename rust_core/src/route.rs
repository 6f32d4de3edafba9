//! Routing one request over a sharded cluster (`feature-serving route`).
//!
//! A router holds the registry (a [`Catalog`] without rows) and the cluster's shape. For a
//! request of any API it:
//!
//! 1. parses and plans it exactly as a node would ([`prepare`]);
//! 2. splits it: the plan's views are grouped by how their entities are routed (views with the
//!    same join keys share an owner per entity row; views without a stream source are not
//!    sharded and ride along with the first group), and every group's rows are split by owning
//!    shard (`murmur2(entity key) % partitions % shards`, as [`ShardCheck`] computes it on the
//!    node). Each (group, shard) becomes one [`Part`]: a `GetCellsRequest` with the group's
//!    features and that shard's rows;
//! 3. after the frontend has sent the parts to replicas of their shards, gathers the answers
//!    (raw cells, [`crate::cells_codec`]) back into request order and encodes the response
//!    with the same encoders a node uses ([`Prepared::encode`]). The result is byte for byte
//!    what a single node holding every row would answer.
//!
//! The router checks every column's type against its own registry, so a node running another
//! registry is an error, never a misread value.
//!
//! Request-time on-demand views are computed by the router, not by the nodes: their inputs may
//! come from views keyed by different entities and so from different shards. Their stored
//! inputs are fetched as hidden columns of the parts; [`Routed::start`] then hands back a
//! [`RoutedPending`] that gives the transform its inputs and encodes the answer with the
//! outputs, the same protocol as a node's [`crate::serve::on_demand::Pending`].

use crate::arrow_io;
use crate::catalog::Catalog;
use crate::cells_codec::PartCells;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::KeyColumn;
use crate::partition::murmur2;
use crate::proto::v1;
use crate::query::{
    dense_f32, encode_keys, Answer, Cell, CellCol, CellSource, Cells, OutColumn, PlanOnDemand,
    RowState,
};
use crate::scope::Scope;
use crate::serve::feature_log::{FeatureLog, LogTag};
use crate::serve::{prepare, Api, Prepared, ServeConfig};
use crate::types::{DType, KeyType, Status};
use ahash::AHashMap;
use arrow::array::{ArrayRef, StructArray};
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The cluster as a router sees it.
#[derive(Debug)]
pub struct Router {
    pub catalog: Arc<Catalog>,
    pub shard_count: u32,
    /// Sharded views (those with a stream source) -> partition count of their topic.
    pub partitions: AHashMap<String, u32>,
}

/// One sub-request: a shard's rows of one group of views.
#[derive(Debug)]
pub struct Part {
    pub shard: u32,
    /// A serialized `GetCellsRequest`.
    pub body: Vec<u8>,
}

/// A request split into parts, waiting for their answers.
#[derive(Debug)]
pub struct Routed {
    prepared: Prepared,
    /// Per column of the plan: (group, index among the group's columns); `usize::MAX` for
    /// the columns of on-demand views.
    col_map: Vec<(usize, usize)>,
    /// Per on-demand view of the plan, per input: (group, index among the group's columns).
    od_inputs: Vec<Vec<(usize, usize)>>,
    /// Per on-demand view of the plan, its request fields.
    request: Vec<Vec<ArrayRef>>,
    /// Per group, the type and width of each column its parts answer.
    group_shapes: Vec<Vec<(DType, u32)>>,
    /// Per group, per entity: (part, row within the part).
    rows: Vec<Vec<(u32, u32)>>,
    /// Per part: its group and row count.
    part_shape: Vec<(usize, usize)>,
    pub parts: Vec<Part>,
}

impl Router {
    /// `catalog`: compiled from the registry; `partitions`: sharded views and their topics'
    /// partition counts.
    pub fn new(
        catalog: Arc<Catalog>,
        shard_count: u32,
        partitions: AHashMap<String, u32>,
    ) -> Result<Self> {
        if shard_count == 0 {
            return Err(invalid!("the shard count must be at least 1"));
        }
        if let Some((v, _)) = partitions.iter().find(|(_, p)| **p == 0) {
            return Err(invalid!(
                "view '{v}': the topic partition count must be at least 1"
            ));
        }
        if let Some(v) = partitions.keys().find(|v| catalog.view_index(v).is_err()) {
            return Err(invalid!("sharded view '{v}' is not in the registry"));
        }
        Ok(Self {
            catalog,
            shard_count,
            partitions,
        })
    }

    /// Parses, plans and splits a request. `spread` picks the shard that answers a request
    /// touching no sharded view (callers pass a counter, so such requests spread over shards).
    pub fn route(
        &self,
        api: Api,
        body: &[u8],
        cfg: &ServeConfig,
        scope: Option<&Scope>,
        spread: usize,
    ) -> Result<Routed> {
        if api == Api::Cells {
            return Err(invalid!("a router does not answer GetCells; ask a node"));
        }
        let prepared = prepare(&self.catalog, api, body, cfg, scope)?;
        let plan = prepared.plan();
        let entities = &prepared.entities;
        let n = prepared.num_entities();
        // Request fields are checked before anything is asked of a shard.
        let request = plan
            .on_demand
            .iter()
            .map(|od| {
                let view = &plan.views[od.view].def.name;
                od.request
                    .iter()
                    .map(|(name, dtype)| arrow_io::request_column(entities, name, *dtype, view))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;

        // Group the plan's stored views by routing: same join-key columns and partition
        // count. On-demand views have no rows on the shards.
        let mut groups: Vec<Group> = Vec::new();
        let mut loose = Vec::new();
        for (v, pv) in plan.views.iter().enumerate() {
            if pv.def.on_demand.is_some() {
                continue;
            }
            let Some(&parts) = self.partitions.get(&pv.def.name) else {
                loose.push(v);
                continue;
            };
            let sig = (pv.key_columns.clone(), key_types(&pv.def.join_keys), parts);
            if let Some(g) = groups.iter_mut().find(|g| g.sig.as_ref() == Some(&sig)) {
                g.views.push(v);
            } else {
                groups.push(Group {
                    sig: Some(sig),
                    views: vec![v],
                });
            }
        }
        if groups.is_empty() {
            groups.push(Group {
                sig: None,
                views: loose,
            });
        } else {
            groups[0].views.extend(loose);
        }
        let mut view_group = vec![usize::MAX; plan.views.len()];
        for (g, group) in groups.iter().enumerate() {
            for &v in &group.views {
                view_group[v] = g;
            }
        }

        // The features each group asks its shards for: the answered columns of its views,
        // then the on-demand views' inputs among them (each reference once).
        let mut group_refs: Vec<Vec<String>> = vec![Vec::new(); groups.len()];
        let mut group_shapes: Vec<Vec<(DType, u32)>> = vec![Vec::new(); groups.len()];
        let mut placed: AHashMap<String, (usize, usize)> = AHashMap::new();
        let mut place = |col: &OutColumn, reference: String| {
            let g = view_group[col.view];
            *placed.entry(reference).or_insert_with_key(|r| {
                group_refs[g].push(r.clone());
                group_shapes[g].push((col.dtype, col.dim));
                (g, group_refs[g].len() - 1)
            })
        };
        let col_map: Vec<(usize, usize)> = plan
            .columns
            .iter()
            .map(|col| {
                if view_group[col.view] == usize::MAX {
                    (usize::MAX, 0) // an on-demand view's output: the router computes it
                } else {
                    place(
                        col,
                        format!("{}:{}", plan.views[col.view].def.name, col.feature),
                    )
                }
            })
            .collect();
        let od_inputs: Vec<Vec<(usize, usize)>> = plan
            .on_demand
            .iter()
            .map(|od| {
                od.inputs
                    .iter()
                    .map(|c| place(c, c.reference.clone()))
                    .collect()
            })
            .collect();

        let service = prepared.service.clone().unwrap_or_default();
        let shards = self.shard_count as usize;
        let mut rows = Vec::with_capacity(groups.len());
        let mut parts = Vec::new();
        let mut part_shape = Vec::new();
        for (g, group) in groups.iter().enumerate() {
            let owners: Vec<usize> = match &group.sig {
                Some((_, _, n_parts)) => {
                    let pv = &plan.views[group.views[0]];
                    encode_keys(&pv.def, &pv.key_columns, entities, n)?
                        .iter()
                        .map(|k| {
                            let p =
                                (murmur2(k.get(4..).unwrap_or_default()) & 0x7fff_ffff) % n_parts;
                            (p % self.shard_count) as usize
                        })
                        .collect()
                }
                None => vec![spread % shards; n],
            };
            let mut by_shard: Vec<Vec<usize>> = vec![Vec::new(); shards];
            for (i, &o) in owners.iter().enumerate() {
                by_shard[o].push(i);
            }
            let mut key_cols: Vec<usize> = group
                .views
                .iter()
                .flat_map(|&v| plan.views[v].key_columns.iter().copied())
                .collect();
            key_cols.sort_unstable();
            key_cols.dedup();
            // The references are the same in every part of the group: encoded once. Protobuf
            // messages concatenate (repeated fields and map entries append), so each part is
            // these bytes followed by the encoding of its own entities.
            let refs = v1::GetCellsRequest {
                refs: group_refs[g].clone(),
                feature_service: service.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut where_ = vec![(0u32, 0u32); n];
            for (shard, members) in by_shard.iter().enumerate() {
                // A request of on-demand views over request fields only asks no shard.
                if members.is_empty() || group_refs[g].is_empty() {
                    continue;
                }
                let part = parts.len() as u32;
                for (r, &i) in members.iter().enumerate() {
                    where_[i] = (part, r as u32);
                }
                let rows_of_part = v1::GetCellsRequest {
                    entities: key_cols
                        .iter()
                        .map(|&k| {
                            let (name, col) = &entities.columns[k];
                            (name.clone(), entity_column(col, members))
                        })
                        .collect::<BTreeMap<_, _>>(),
                    ..Default::default()
                };
                let mut body = Vec::with_capacity(refs.len() + rows_of_part.encoded_len());
                body.extend_from_slice(&refs);
                rows_of_part.encode(&mut body).expect("a Vec grows");
                parts.push(Part {
                    shard: shard as u32,
                    body,
                });
                part_shape.push((g, members.len()));
            }
            rows.push(where_);
        }
        Ok(Routed {
            prepared,
            col_map,
            od_inputs,
            request,
            group_shapes,
            rows,
            part_shape,
            parts,
        })
    }
}

struct Group {
    /// Routing signature of a sharded group: join-key columns, their types, partitions.
    sig: Option<(Vec<usize>, Vec<KeyType>, u32)>,
    views: Vec<usize>,
}

fn key_types(join_keys: &[(String, KeyType)]) -> Vec<KeyType> {
    join_keys.iter().map(|(_, t)| *t).collect()
}

/// Rows `members` of a request's entity column, as a `GetCellsRequest` column.
fn entity_column(col: &KeyColumn, members: &[usize]) -> v1::EntityColumn {
    use v1::entity_column::Values;
    fn pick<T: Clone>(v: &[T], members: &[usize]) -> Vec<T> {
        members.iter().map(|&i| v[i].clone()).collect()
    }
    let values = match col {
        KeyColumn::Int64(v) => Values::Int64Values(v1::Int64Column {
            values: pick(v, members),
        }),
        KeyColumn::Int32(v) => Values::Int32Values(v1::Int32Column {
            values: pick(v, members),
        }),
        KeyColumn::Str(v) => Values::StringValues(v1::StringColumn {
            values: pick(v, members),
        }),
        KeyColumn::Bytes(v) => Values::BytesValues(v1::BytesColumn {
            values: pick(v, members),
        }),
    };
    v1::EntityColumn {
        values: Some(values),
    }
}

impl Routed {
    #[must_use]
    pub fn prepared(&self) -> &Prepared {
        &self.prepared
    }

    /// Gathers the parts' answers (`answers[i]` answers `parts[i]`) and encodes the response
    /// of a request without on-demand views (see [`RoutedPending`]).
    pub fn merge(&self, answers: &[&[u8]], cfg: &ServeConfig) -> Result<Vec<u8>> {
        self.merge_logged(answers, cfg, None)
    }

    /// [`Routed::merge`], logging the merged answer when its service is logged (a router
    /// started with `--log-at router`, `serve/feature_log.rs`).
    pub fn merge_logged(
        &self,
        answers: &[&[u8]],
        cfg: &ServeConfig,
        log: Option<&LogTag>,
    ) -> Result<Vec<u8>> {
        if let Some(od) = self.prepared.plan().on_demand.first() {
            return Err(CoreError::Transform(format!(
                "on-demand feature view '{}' has no output yet",
                self.prepared.plan().views[od.view].def.name
            )));
        }
        let gathered = self.gather(answers)?;
        if let Some(tag) = log {
            FeatureLog::append(tag, &self.prepared, &gathered);
        }
        Ok(self.prepared.encode(&gathered, cfg))
    }

    /// Whether the request names request-time on-demand views, which the router computes
    /// once the parts are answered.
    #[must_use]
    pub fn has_on_demand(&self) -> bool {
        !self.prepared.plan().on_demand.is_empty()
    }

    fn gather<'a>(&'a self, answers: &[&'a [u8]]) -> Result<Gathered<'a>> {
        if answers.len() != self.part_shape.len() {
            return Err(CoreError::BadShardAnswer(format!(
                "{} answers for {} parts",
                answers.len(),
                self.part_shape.len()
            )));
        }
        let mut parts = Vec::with_capacity(answers.len());
        for (i, (answer, &(g, n))) in answers.iter().zip(&self.part_shape).enumerate() {
            let part = PartCells::parse(answer, n, &self.group_shapes[g]).map_err(|e| {
                let shard = self.parts.get(i).map_or(0, |p| p.shard);
                CoreError::BadShardAnswer(format!("the answer of shard {shard}: {e}"))
            })?;
            parts.push(part);
        }
        Ok(Gathered {
            n: self.prepared.num_entities(),
            parts,
            col_map: &self.col_map,
            rows: &self.rows,
        })
    }
}

/// A routed request whose parts are answered and whose on-demand transforms are due: the
/// router's side of the protocol of [`crate::serve::on_demand::Pending`].
pub struct RoutedPending {
    routed: Arc<Routed>,
    /// The parts' answers (the gathered cells borrow them; parsed again on each use, which
    /// costs a pass over the cells, not a copy of them).
    answers: Vec<Vec<u8>>,
    /// Per on-demand view, the rows made from its transform's output.
    outputs: Vec<Option<Vec<RowState>>>,
    /// Set when the router logs what it answers (`--log-at router`).
    log: Option<LogTag>,
}

impl RoutedPending {
    /// Checks the answers' shapes and waits for the transforms.
    pub fn start(routed: Arc<Routed>, answers: Vec<Vec<u8>>, log: Option<LogTag>) -> Result<Self> {
        {
            let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
            routed.gather(&slices)?;
        }
        let outputs = vec![None; routed.prepared.plan().on_demand.len()];
        Ok(Self {
            routed,
            answers,
            outputs,
            log,
        })
    }

    fn plan(&self) -> &crate::query::Plan {
        self.routed.prepared.plan()
    }

    fn od(&self, k: usize) -> Result<&PlanOnDemand> {
        self.plan().on_demand.get(k).ok_or_else(|| {
            invalid!(
                "the request has {} on-demand views; there is no view #{k}",
                self.plan().on_demand.len()
            )
        })
    }

    #[must_use]
    pub fn views(&self) -> Vec<String> {
        let plan = self.plan();
        plan.on_demand
            .iter()
            .map(|od| plan.views[od.view].def.name.clone())
            .collect()
    }

    #[must_use]
    pub fn num_entities(&self) -> usize {
        self.routed.prepared.num_entities()
    }

    /// The inputs of on-demand view `k`, as a node gives them: the stored source features
    /// (nulls where not PRESENT), then the request fields.
    pub fn inputs(&self, k: usize) -> Result<(Vec<String>, Vec<ArrayRef>)> {
        let od = self.od(k)?;
        let slices: Vec<&[u8]> = self.answers.iter().map(Vec::as_slice).collect();
        let gathered = self.routed.gather(&slices)?;
        let cols: Vec<(GatheredCol, DType, u32)> = od
            .inputs
            .iter()
            .zip(&self.routed.od_inputs[k])
            .map(|(c, &(group, local))| (GatheredCol { group, local }, c.dtype, c.dim))
            .collect();
        let mut arrays = arrow_io::cells_to_arrow(&gathered, &cols);
        arrays.extend(self.routed.request[k].iter().cloned());
        let names = od
            .inputs
            .iter()
            .map(|c| c.feature.clone())
            .chain(od.request.iter().map(|(n, _)| n.clone()))
            .collect();
        Ok((names, arrays))
    }

    /// Takes the transform's output of on-demand view `k` (checked as a node checks it).
    pub fn set_output(&mut self, k: usize, batch: &StructArray) -> Result<()> {
        let def = self.plan().views[self.od(k)?.view].def.clone();
        let rows = arrow_io::on_demand_rows(&def, batch, self.num_entities())?;
        self.outputs[k] = Some(rows);
        Ok(())
    }

    /// The response, once every on-demand view has its output.
    pub fn finish(&self, cfg: &ServeConfig) -> Result<Vec<u8>> {
        let plan = self.plan();
        let mut rows = vec![Vec::new(); plan.views.len()];
        for (k, od) in plan.on_demand.iter().enumerate() {
            let Some(out) = &self.outputs[k] else {
                return Err(CoreError::Transform(format!(
                    "on-demand feature view '{}' has no output yet",
                    plan.views[od.view].def.name
                )));
            };
            rows[od.view].clone_from(out);
        }
        let computed = Answer {
            num_entities: self.num_entities(),
            rows,
        };
        let slices: Vec<&[u8]> = self.answers.iter().map(Vec::as_slice).collect();
        let gathered = self.routed.gather(&slices)?;
        let source = WithOnDemand {
            plan,
            gathered: &gathered,
            computed: computed.cells(plan),
        };
        if let Some(tag) = &self.log {
            FeatureLog::append(tag, &self.routed.prepared, &source);
        }
        Ok(self.routed.prepared.encode(&source, cfg))
    }
}

/// The gathered cells of the shards, with the on-demand views' columns read from the
/// transforms' outputs.
struct WithOnDemand<'a> {
    plan: &'a crate::query::Plan,
    gathered: &'a Gathered<'a>,
    computed: Cells<'a>,
}

#[derive(Clone, Copy)]
enum EitherCol<'a> {
    Gathered(GatheredCol),
    Computed(CellCol<'a>),
}

impl<'a> CellSource for WithOnDemand<'a> {
    type Col = EitherCol<'a>;

    fn num_entities(&self) -> usize {
        self.gathered.n
    }

    fn col(&self, c: usize) -> EitherCol<'a> {
        let view = self.plan.columns[c].view;
        if self.plan.views[view].def.on_demand.is_some() {
            EitherCol::Computed(self.computed.col(c))
        } else {
            EitherCol::Gathered(self.gathered.col(c))
        }
    }

    #[inline]
    fn cell(&self, col: EitherCol<'a>, e: usize) -> Cell<'_> {
        match col {
            EitherCol::Gathered(g) => self.gathered.cell(g, e),
            EitherCol::Computed(c) => self.computed.cell(c, e),
        }
    }

    #[inline]
    fn f32(&self, col: EitherCol<'a>, e: usize) -> (f32, Status, i64) {
        match col {
            EitherCol::Gathered(g) => self.gathered.f32(g, e),
            EitherCol::Computed(c) => CellSource::f32(&self.computed, c, e),
        }
    }
}

/// The answers of a routed request's parts, read in the request's order.
pub struct Gathered<'a> {
    n: usize,
    parts: Vec<PartCells<'a>>,
    col_map: &'a [(usize, usize)],
    rows: &'a [Vec<(u32, u32)>],
}

/// Column `c` of a routed request: its group and its index among the group's columns.
#[derive(Clone, Copy)]
pub struct GatheredCol {
    group: usize,
    local: usize,
}

impl CellSource for Gathered<'_> {
    type Col = GatheredCol;

    fn num_entities(&self) -> usize {
        self.n
    }

    fn col(&self, c: usize) -> GatheredCol {
        let (group, local) = self.col_map[c];
        GatheredCol { group, local }
    }

    #[inline]
    fn cell(&self, col: GatheredCol, e: usize) -> Cell<'_> {
        let (part, r) = self.rows[col.group][e];
        self.parts[part as usize].cell(col.local, r as usize)
    }

    #[inline]
    fn f32(&self, col: GatheredCol, e: usize) -> (f32, Status, i64) {
        let (part, r) = self.rows[col.group][e];
        match self.parts[part as usize].present_f32(col.local, r as usize) {
            Some((x, ts)) => (x, Status::Present, ts),
            None => dense_f32(self.cell(col, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::ShardCheck;
    use crate::proto::feast;
    use crate::serve::tests::{cfg, feast_req, fixture, fv, registry, serve_at, v1_req, NOW};
    use crate::serve::{serve, Caller};
    use crate::store::Store;
    use feast::value::Val;
    use v1::entity_column::Values;

    const SHARDS: u32 = 3;

    fn parts() -> AHashMap<String, u32> {
        [("user_profile", 4), ("fresh", 4), ("kitchen", 5)]
            .into_iter()
            .map(|(v, p)| (v.to_string(), p))
            .collect()
    }

    fn router(n_features: usize, partitions: AHashMap<String, u32>) -> Router {
        let cat = Catalog::from_spec_json(&registry(n_features)).unwrap();
        Router::new(Arc::new(cat), SHARDS, partitions).unwrap()
    }

    /// Routes `body`, has the (unsharded) store answer every part as the owning shard would
    /// (checked with that shard's `ShardCheck`), merges.
    fn routed(r: &Router, store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        let routed = r.route(api, body, &cfg(), None, 0).unwrap();
        let answers: Vec<Vec<u8>> = routed
            .parts
            .iter()
            .map(|p| {
                let check = ShardCheck::new(p.shard, SHARDS, r.partitions.clone()).unwrap();
                let caller = Caller {
                    shard: Some(&check),
                    now_us: NOW,
                    ..Caller::default()
                };
                serve(store, Api::Cells, &p.body, &cfg(), caller)
                    .unwrap()
                    .body
            })
            .collect();
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        routed.merge(&slices, &cfg()).unwrap()
    }

    /// Every part of `routed` answered by `store` (not sharded) as raw cells.
    fn cells_answers(store: &Store, routed: &Routed) -> Vec<Vec<u8>> {
        routed
            .parts
            .iter()
            .map(|p| {
                serve_at(Api::Cells, store, &p.body, &cfg(), NOW)
                    .unwrap()
                    .body
            })
            .collect()
    }

    fn local(store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        serve_at(api, store, body, &cfg(), NOW).unwrap().body
    }

    fn same(r: &Router, store: &Store, api: Api, body: &[u8]) {
        let want = local(store, api, body);
        let got = routed(r, store, api, body);
        assert!(
            got == want,
            "{api:?}: routed answer differs\n got {}\nwant {}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn routed_answers_equal_one_node_on_every_api() {
        let (_d, store) = fixture(40, 6);
        let r = router(6, parts());
        let users: Vec<i64> = (0..40).chain([999, -7, 3, 3]).collect();
        let user_json = serde_json::to_string(&users).unwrap();
        let f: Vec<String> = (0..6)
            .map(|i| format!("\"user_profile:f{i:03}\""))
            .collect();
        let feats = format!("{},\"fresh:score\"", f.join(","));
        for body in [
            format!(r#"{{"features":[{feats}],"entities":{{"user_id":{user_json}}}}}"#),
            format!(
                r#"{{"feature_service":"svc","full_feature_names":true,"entities":{{"user_id":{user_json}}}}}"#
            ),
            // Two groups (user_id and sku keys) in one request.
            r#"{"features":["kitchen:s","user_profile:f001","kitchen:emb","kitchen:t","fresh:score","kitchen:y","kitchen:b","kitchen:i32","kitchen:i64","kitchen:f64","kitchen:f32"],"entities":{"sku":["a","b","zz","a"],"user_id":[1,2,3,999]}}"#.to_string(),
        ] {
            same(&r, &store, Api::FeastHttp, body.as_bytes());
        }
        for layout in ["columns", "dense"] {
            let body = format!(
                r#"{{"features":[{feats}],"entities":{{"user_id":{user_json}}},"layout":"{layout}","include_statuses":true,"include_event_timestamps":true}}"#
            );
            same(&r, &store, Api::V1Http, body.as_bytes());
        }
        let refs: Vec<String> = (0..6)
            .map(|i| format!("user_profile:f{i:03}"))
            .chain(["fresh:score".to_string()])
            .collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let ids = || {
            Values::Int64Values(v1::Int64Column {
                values: users.clone(),
            })
        };
        for layout in [v1::Layout::Columns, v1::Layout::Dense] {
            let req = v1_req(&refs, vec![("user_id", ids())], layout);
            same(&r, &store, Api::V1Grpc, &req.encode_to_vec());
        }
        let req = feast_req(
            &["kitchen:s", "kitchen:emb", "user_profile:f002", "kitchen:t"],
            vec![
                (
                    "sku",
                    ["b", "a", "q"]
                        .map(|s| fv(Val::StringVal(s.into())))
                        .to_vec(),
                ),
                ("user_id", [5, 6, 7].map(|u| fv(Val::Int64Val(u))).to_vec()),
            ],
        );
        same(&r, &store, Api::FeastGrpc, &req.encode_to_vec());
    }

    /// The fixture's registry plus a request-time on-demand view over two views keyed by
    /// different entities (so by different shards) and a request field.
    fn with_odfv(store: &Store) -> Router {
        let mut spec: serde_json::Value = serde_json::from_str(&store.catalog().spec_json).unwrap();
        spec["on_demand_feature_views"] = serde_json::json!([{
            "name": "od",
            "sources": [{"view": "user_profile", "feature": "f000"},
                        {"view": "kitchen", "feature": "f32"}],
            "request_fields": [{"name": "x", "dtype": "float64"}],
            "features": [{"name": "y", "dtype": "float32"}]
        }]);
        store.apply_registry(&spec.to_string(), false).unwrap();
        let cat = Catalog::from_spec_json(&store.catalog().spec_json).unwrap();
        Router::new(Arc::new(cat), SHARDS, parts()).unwrap()
    }

    #[test]
    fn on_demand_views_are_computed_by_the_router_from_the_shards_cells() {
        use crate::serve::on_demand::{start, Started};
        use arrow::array::{Array, Float32Array};
        use arrow::datatypes::{DataType, Field};
        let (_d, store) = fixture(40, 6);
        let r = with_odfv(&store);
        let body = br#"{"features":["user_profile:f001","od:y","kitchen:s"],
            "entities":{"user_id":[1,2,999,3],"sku":["a","b","a","zz"],"x":[0.5,1,2,null]}}"#;
        let caller = Caller {
            now_us: NOW,
            ..Caller::default()
        };
        let Ok(Started::Pending(mut node)) = start(&store, Api::FeastHttp, body, &cfg(), caller)
        else {
            panic!("a node answers the request with a pending answer");
        };
        let routed = Arc::new(r.route(Api::FeastHttp, body, &cfg(), None, 0).unwrap());
        assert!(routed.has_on_demand());
        // Every part names stored features only, the view's inputs among them.
        let refs: Vec<String> = routed
            .parts
            .iter()
            .flat_map(|p| v1::GetCellsRequest::decode(p.body.as_slice()).unwrap().refs)
            .collect();
        assert!(refs.iter().all(|r| !r.starts_with("od:")), "{refs:?}");
        assert!(refs.contains(&"user_profile:f000".into()) && refs.contains(&"kitchen:f32".into()));
        let answers = cells_answers(&store, &routed);
        let mut pending = RoutedPending::start(routed.clone(), answers, None).unwrap();
        assert_eq!(pending.views(), node.views());
        let (names, inputs) = pending.inputs(0).unwrap();
        let (node_names, node_inputs) = node.inputs(0).unwrap();
        assert_eq!(names, node_names);
        assert_eq!(names, ["f000", "f32", "x"]);
        for (a, b) in inputs.iter().zip(&node_inputs) {
            assert_eq!(a.to_data(), b.to_data());
        }
        // The request field is passed through; an unknown user's input is null.
        assert!(inputs[0].is_null(2) && inputs[2].is_null(3));
        let out = StructArray::from(vec![(
            Arc::new(Field::new("y", DataType::Float32, true)),
            Arc::new(Float32Array::from(vec![
                Some(1.5),
                None,
                Some(3.0),
                Some(4.0),
            ])) as ArrayRef,
        )]);
        assert!(pending.finish(&cfg()).is_err(), "no output yet");
        pending.set_output(0, &out).unwrap();
        node.set_output(0, &out).unwrap();
        let got = pending.finish(&cfg()).unwrap();
        let want = node.finish(&store, &cfg()).unwrap().body;
        assert!(
            got == want,
            "routed answer differs\n got {}\nwant {}",
            String::from_utf8_lossy(&got),
            String::from_utf8_lossy(&want)
        );
        // Without pending, merge refuses rather than answering without the outputs.
        let slices: Vec<&[u8]> = pending.answers.iter().map(Vec::as_slice).collect();
        assert!(routed.merge(&slices, &cfg()).is_err());
        // A request field of the wrong type is refused before any shard is asked.
        let bad = br#"{"features":["od:y"],"entities":{"user_id":[1],"sku":["a"],"x":["no"]}}"#;
        let e = r.route(Api::FeastHttp, bad, &cfg(), None, 0).unwrap_err();
        assert!(e.to_string().contains("request field 'x'"), "{e}");
    }

    #[test]
    fn on_demand_inputs_are_in_a_service_scope_of_its_parts() {
        let (_d, store) = fixture(10, 6);
        let mut spec: serde_json::Value = serde_json::from_str(&store.catalog().spec_json).unwrap();
        spec["on_demand_feature_views"] = serde_json::json!([{
            "name": "od",
            "sources": [{"view": "user_profile", "feature": "f000"}],
            "request_fields": [],
            "features": [{"name": "y", "dtype": "float32"}]
        }]);
        spec["feature_services"] = serde_json::json!([{"name": "ranked",
            "features": [{"view": "od", "feature": "y"}, {"view": "fresh", "feature": "score"}]}]);
        store.apply_registry(&spec.to_string(), false).unwrap();
        let cat = Catalog::from_spec_json(&store.catalog().spec_json).unwrap();
        let r = Router::new(Arc::new(cat), SHARDS, parts()).unwrap();
        let scope = Scope {
            services: ["ranked".to_string()].into_iter().collect(),
            ..Scope::default()
        };
        let body = br#"{"feature_service":"ranked","entities":{"user_id":[1,2]}}"#;
        let routed = r
            .route(Api::FeastHttp, body, &cfg(), Some(&scope), 0)
            .unwrap();
        for p in &routed.parts {
            serve_scoped_cells(&store, &p.body, &scope).unwrap();
        }
        // The view's inputs, yes; other features of their view, no.
        let other = v1::GetCellsRequest {
            refs: vec!["user_profile:f001".into()],
            feature_service: "ranked".into(),
            entities: [(
                "user_id".to_string(),
                v1::EntityColumn {
                    values: Some(Values::Int64Values(v1::Int64Column { values: vec![1] })),
                },
            )]
            .into_iter()
            .collect(),
        };
        let e = serve_scoped_cells(&store, &other.encode_to_vec(), &scope).unwrap_err();
        assert!(matches!(e, CoreError::PermissionDenied(_)), "{e:?}");
    }

    #[test]
    fn parts_follow_owners_and_unsharded_views_spread() {
        let (_d, store) = fixture(30, 2);
        let r = router(2, parts());
        let body = br#"{"features":["user_profile:f000","fresh:score"],"entities":{"user_id":[0,1,2,3,4,5,6,7,8,9,10,11]}}"#;
        let routed = r.route(Api::FeastHttp, body, &cfg(), None, 0).unwrap();
        // One group (both views keyed by user_id over 4 partitions): at most one part a shard.
        let mut shards: Vec<u32> = routed.parts.iter().map(|p| p.shard).collect();
        shards.dedup();
        assert_eq!(shards.len(), routed.parts.len());
        assert!(
            routed.parts.len() > 1,
            "12 keys over 3 shards land on more than one"
        );
        // No view sharded: one part, on the shard `spread` picks.
        let r = router(2, AHashMap::new());
        for spread in 0..4 {
            let routed = r.route(Api::FeastHttp, body, &cfg(), None, spread).unwrap();
            assert_eq!(routed.parts.len(), 1);
            assert_eq!(routed.parts[0].shard, spread as u32 % SHARDS);
        }
        same(&r, &store, Api::FeastHttp, body);
        // Router errors are the node's errors.
        let e = r
            .route(
                Api::FeastHttp,
                br#"{"features":["nope:x"],"entities":{"user_id":[1]}}"#,
                &cfg(),
                None,
                0,
            )
            .unwrap_err();
        assert!(
            matches!(e, CoreError::NotFound(ref m) if m.contains("unknown feature view 'nope'")),
            "{e}"
        );
    }

    #[test]
    fn answers_from_another_registry_or_malformed_are_refused() {
        let (_d, store) = fixture(10, 2);
        let r = router(2, parts());
        let body = br#"{"features":["user_profile:f000","user_profile:f001"],"entities":{"user_id":[1,2,3,4,5,6]}}"#;
        let routed = r.route(Api::FeastHttp, body, &cfg(), None, 0).unwrap();
        let answers = cells_answers(&store, &routed);
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        assert!(routed.merge(&slices, &cfg()).is_ok());
        // Too few answers, truncated, trailing bytes.
        assert!(routed.merge(&slices[1..], &cfg()).is_err());
        let mut cut = slices.clone();
        let short = &answers[0][..answers[0].len() - 1];
        cut[0] = short;
        let e = routed.merge(&cut, &cfg()).unwrap_err();
        assert!(
            matches!(e, CoreError::BadShardAnswer(ref m) if m.contains("truncated")),
            "{e}"
        );
        let mut long = answers[0].clone();
        long.push(0);
        cut[0] = &long;
        assert!(matches!(
            routed.merge(&cut, &cfg()),
            Err(CoreError::BadShardAnswer(_))
        ));
        // A node whose registry has f001 as int64: refused, naming the registries.
        let other = registry(2).replacen(
            r#"{"name":"f001","dtype":"float32"}"#,
            r#"{"name":"f001","dtype":"int64"}"#,
            1,
        );
        let dir = tempfile::tempdir().unwrap();
        let node = Store::open(
            dir.path(),
            &other,
            crate::store::StoreOptions::default(),
            false,
        )
        .unwrap();
        let answers = cells_answers(&node, &routed);
        let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
        let e = routed.merge(&slices, &cfg()).unwrap_err();
        assert!(
            matches!(e, CoreError::BadShardAnswer(ref m) if m.contains("different registries")),
            "{e}"
        );
    }

    #[test]
    fn service_scopes_travel_with_the_parts() {
        let (_d, store) = fixture(10, 3);
        let r = router(3, parts());
        let svc_only = Scope::new(Some(vec![]), vec!["svc".into()]);
        let body = br#"{"feature_service":"svc","entities":{"user_id":[1,2,3,4,5]}}"#;
        // The router checks the caller's scope before planning...
        let routed = r
            .route(Api::FeastHttp, body, &cfg(), Some(&svc_only), 0)
            .unwrap();
        // ...and each node checks it again on its part, against the service.
        for p in &routed.parts {
            serve_scoped_cells(&store, &p.body, &svc_only).unwrap();
        }
        let denied = r
            .route(
                Api::FeastHttp,
                br#"{"features":["user_profile:f001"],"entities":{"user_id":[1]}}"#,
                &cfg(),
                Some(&svc_only),
                0,
            )
            .unwrap_err();
        assert!(matches!(denied, CoreError::PermissionDenied(_)), "{denied}");
        // A part that claims the service but asks for a feature outside it is refused.
        let forged = v1::GetCellsRequest {
            refs: vec!["user_profile:f002".into()],
            entities: [(
                "user_id".to_string(),
                v1::EntityColumn {
                    values: Some(Values::Int64Values(v1::Int64Column { values: vec![1] })),
                },
            )]
            .into_iter()
            .collect(),
            feature_service: "svc".into(),
        };
        let e = serve_scoped_cells(&store, &forged.encode_to_vec(), &svc_only).unwrap_err();
        assert!(
            matches!(e, CoreError::PermissionDenied(ref m) if m.contains("not part of feature service 'svc'")),
            "{e}"
        );
    }

    fn serve_scoped_cells(store: &Store, body: &[u8], scope: &Scope) -> Result<Vec<u8>> {
        let caller = Caller {
            scope: Some(scope),
            now_us: NOW,
            ..Caller::default()
        };
        serve(store, Api::Cells, body, &cfg(), caller).map(|s| s.body)
    }
}
