//! Batched lookups: resolve the requested features to views and slots (a plan), read the rows
//! of every view once per request, and expose each answer cell to the encoders.

use crate::catalog::{did_you_mean, Catalog, ViewDef};
use crate::error::{CoreError, Result};
use crate::hot::RowBytes;
use crate::invalid;
use crate::key::KeyColumn;
use crate::partition::ShardCheck;
use crate::row::{RowView, ValueRef, HEADER_LEN};
use crate::store::Store;
use crate::types::{DType, Status};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which features a request asks for.
#[derive(Debug, Clone)]
pub enum Selector {
    Service(String),
    Refs(Vec<String>),
}

/// Entity columns of a request, keyed by join-key name.
#[derive(Debug, Clone, Default)]
pub struct Entities {
    pub columns: Vec<(String, KeyColumn)>,
}

impl Entities {
    pub fn num_rows(&self) -> usize {
        self.columns.first().map_or(0, |c| c.1.len())
    }
}

#[derive(Debug, Clone)]
pub struct OutColumn {
    /// The feature's name as the request gave it: `view:feature`.
    pub reference: String,
    pub feature: String,
    /// Index into [`Plan::views`].
    pub view: usize,
    pub slot: usize,
    pub dtype: DType,
    pub dim: u32,
}

#[derive(Debug)]
pub struct PlanView {
    pub def: Arc<ViewDef>,
    /// For each join key of the view, the index of the entity column that carries it.
    pub key_columns: Vec<usize>,
}

#[derive(Debug)]
pub struct Plan {
    pub columns: Vec<OutColumn>,
    pub views: Vec<PlanView>,
}

/// Limits applied before any lookup happens.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entities: usize,
    pub max_features: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entities: 1000,
            max_features: 1000,
        }
    }
}

pub fn split_ref(r: &str) -> Result<(&str, &str)> {
    r.split_once(':')
        .filter(|(v, f)| !v.is_empty() && !f.is_empty())
        .ok_or_else(|| {
            invalid!("feature reference '{r}' is not of the form 'feature_view:feature'")
        })
}

/// Plans kept per catalog; past this many distinct request shapes the cache starts over.
const PLAN_CACHE_ENTRIES: usize = 1024;

/// [`plan`], memoised per catalog: model servers send the same few feature lists over and
/// over, and resolving 200 names costs about 30 us, as much as the lookup itself.
pub fn plan_cached(
    cat: &Catalog,
    sel: &Selector,
    entity_names: &[&str],
    limits: Limits,
) -> Result<Arc<Plan>> {
    let mut key = String::with_capacity(256);
    match sel {
        Selector::Service(s) => {
            key.push('S');
            key.push_str(s);
        }
        Selector::Refs(refs) => {
            key.push('R');
            for r in refs {
                key.push('\u{1f}');
                key.push_str(r);
            }
        }
    }
    key.push('\u{1e}');
    for e in entity_names {
        key.push('\u{1f}');
        key.push_str(e);
    }
    let hit = cat.plans.lock().get(&key).cloned();
    let plan = if let Some(p) = hit {
        p
    } else {
        let unlimited = Limits {
            max_features: usize::MAX,
            ..limits
        };
        let p = Arc::new(plan(cat, sel, entity_names, unlimited)?);
        let mut plans = cat.plans.lock();
        if plans.len() >= PLAN_CACHE_ENTRIES {
            plans.clear();
        }
        plans.insert(key, p.clone());
        p
    };
    if plan.columns.len() > limits.max_features {
        return Err(CoreError::InvalidArgument(format!(
            "{} features requested; the limit is {}",
            plan.columns.len(),
            limits.max_features
        )));
    }
    Ok(plan)
}

/// Resolves the selector against the catalog and the entity columns the request carries.
pub fn plan(cat: &Catalog, sel: &Selector, entity_names: &[&str], limits: Limits) -> Result<Plan> {
    let refs: Vec<(usize, String, String)> = match sel {
        Selector::Service(name) => {
            let refs = cat.services.get(name).ok_or_else(|| {
                CoreError::NotFound(format!(
                    "unknown feature service '{name}'{}",
                    did_you_mean(name, cat.services.keys().map(String::as_str))
                ))
            })?;
            refs.iter()
                .map(|(vi, f)| (*vi, f.clone(), format!("{}:{f}", cat.views[*vi].name)))
                .collect()
        }
        Selector::Refs(refs) => {
            if refs.is_empty() {
                return Err(invalid!("no features requested"));
            }
            let mut out = Vec::with_capacity(refs.len());
            for r in refs {
                let (v, f) = split_ref(r)?;
                let vi = cat.view_index(v)?;
                if f == "*" {
                    for (name, _) in &cat.views[vi].features {
                        out.push((vi, name.clone(), format!("{v}:{name}")));
                    }
                } else {
                    out.push((vi, f.to_string(), r.clone()));
                }
            }
            out
        }
    };
    if refs.len() > limits.max_features {
        return Err(CoreError::InvalidArgument(format!(
            "{} features requested; the limit is {}",
            refs.len(),
            limits.max_features
        )));
    }
    let mut views: Vec<PlanView> = Vec::new();
    let mut view_pos: Vec<Option<usize>> = vec![None; cat.views.len()];
    let mut used_entity = vec![false; entity_names.len()];
    let mut columns = Vec::with_capacity(refs.len());
    for (vi, feature, reference) in refs {
        let def = &cat.views[vi];
        let slot = def.slot(&feature)?;
        let pv = if let Some(p) = view_pos[vi] {
            p
        } else {
            let mut key_columns = Vec::with_capacity(def.join_keys.len());
            for (jk, _) in &def.join_keys {
                let idx = entity_names.iter().position(|n| n == jk).ok_or_else(|| {
                    invalid!(
                        "missing join key '{jk}': feature view '{}' is keyed by [{}]",
                        def.name,
                        def.join_keys
                            .iter()
                            .map(|k| k.0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                })?;
                used_entity[idx] = true;
                key_columns.push(idx);
            }
            views.push(PlanView {
                def: def.clone(),
                key_columns,
            });
            view_pos[vi] = Some(views.len() - 1);
            views.len() - 1
        };
        let s = def.slot_spec(slot);
        columns.push(OutColumn {
            reference,
            feature,
            view: pv,
            slot,
            dtype: s.dtype,
            dim: s.dim,
        });
    }
    if let Some(i) = used_entity.iter().position(|u| !u) {
        return Err(invalid!(
            "entity column '{}' is not a join key of any requested feature view",
            entity_names[i]
        ));
    }
    Ok(Plan { columns, views })
}

/// The rows read for a request; cells are decoded on demand by the encoders.
pub struct Answer {
    pub num_entities: usize,
    /// Per plan view, per entity: the row, if one is stored and live.
    pub rows: Vec<Vec<Option<RowBytes>>>,
    /// Per plan view, per entity: the row is older than the view's TTL.
    pub expired: Vec<Vec<bool>>,
}

/// One answer cell.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cell<'a> {
    pub status: Status,
    /// `ValueRef::Null` unless the status is PRESENT.
    pub value: ValueRef<'a>,
    /// Event timestamp of the row (us), 0 when there is none.
    pub event_ts: i64,
}

pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Checks entity columns and reads every view's rows.
pub fn execute(
    store: &Store,
    plan: &Plan,
    entities: &Entities,
    limits: Limits,
    now_us: i64,
) -> Result<Answer> {
    execute_sharded(store, plan, entities, limits, now_us, None)
}

/// [`execute`] on a sharded node: every entity of a view with a stream source must belong to
/// `shard` (checked on the encoded keys before any read), else the whole request is refused.
pub fn execute_sharded(
    store: &Store,
    plan: &Plan,
    entities: &Entities,
    limits: Limits,
    now_us: i64,
    shard: Option<&ShardCheck>,
) -> Result<Answer> {
    let n = entities.num_rows();
    if n == 0 {
        return Err(invalid!("no entities given"));
    }
    for (name, col) in &entities.columns {
        if col.len() != n {
            return Err(invalid!(
                "entity columns have different lengths: '{}' has {n} values, '{name}' has {}",
                entities.columns[0].0,
                col.len()
            ));
        }
    }
    if n > limits.max_entities {
        return Err(CoreError::InvalidArgument(format!(
            "{n} entities requested; the limit is {}",
            limits.max_entities
        )));
    }
    let mut rows = Vec::with_capacity(plan.views.len());
    let mut expired = Vec::with_capacity(plan.views.len());
    if let Some(shard) = shard {
        for pv in &plan.views {
            if shard.partitions.contains_key(&pv.def.name) {
                let keys = encode_keys(&pv.def, &pv.key_columns, entities, n)?;
                shard.check(&pv.def.name, &keys, |i| describe_entity(pv, entities, i))?;
            }
        }
    }
    for pv in &plan.views {
        let keys = encode_keys(&pv.def, &pv.key_columns, entities, n)?;
        let r = store.lookup(&pv.def, &keys)?;
        let ttl = pv.def.ttl_micros;
        expired.push(
            r.iter()
                .map(|row| {
                    ttl > 0
                        && row.as_ref().is_some_and(|b| {
                            RowView::new(b).is_some_and(|v| now_us - v.event_ts() > ttl)
                        })
                })
                .collect(),
        );
        rows.push(r);
    }
    Ok(Answer {
        num_entities: n,
        rows,
        expired,
    })
}

/// `user_id=17` (`a=1, b="x"` for composite keys): entity `i` as `pv`'s join keys.
fn describe_entity(pv: &PlanView, entities: &Entities, i: usize) -> String {
    pv.key_columns
        .iter()
        .zip(&pv.def.join_keys)
        .map(|(&c, (jk, _))| format!("{jk}={}", entities.columns[c].1.display(i)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Hot-tier keys (view prefix + entity key) for every entity of a request.
pub fn encode_keys(
    def: &ViewDef,
    key_columns: &[usize],
    entities: &Entities,
    n: usize,
) -> Result<Vec<Vec<u8>>> {
    let prefix = def.hot_prefix();
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let mut k = Vec::with_capacity(4 + 8 * key_columns.len());
        k.extend_from_slice(&prefix);
        for (&c, (jk, ty)) in key_columns.iter().zip(&def.join_keys) {
            entities.columns[c].1.encode_into(i, *ty, jk, &mut k)?;
        }
        keys.push(k);
    }
    Ok(keys)
}

impl Answer {
    #[inline]
    pub fn cell<'a>(&'a self, plan: &'a Plan, col: usize, entity: usize) -> Cell<'a> {
        let c = &plan.columns[col];
        let pv = &plan.views[c.view];
        let none = |status| Cell {
            status,
            value: ValueRef::Null,
            event_ts: 0,
        };
        let Some(bytes) = &self.rows[c.view][entity] else {
            return none(Status::NotFound);
        };
        let Some(row) = RowView::new(bytes) else {
            return none(Status::NotFound);
        };
        let event_ts = row.event_ts();
        if self.expired[c.view][entity] {
            return Cell {
                status: Status::OutsideMaxAge,
                value: ValueRef::Null,
                event_ts,
            };
        }
        match row.value(&pv.def.layout, c.slot) {
            ValueRef::Missing => Cell {
                status: Status::NotFound,
                value: ValueRef::Null,
                event_ts,
            },
            ValueRef::Null => Cell {
                status: Status::NullValue,
                value: ValueRef::Null,
                event_ts,
            },
            v => Cell {
                status: Status::Present,
                value: v,
                event_ts,
            },
        }
    }

    /// Dense float32 fast path: value (NaN unless present) and status.
    #[inline]
    pub fn cell_f32(&self, plan: &Plan, col: usize, entity: usize) -> (f32, Status, i64) {
        let c = &plan.columns[col];
        let Some(bytes) = &self.rows[c.view][entity] else {
            return (f32::NAN, Status::NotFound, 0);
        };
        let Some(row) = RowView::new(bytes) else {
            return (f32::NAN, Status::NotFound, 0);
        };
        let ts = row.event_ts();
        if self.expired[c.view][entity] {
            return (f32::NAN, Status::OutsideMaxAge, ts);
        }
        let layout = &plan.views[c.view].def.layout;
        match row.value_f32(layout, c.slot) {
            Some(x) => (x, Status::Present, ts),
            None if c.slot < row.n_slots() && !row.is_present(c.slot) => {
                (f32::NAN, Status::NullValue, ts)
            }
            None => (f32::NAN, Status::NotFound, ts),
        }
    }
}

/// One entity's row in one plan view, decoded once per request.
#[derive(Clone, Copy)]
pub enum RowState<'a> {
    NotFound,
    Expired(i64),
    /// `full`: the row has every slot of the view's current layout, so a slot's fixed bytes
    /// sit at [`crate::row::RowLayout::fixed_pos`].
    Live {
        bytes: &'a [u8],
        ts: i64,
        full: bool,
    },
}

/// The rows of an answer, per plan view and entity, plus per-column constants: lets the
/// encoders read fixed-width values straight from row bytes (the common case), falling back
/// to [`Answer::cell`] for everything else.
pub struct Cells<'a> {
    plan: &'a Plan,
    answer: &'a Answer,
    pub rows: Vec<Vec<RowState<'a>>>,
}

/// Where column `c`'s value lives in a full row.
#[derive(Clone, Copy)]
pub struct ColPos {
    pub view: usize,
    pub dtype: DType,
    /// Byte of the presence bitmap and the bit in it.
    pub bm: usize,
    pub mask: u8,
    pub pos: usize,
}

impl<'a> Cells<'a> {
    pub fn new(plan: &'a Plan, answer: &'a Answer) -> Self {
        let rows = plan
            .views
            .iter()
            .enumerate()
            .map(|(v, pv)| {
                let n_slots = pv.def.layout.len();
                (0..answer.num_entities)
                    .map(|e| {
                        let Some(b) = answer.rows[v][e].as_deref() else {
                            return RowState::NotFound;
                        };
                        let Some(row) = RowView::new(b) else {
                            return RowState::NotFound;
                        };
                        if answer.expired[v][e] {
                            RowState::Expired(row.event_ts())
                        } else {
                            RowState::Live {
                                bytes: b,
                                ts: row.event_ts(),
                                full: row.n_slots() == n_slots,
                            }
                        }
                    })
                    .collect()
            })
            .collect();
        Self { plan, answer, rows }
    }

    pub fn col(&self, c: usize) -> ColPos {
        let col = &self.plan.columns[c];
        ColPos {
            view: col.view,
            dtype: col.dtype,
            bm: HEADER_LEN + col.slot / 8,
            mask: 1 << (col.slot % 8),
            pos: self.plan.views[col.view].def.layout.fixed_pos(col.slot),
        }
    }

    #[inline]
    pub fn cell(&self, c: usize, cp: ColPos, e: usize) -> Cell<'a> {
        match self.rows[cp.view][e] {
            RowState::NotFound => Cell {
                status: Status::NotFound,
                value: ValueRef::Null,
                event_ts: 0,
            },
            RowState::Expired(ts) => Cell {
                status: Status::OutsideMaxAge,
                value: ValueRef::Null,
                event_ts: ts,
            },
            RowState::Live { bytes, ts, full } => {
                // A row too short for its bitmap is corrupt: the slow path answers it safely.
                if full && bytes.len() > cp.bm {
                    if bytes[cp.bm] & cp.mask == 0 {
                        return Cell {
                            status: Status::NullValue,
                            value: ValueRef::Null,
                            event_ts: ts,
                        };
                    }
                    let fixed = |w: usize| bytes.get(cp.pos..cp.pos + w);
                    let v = match cp.dtype {
                        DType::Float32 => fixed(4).map(|b| {
                            ValueRef::Float32(f32::from_le_bytes(b.try_into().expect("4")))
                        }),
                        DType::Float64 => fixed(8).map(|b| {
                            ValueRef::Float64(f64::from_le_bytes(b.try_into().expect("8")))
                        }),
                        DType::Int32 => fixed(4)
                            .map(|b| ValueRef::Int32(i32::from_le_bytes(b.try_into().expect("4")))),
                        DType::Int64 => fixed(8)
                            .map(|b| ValueRef::Int64(i64::from_le_bytes(b.try_into().expect("8")))),
                        DType::Bool => fixed(1).map(|b| ValueRef::Bool(b[0] != 0)),
                        _ => None,
                    };
                    if let Some(value) = v {
                        return Cell {
                            status: Status::Present,
                            value,
                            event_ts: ts,
                        };
                    }
                }
                self.answer.cell(self.plan, c, e)
            }
        }
    }

    /// The dense float32 view of a cell (NaN unless PRESENT).
    #[inline]
    pub fn f32(&self, c: usize, cp: ColPos, e: usize) -> (f32, Status, i64) {
        if cp.dtype == DType::Float32 {
            if let RowState::Live {
                bytes,
                ts,
                full: true,
            } = self.rows[cp.view][e]
            {
                if bytes.get(cp.bm).is_some_and(|b| b & cp.mask == 0) {
                    return (f32::NAN, Status::NullValue, ts);
                }
                if let Some(b) = bytes.get(cp.pos..cp.pos + 4) {
                    let x = f32::from_le_bytes(b.try_into().expect("4"));
                    return (x, Status::Present, ts);
                }
            }
        }
        dense_f32(self.cell(c, cp, e))
    }
}

/// A cell in the dense float32 layout: the value as float32 (NaN unless PRESENT), its status
/// and event timestamp.
#[inline]
pub fn dense_f32(cell: Cell<'_>) -> (f32, Status, i64) {
    let x = match cell.value {
        ValueRef::Float32(x) => x,
        ValueRef::Float64(x) => x as f32,
        ValueRef::Int32(x) => x as f32,
        ValueRef::Int64(x) => x as f32,
        ValueRef::Bool(b) => f32::from(u8::from(b)),
        _ => f32::NAN,
    };
    (x, cell.status, cell.event_ts)
}

/// Where the encoders read answer cells from: a node's own rows ([`Cells`]) or the columns a
/// router gathered from the shards ([`crate::route::Gathered`]).
pub trait CellSource {
    fn num_entities(&self) -> usize;
    /// Per-column constants, computed once per column and passed back to `cell` / `f32`.
    fn col(&self, c: usize) -> ColPos;
    fn cell(&self, c: usize, cp: ColPos, e: usize) -> Cell<'_>;
    /// The dense float32 view of a cell (NaN unless PRESENT).
    fn f32(&self, c: usize, cp: ColPos, e: usize) -> (f32, Status, i64);
}

impl CellSource for Cells<'_> {
    #[inline]
    fn num_entities(&self) -> usize {
        self.answer.num_entities
    }

    #[inline]
    fn col(&self, c: usize) -> ColPos {
        Cells::col(self, c)
    }

    #[inline]
    fn cell(&self, c: usize, cp: ColPos, e: usize) -> Cell<'_> {
        Cells::cell(self, c, cp, e)
    }

    #[inline]
    fn f32(&self, c: usize, cp: ColPos, e: usize) -> (f32, Status, i64) {
        Cells::f32(self, c, cp, e)
    }
}
