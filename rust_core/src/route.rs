//! Routing one request over a sharded cluster (`feature-serving route`).
//!
//! A router holds the registry (a [`Catalog`] without rows) and the cluster's shape. For a
//! request of any API it:
//!
//! 1. parses and plans it exactly as a node would ([`serve::prepare_in`]);
//! 2. splits it: the plan's views are grouped by how their entities are routed (views with the
//!    same join keys share an owner per entity row; views without a stream source are not
//!    sharded and ride along with the first group), and every group's rows are split by owning
//!    shard (`murmur2(entity key) % partitions % shards`, as [`ShardCheck`] computes it on the
//!    node). Each (group, shard) becomes one [`Part`]: a `GetCellsRequest` with the group's
//!    features and that shard's rows;
//! 3. after the frontend has sent the parts to replicas of their shards, gathers the answers
//!    (raw cells, below) back into request order and encodes the response with the same
//!    encoders a node uses ([`Prepared::encode_from`]). The result is byte for byte what a
//!    single node holding every row would answer.
//!
//! # The cells answer (node to router)
//!
//! The node answers a `GetCellsRequest` (API [`Api::Cells`]) with the cells of its plan, not
//! with stored rows: a row's physical layout depends on the node's schema history, the cells
//! do not. Little-endian throughout:
//!
//! ```text
//! "FSC1" | u32 entities n | u32 views v | v x (n x i64 event ts, 0 when no row)
//!        | u32 columns | per column: u8 dtype, u32 dim, u32 view, n x u8 status, values
//! values: bool 1 byte, int32/float32 4, int64/float64/timestamp 8 per entity (0 unless
//!         PRESENT); string/bytes/float32 array: n x u32 length, then the bytes
//! ```
//!
//! The router checks every column's type against its own registry, so a node running another
//! registry is an error, never a misread value.

use crate::catalog::Catalog;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::KeyColumn;
use crate::partition::murmur2;
use crate::proto::v1;
use crate::query::{dense_f32, encode_keys, Cell, CellSource, ColPos, Entities, Selector};
use crate::row::ValueRef;
use crate::scope::Scope;
use crate::serve::{prepare_in, v1_entities, Api, Parsed, Prepared, ServeConfig, V1Opts};
use crate::types::{DType, KeyType, Status};
use ahash::AHashMap;
use prost::Message as _;
use std::collections::BTreeMap;
use std::sync::Arc;

const MAGIC: &[u8; 4] = b"FSC1";

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
    /// Per column of the plan: (group, index among the group's columns).
    col_map: Vec<(usize, usize)>,
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
        let prepared = prepare_in(&self.catalog, api, body, cfg, scope)?;
        let plan = prepared.plan();
        let entities = &prepared.entities;
        let n = prepared.num_entities();

        // Group the plan's views by routing: same join-key columns and partition count.
        let mut groups: Vec<Group> = Vec::new();
        let mut loose = Vec::new();
        for (v, pv) in plan.views.iter().enumerate() {
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
        let mut view_group = vec![0; plan.views.len()];
        for (g, group) in groups.iter().enumerate() {
            for &v in &group.views {
                view_group[v] = g;
            }
        }

        // Columns of each group, in plan order.
        let mut group_cols: Vec<Vec<usize>> = vec![Vec::new(); groups.len()];
        let mut col_map = Vec::with_capacity(plan.columns.len());
        for (c, col) in plan.columns.iter().enumerate() {
            let g = view_group[col.view];
            col_map.push((g, group_cols[g].len()));
            group_cols[g].push(c);
        }

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
                refs: group_cols[g]
                    .iter()
                    .map(|&c| {
                        let col = &plan.columns[c];
                        format!("{}:{}", plan.views[col.view].def.name, col.feature)
                    })
                    .collect(),
                feature_service: service.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            let mut where_ = vec![(0u32, 0u32); n];
            for (shard, members) in by_shard.iter().enumerate() {
                if members.is_empty() {
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

    /// Gathers the parts' answers (`answers[i]` answers `parts[i]`) and encodes the response.
    pub fn merge(&self, answers: &[&[u8]], cfg: &ServeConfig) -> Result<Vec<u8>> {
        if answers.len() != self.part_shape.len() {
            return Err(CoreError::BadShardAnswer(format!(
                "{} answers for {} parts",
                answers.len(),
                self.part_shape.len()
            )));
        }
        let plan = self.prepared.plan();
        let mut parts = Vec::with_capacity(answers.len());
        for (i, (answer, &(g, n))) in answers.iter().zip(&self.part_shape).enumerate() {
            let expect: Vec<(DType, u32)> = plan
                .columns
                .iter()
                .zip(&self.col_map)
                .filter(|(_, (cg, _))| *cg == g)
                .map(|(c, _)| (c.dtype, c.dim))
                .collect();
            let part = PartCells::parse(answer, n, &expect).map_err(|e| {
                let shard = self.parts.get(i).map_or(0, |p| p.shard);
                CoreError::BadShardAnswer(format!("the answer of shard {shard}: {e}"))
            })?;
            parts.push(part);
        }
        let gathered = Gathered {
            n: self.prepared.num_entities(),
            parts,
            col_map: &self.col_map,
            rows: &self.rows,
        };
        Ok(self.prepared.encode_from(&gathered, cfg))
    }
}

/// The answers of a routed request's parts, read in the request's order.
pub struct Gathered<'a> {
    n: usize,
    parts: Vec<PartCells<'a>>,
    col_map: &'a [(usize, usize)],
    rows: &'a [Vec<(u32, u32)>],
}

impl CellSource for Gathered<'_> {
    fn num_entities(&self) -> usize {
        self.n
    }

    fn col(&self, c: usize) -> ColPos {
        let (g, local) = self.col_map[c];
        ColPos {
            view: g,
            dtype: DType::Bool,
            bm: 0,
            mask: 0,
            pos: local,
        }
    }

    #[inline]
    fn cell(&self, _c: usize, cp: ColPos, e: usize) -> Cell<'_> {
        let (part, r) = self.rows[cp.view][e];
        self.parts[part as usize].cell(cp.pos, r as usize)
    }

    #[inline]
    fn f32(&self, c: usize, cp: ColPos, e: usize) -> (f32, Status, i64) {
        let (part, r) = self.rows[cp.view][e];
        let (part, r) = (&self.parts[part as usize], r as usize);
        let col = &part.cols[cp.pos];
        if col.dtype == DType::Float32 && col.statuses[r] == Status::Present as u8 {
            let x = f32::from_le_bytes(col.values[r * 4..r * 4 + 4].try_into().expect("4"));
            return (x, Status::Present, part.ts[col.view][r]);
        }
        dense_f32(self.cell(c, cp, e))
    }
}

/// One part's answer, parsed in place.
struct PartCells<'a> {
    n: usize,
    /// Per view: n event timestamps.
    ts: Vec<Vec<i64>>,
    cols: Vec<ColCells<'a>>,
}

struct ColCells<'a> {
    dtype: DType,
    view: usize,
    statuses: &'a [u8],
    /// Fixed-width values, or the concatenated bytes of variable-width ones.
    values: &'a [u8],
    /// Variable-width values: n + 1 offsets into `values`.
    offsets: Vec<u32>,
}

struct Reader<'a> {
    b: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.b.len() < n {
            return Err(CoreError::BadShardAnswer("truncated cells answer".into()));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
}

fn dtype_code(d: DType) -> u8 {
    match d {
        DType::Bool => 0,
        DType::Int32 => 1,
        DType::Int64 => 2,
        DType::Float32 => 3,
        DType::Float64 => 4,
        DType::String => 5,
        DType::Bytes => 6,
        DType::Timestamp => 7,
        DType::Float32Array => 8,
    }
}

fn dtype_of(code: u8) -> Option<DType> {
    Some(match code {
        0 => DType::Bool,
        1 => DType::Int32,
        2 => DType::Int64,
        3 => DType::Float32,
        4 => DType::Float64,
        5 => DType::String,
        6 => DType::Bytes,
        7 => DType::Timestamp,
        8 => DType::Float32Array,
        _ => return None,
    })
}

/// Bytes per value of a fixed-width type; None for variable-width types.
fn fixed_width(d: DType) -> Option<usize> {
    match d {
        DType::Bool => Some(1),
        DType::Int32 | DType::Float32 => Some(4),
        DType::Int64 | DType::Float64 | DType::Timestamp => Some(8),
        DType::String | DType::Bytes | DType::Float32Array => None,
    }
}

fn status_of(b: u8) -> Option<Status> {
    Some(match b {
        1 => Status::Present,
        2 => Status::NullValue,
        3 => Status::NotFound,
        4 => Status::OutsideMaxAge,
        _ => return None,
    })
}

impl<'a> PartCells<'a> {
    /// Parses and checks an answer: `n` entities and the columns `expect` (type, dim).
    fn parse(b: &'a [u8], n: usize, expect: &[(DType, u32)]) -> Result<Self> {
        let bad = |m: String| CoreError::BadShardAnswer(m);
        let mut r = Reader { b };
        if r.take(4)? != MAGIC {
            return Err(bad("not a cells answer (bad magic)".into()));
        }
        let got_n = r.u32()? as usize;
        if got_n != n {
            return Err(bad(format!("{got_n} entities answered, {n} asked")));
        }
        let n_views = r.u32()? as usize;
        let mut ts = Vec::with_capacity(n_views);
        for _ in 0..n_views {
            ts.push(
                r.take(n * 8)?
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes(b.try_into().expect("8")))
                    .collect(),
            );
        }
        let n_cols = r.u32()? as usize;
        if n_cols != expect.len() {
            return Err(bad(format!(
                "{n_cols} columns answered, {} asked",
                expect.len()
            )));
        }
        let mut cols = Vec::with_capacity(n_cols);
        for (c, &(want, want_dim)) in expect.iter().enumerate() {
            let code = r.take(1)?[0];
            let dim = r.u32()?;
            let view = r.u32()? as usize;
            let dtype = dtype_of(code).ok_or_else(|| bad(format!("unknown type code {code}")))?;
            if dtype != want || dim != want_dim {
                return Err(CoreError::BadShardAnswer(format!(
                    "column {c} is {}[{dim}] on the node but {}[{want_dim}] in the router's \
                     registry: the router and the nodes run different registries",
                    dtype.name(),
                    want.name()
                )));
            }
            if view >= n_views {
                return Err(bad(format!("column {c} names view {view} of {n_views}")));
            }
            let statuses = r.take(n)?;
            if let Some(s) = statuses.iter().find(|s| status_of(**s).is_none()) {
                return Err(bad(format!("unknown status {s}")));
            }
            let (values, offsets) = if let Some(w) = fixed_width(dtype) {
                (r.take(n * w)?, Vec::new())
            } else {
                let lens = r.take(n * 4)?;
                let mut offsets = Vec::with_capacity(n + 1);
                let mut total = 0u32;
                offsets.push(0);
                for l in lens.chunks_exact(4) {
                    total = total
                        .checked_add(u32::from_le_bytes(l.try_into().expect("4")))
                        .ok_or_else(|| bad("value lengths overflow".into()))?;
                    offsets.push(total);
                }
                (r.take(total as usize)?, offsets)
            };
            cols.push(ColCells {
                dtype,
                view,
                statuses,
                values,
                offsets,
            });
        }
        if !r.b.is_empty() {
            return Err(bad(format!("{} bytes after the last column", r.b.len())));
        }
        Ok(Self { n, ts, cols })
    }

    #[inline]
    fn cell(&self, c: usize, r: usize) -> Cell<'a> {
        let col = &self.cols[c];
        let event_ts = self.ts[col.view][r];
        let status = status_of(col.statuses[r]).unwrap_or(Status::NotFound);
        if status != Status::Present {
            return Cell {
                status,
                value: ValueRef::Null,
                event_ts,
            };
        }
        let v = col.values;
        let fixed = |w: usize| &v[r * w..r * w + w];
        let value = match col.dtype {
            DType::Bool => ValueRef::Bool(v[r] != 0),
            DType::Int32 => ValueRef::Int32(i32::from_le_bytes(fixed(4).try_into().expect("4"))),
            DType::Float32 => {
                ValueRef::Float32(f32::from_le_bytes(fixed(4).try_into().expect("4")))
            }
            DType::Int64 => ValueRef::Int64(i64::from_le_bytes(fixed(8).try_into().expect("8"))),
            DType::Float64 => {
                ValueRef::Float64(f64::from_le_bytes(fixed(8).try_into().expect("8")))
            }
            DType::Timestamp => {
                ValueRef::Timestamp(i64::from_le_bytes(fixed(8).try_into().expect("8")))
            }
            DType::String | DType::Bytes | DType::Float32Array => {
                let s = &v[col.offsets[r] as usize..col.offsets[r + 1] as usize];
                match col.dtype {
                    DType::String => ValueRef::Str(s),
                    DType::Bytes => ValueRef::Bytes(s),
                    _ => ValueRef::Float32Array(s),
                }
            }
        };
        debug_assert!(r < self.n);
        Cell {
            status,
            value,
            event_ts,
        }
    }
}

/// Encodes a node's answer to a `GetCellsRequest` (format in the module docs).
pub fn encode_cells(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
    let plan = p.plan();
    let n = cells.num_entities();
    let mut out = Vec::with_capacity(16 + plan.views.len() * n * 8 + plan.columns.len() * n * 6);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(plan.views.len() as u32).to_le_bytes());
    for v in 0..plan.views.len() {
        let c = plan
            .columns
            .iter()
            .position(|c| c.view == v)
            .expect("every plan view has a column");
        let cp = cells.col(c);
        for e in 0..n {
            out.extend_from_slice(&cells.cell(c, cp, e).event_ts.to_le_bytes());
        }
    }
    out.extend_from_slice(&(plan.columns.len() as u32).to_le_bytes());
    let mut var: Vec<u8> = Vec::new();
    for (c, col) in plan.columns.iter().enumerate() {
        let cp = cells.col(c);
        out.push(dtype_code(col.dtype));
        out.extend_from_slice(&col.dim.to_le_bytes());
        out.extend_from_slice(&(col.view as u32).to_le_bytes());
        let st = out.len();
        out.resize(st + n, 0);
        let fixed = fixed_width(col.dtype);
        var.clear();
        for e in 0..n {
            let cell = cells.cell(c, cp, e);
            out[st + e] = cell.status as u8;
            let present = cell.status == Status::Present;
            match (fixed, cell.value) {
                (Some(_), ValueRef::Bool(b)) if present => out.push(u8::from(b)),
                (Some(_), ValueRef::Int32(x)) if present => out.extend_from_slice(&x.to_le_bytes()),
                (Some(_), ValueRef::Float32(x)) if present => {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                (Some(_), ValueRef::Int64(x) | ValueRef::Timestamp(x)) if present => {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                (Some(_), ValueRef::Float64(x)) if present => {
                    out.extend_from_slice(&x.to_le_bytes());
                }
                (Some(w), _) => out.resize(out.len() + w, 0),
                (None, ValueRef::Str(s) | ValueRef::Bytes(s) | ValueRef::Float32Array(s))
                    if present =>
                {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    var.extend_from_slice(s);
                }
                (None, _) => out.extend_from_slice(&0u32.to_le_bytes()),
            }
        }
        out.extend_from_slice(&var);
    }
    out
}

/// Parses a `GetCellsRequest`; also returns the feature service to check scopes against.
pub(crate) fn parse_cells_request(body: &[u8]) -> Result<(Parsed, Option<String>)> {
    let req = v1::GetCellsRequest::decode(body)
        .map_err(|e| invalid!("malformed GetCellsRequest: {e}"))?;
    if req.refs.is_empty() {
        return Err(invalid!("GetCellsRequest names no features"));
    }
    let columns = v1_entities(req.entities)?;
    let service = Some(req.feature_service).filter(|s| !s.is_empty());
    Ok((
        (
            Selector::Refs(req.refs),
            Entities { columns },
            false,
            V1Opts::default(),
        ),
        service,
    ))
}

/// Scope check of a routed part of a feature-service request: the caller may read the
/// service, and every reference belongs to it.
pub(crate) fn check_service_scope(
    scope: &Scope,
    cat: &Catalog,
    service: &str,
    sel: &Selector,
) -> Result<()> {
    scope.check(cat, &Selector::Service(service.to_string()))?;
    let Selector::Refs(refs) = sel else {
        return Ok(());
    };
    let members = cat
        .services
        .get(service)
        .ok_or_else(|| CoreError::NotFound(format!("unknown feature service '{service}'")))?;
    for r in refs {
        let (v, f) = crate::query::split_ref(r)?;
        let ok = members
            .iter()
            .any(|(vi, mf)| mf == f && cat.views[*vi].name == v);
        if !ok {
            return Err(CoreError::PermissionDenied(format!(
                "feature '{r}' is not part of feature service '{service}'"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::partition::ShardCheck;
    use crate::proto::feast;
    use crate::serve::tests::{cfg, feast_req, fixture, fv, registry, v1_req, NOW};
    use crate::serve::{serve, serve_sharded};
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
                serve_sharded(store, Api::Cells, &p.body, &cfg(), NOW, None, Some(&check))
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
            .map(|p| serve(store, Api::Cells, &p.body, &cfg(), NOW).unwrap().body)
            .collect()
    }

    fn local(store: &Store, api: Api, body: &[u8]) -> Vec<u8> {
        serve(store, api, body, &cfg(), NOW).unwrap().body
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

    /// Prints the router's costs for W2 (100 x 200 float32): route (split), a node's cells
    /// answer, merge into the v1 dense proto and into Feast JSON. `cargo test --release --lib
    /// route_w2_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing; run in release with --ignored --nocapture"]
    fn route_w2_timing() {
        use std::time::Instant;
        let (_d, store) = fixture(20_000, 200);
        let r = router(200, parts());
        let refs: Vec<String> = (0..200).map(|i| format!("user_profile:f{i:03}")).collect();
        let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
        let ids: Vec<i64> = (0..100).map(|i| i * 197 % 20_000).collect();
        let dense = v1_req(
            &refs,
            vec![(
                "user_id",
                Values::Int64Values(v1::Int64Column {
                    values: ids.clone(),
                }),
            )],
            v1::Layout::Dense,
        )
        .encode_to_vec();
        let quoted: Vec<String> = refs.iter().map(|r| format!("\"{r}\"")).collect();
        let json = format!(
            r#"{{"features":[{}],"entities":{{"user_id":{}}}}}"#,
            quoted.join(","),
            serde_json::to_string(&ids).unwrap()
        );
        for (name, api, body) in [
            ("v1 dense proto", Api::V1Grpc, dense),
            ("feast json", Api::FeastHttp, json.into_bytes()),
        ] {
            let n = 2000;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(r.route(api, &body, &cfg(), None, 0).unwrap());
            }
            let split = t.elapsed() / n;
            let routed = r.route(api, &body, &cfg(), None, 0).unwrap();
            let t = Instant::now();
            let answers = cells_answers(&store, &routed);
            let node = t.elapsed();
            let slices: Vec<&[u8]> = answers.iter().map(Vec::as_slice).collect();
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(routed.merge(&slices, &cfg()).unwrap());
            }
            let merge = t.elapsed() / n;
            let t = Instant::now();
            for _ in 0..n {
                std::hint::black_box(local(&store, api, &body));
            }
            let one = t.elapsed() / n;
            println!(
                "{name}: route {split:?}, {} parts answered in {node:?}, merge {merge:?}; one node \
                 end to end {one:?}",
                routed.parts.len()
            );
        }
    }

    fn serve_scoped_cells(store: &Store, body: &[u8], scope: &Scope) -> Result<Vec<u8>> {
        crate::serve::serve_scoped(store, Api::Cells, body, &cfg(), NOW, Some(scope))
            .map(|s| s.body)
    }
}
