//! Batched lookups: read the rows of every view of a plan once per request, parse each row's
//! header once, and expose each answer cell to the encoders.
//!
//! Planning (which view and slot each requested feature is) lives beside the catalog it is
//! cached in ([`crate::catalog::plan`]); its types are re-exported here, since every reader of
//! an answer also reads its plan.

pub use crate::catalog::plan::{
    plan_cached, split_ref, Limits, OutColumn, Plan, PlanOnDemand, PlanView, Selector,
};
use crate::catalog::ViewDef;
use crate::error::{CoreError, Result};
use crate::invalid;
use crate::key::KeyColumn;
use crate::partition::ShardCheck;
use crate::row::{ReadRow, RowLayout, SlotPos, ValueRef};
use crate::stats::ViewStats;
use crate::store::Store;
use crate::types::Status;
use std::time::{SystemTime, UNIX_EPOCH};

/// Entity columns of a request, keyed by join-key name.
#[derive(Debug, Clone, Default)]
pub struct Entities {
    pub columns: Vec<(String, KeyColumn)>,
    /// Columns whose values cannot be join keys (floats, booleans, nulls): request data of
    /// on-demand views, or a mistake reported as such once the plan shows which.
    pub values: Vec<(String, ValueColumn)>,
}

/// One value of a request-data column, as the request wrote it.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    /// A list or an object: no request field's value; the text names it.
    Other(&'static str),
}

/// A column that cannot be a join key.
#[derive(Debug, Clone)]
pub struct ValueColumn {
    pub values: Vec<Scalar>,
    /// The error a use of this column as a join key (or no use at all) answers.
    pub not_a_key: String,
}

impl Entities {
    #[must_use]
    pub fn new(columns: Vec<(String, KeyColumn)>) -> Self {
        Self {
            columns,
            values: Vec::new(),
        }
    }

    pub fn num_rows(&self) -> usize {
        self.columns
            .first()
            .map(|c| c.1.len())
            .or_else(|| self.values.first().map(|c| c.1.values.len()))
            .unwrap_or(0)
    }

    /// The one check of a request's entity columns, before anything is read: at least one
    /// entity, columns of equal length, at most `limits.max_entities`. Returns the count.
    pub fn check(&self, limits: Limits) -> Result<usize> {
        let lens = self
            .columns
            .iter()
            .map(|(name, c)| (name, c.len()))
            .chain(self.values.iter().map(|(name, c)| (name, c.values.len())));
        let Some((first, n)) = lens.clone().next() else {
            return Err(invalid!("no entities given: 'entities' has no join key"));
        };
        for (name, len) in lens {
            if len == 0 {
                return Err(invalid!(
                    "no entities given: join key '{name}' has no values"
                ));
            }
            if len != n {
                return Err(invalid!(
                    "entities: join keys have different lengths: '{first}' has {n} values, \
                     '{name}' has {len}"
                ));
            }
        }
        if n > limits.max_entities {
            return Err(CoreError::LimitExceeded(format!(
                "{n} entities requested; the limit is {} (the server's --max-entities)",
                limits.max_entities
            )));
        }
        Ok(n)
    }
}

/// The rows read for a request, their headers parsed; cells are decoded on demand by the
/// encoders ([`Cells`]).
pub struct Answer {
    pub num_entities: usize,
    /// Per plan view, per entity.
    pub rows: Vec<Vec<RowState>>,
}

/// One entity's row in one plan view.
#[derive(Debug, Clone)]
pub enum RowState {
    /// No row stored, a tombstone, or bytes that are no row.
    NotFound,
    /// Older than the view's TTL: the row's event timestamp.
    Expired(i64),
    Live(ReadRow),
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

/// Reads every view's rows of `entities` (checked with [`Entities::check`]). On a sharded node
/// (`shard`), every entity of a view with a stream source must belong to the shard, checked on
/// the encoded keys before any read, else the whole request is refused.
pub fn execute(
    store: &Store,
    plan: &Plan,
    entities: &Entities,
    now_us: i64,
    shard: Option<&ShardCheck>,
) -> Result<Answer> {
    let n = entities.num_rows();
    let keys = plan
        .views
        .iter()
        .map(|pv| {
            if pv.def.on_demand.is_some() {
                Ok(Vec::new())
            } else {
                encode_keys(&pv.def, &pv.key_columns, entities, n)
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if let Some(shard) = shard {
        for (pv, keys) in plan.views.iter().zip(&keys) {
            if shard.partitions.contains_key(&pv.def.name) {
                shard.check(&pv.def.name, keys, |i| describe_entity(pv, entities, i))?;
            }
        }
    }
    let mut rows = Vec::with_capacity(plan.views.len());
    for (pv, keys) in plan.views.iter().zip(&keys) {
        if pv.def.on_demand.is_some() {
            // Filled from the transform's output (`serve::Pending::set_output`).
            rows.push(vec![RowState::NotFound; n]);
            continue;
        }
        let ttl = pv.def.ttl_micros;
        rows.push(
            store
                .lookup(&pv.def, keys)?
                .into_iter()
                .map(|r| match r.and_then(ReadRow::live) {
                    None => RowState::NotFound,
                    Some(row) if ttl > 0 && now_us - row.event_ts() > ttl => {
                        RowState::Expired(row.event_ts())
                    }
                    Some(row) => RowState::Live(row),
                })
                .collect(),
        );
    }
    Ok(Answer {
        num_entities: n,
        rows,
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
    /// The answer's cells, as the encoders read them.
    pub fn cells<'a>(&'a self, plan: &'a Plan) -> Cells<'a> {
        Cells { plan, answer: self }
    }

    /// Values per status and the newest event time, per plan view. Per row it tests the
    /// presence bitmap of the requested slots (a few bytes) instead of visiting every value.
    pub fn view_stats(&self, plan: &Plan) -> Vec<ViewStats> {
        let mut per_view = vec![ViewStats::default(); plan.views.len()];
        for (v, pv) in plan.views.iter().enumerate() {
            let slots: Vec<usize> = plan
                .columns
                .iter()
                .filter(|c| c.view == v)
                .map(|c| c.slot)
                .collect();
            let ncols = slots.len() as u64;
            let layout = &pv.def.layout;
            let mask = layout.presence_mask(slots.iter().copied());
            let distinct: u64 = mask.iter().map(|b| u64::from(b.count_ones())).sum();
            let st = &mut per_view[v];
            for row in &self.rows[v] {
                let row = match row {
                    RowState::NotFound => {
                        st.values[Status::NotFound as usize] += ncols;
                        continue;
                    }
                    RowState::Expired(ts) => {
                        st.newest_event_ts = st.newest_event_ts.max(*ts);
                        st.values[Status::OutsideMaxAge as usize] += ncols;
                        continue;
                    }
                    RowState::Live(row) => row,
                };
                st.newest_event_ts = st.newest_event_ts.max(row.event_ts());
                let view = row.view();
                if let Some(present) = view.count_present(&mask, layout.len()) {
                    let nulls = distinct - present;
                    st.values[Status::NullValue as usize] += nulls;
                    st.values[Status::Present as usize] += ncols - nulls;
                } else {
                    // An old row without some of the requested (newer) features, or a short one.
                    for &s in &slots {
                        let status = if s >= view.n_slots() {
                            Status::NotFound
                        } else if view.is_present(s) {
                            Status::Present
                        } else {
                            Status::NullValue
                        };
                        st.values[status as usize] += 1;
                    }
                }
            }
        }
        per_view
    }
}

/// An answer read cell by cell: rows of the answer, slots of the plan.
#[derive(Clone, Copy)]
pub struct Cells<'a> {
    plan: &'a Plan,
    answer: &'a Answer,
}

/// Where answer column `c`'s values live: the plan view and the slot in its layout.
#[derive(Clone, Copy)]
pub struct CellCol<'a> {
    view: usize,
    layout: &'a RowLayout,
    at: SlotPos,
}

impl<'a> Cells<'a> {
    #[inline]
    pub fn col(&self, c: usize) -> CellCol<'a> {
        let col = &self.plan.columns[c];
        let layout = &self.plan.views[col.view].def.layout;
        CellCol {
            view: col.view,
            layout,
            at: layout.slot_pos(col.slot),
        }
    }

    /// Where the values of `col` (a column of this plan's views, not necessarily answered)
    /// live.
    #[inline]
    pub fn col_for(&self, col: &OutColumn) -> CellCol<'a> {
        let layout = &self.plan.views[col.view].def.layout;
        CellCol {
            view: col.view,
            layout,
            at: layout.slot_pos(col.slot),
        }
    }

    /// The state of entity `e`'s row in plan view `view`.
    #[inline]
    pub fn row(&self, view: usize, e: usize) -> &'a RowState {
        &self.answer.rows[view][e]
    }

    /// A fixed-width slot of a full-width row inline (the encoders' common case), everything
    /// else out of line: with the whole match inline the compiler kept `cell` out of the
    /// encoders' loops, and the W2 Feast gRPC and JSON encodes ran 35-50 % slower
    /// (`cargo bench --bench serving -- 'w2/.*/encode$'`, perf annotate). Forced inline, the
    /// small fast path took the Feast gRPC encode from 749 to 667 us (the base commit: 513).
    #[allow(clippy::inline_always)] // measured, see above
    #[inline(always)]
    pub fn cell(&self, col: CellCol<'a>, e: usize) -> Cell<'a> {
        if let RowState::Live(row) = self.row(col.view, e) {
            if let Some(value) = row.view().fixed_at(col.at) {
                let event_ts = row.event_ts();
                let status = if matches!(value, ValueRef::Null) {
                    Status::NullValue
                } else {
                    Status::Present
                };
                return Cell {
                    status,
                    value,
                    event_ts,
                };
            }
        }
        self.cell_general(col, e)
    }

    #[inline(never)]
    fn cell_general(&self, col: CellCol<'a>, e: usize) -> Cell<'a> {
        match self.row(col.view, e) {
            RowState::NotFound => Cell {
                status: Status::NotFound,
                value: ValueRef::Null,
                event_ts: 0,
            },
            RowState::Expired(ts) => Cell {
                status: Status::OutsideMaxAge,
                value: ValueRef::Null,
                event_ts: *ts,
            },
            RowState::Live(row) => {
                let event_ts = row.event_ts();
                let (status, value) = match row.view().value_at(col.layout, col.at) {
                    ValueRef::Missing => (Status::NotFound, ValueRef::Null),
                    ValueRef::Null => (Status::NullValue, ValueRef::Null),
                    v => (Status::Present, v),
                };
                Cell {
                    status,
                    value,
                    event_ts,
                }
            }
        }
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
/// router gathered from the shards (`route::Gathered`).
pub trait CellSource {
    /// Per-column constants, computed once per column by `col` and passed back to `cell` /
    /// `f32`.
    type Col: Copy;
    fn num_entities(&self) -> usize;
    fn col(&self, c: usize) -> Self::Col;
    fn cell(&self, col: Self::Col, e: usize) -> Cell<'_>;
    /// The dense float32 view of a cell (NaN unless PRESENT).
    #[inline]
    fn f32(&self, col: Self::Col, e: usize) -> (f32, Status, i64) {
        dense_f32(self.cell(col, e))
    }
    /// [`Self::cell`] of every entity for column `col`: `put(e, cell)`, entity by entity. The
    /// column-major encoders' loop (Feast's layouts, v1 columns); a source may hoist what
    /// finding a row costs out of it.
    #[inline]
    fn column(&self, col: Self::Col, mut put: impl FnMut(usize, Cell<'_>)) {
        for e in 0..self.num_entities() {
            put(e, self.cell(col, e));
        }
    }
    /// [`Self::f32`] of every entity and every column of `cols`: `put(e, i, value, status,
    /// event_ts)` for entity `e` and `cols[i]`, entity by entity. The dense encoders' loop; a
    /// source may find each row once per run of columns of one view instead of once per cell.
    #[inline]
    fn f32_rows(&self, cols: &[Self::Col], mut put: impl FnMut(usize, usize, f32, Status, i64)) {
        for e in 0..self.num_entities() {
            for (i, col) in cols.iter().enumerate() {
                let (x, s, t) = self.f32(*col, e);
                put(e, i, x, s, t);
            }
        }
    }
}

impl<'a> CellSource for Cells<'a> {
    type Col = CellCol<'a>;

    #[inline]
    fn num_entities(&self) -> usize {
        self.answer.num_entities
    }

    #[inline]
    fn col(&self, c: usize) -> CellCol<'a> {
        Cells::col(self, c)
    }

    #[allow(clippy::inline_always)] // measured, see `Cells::cell`
    #[inline(always)]
    fn cell(&self, col: CellCol<'a>, e: usize) -> Cell<'_> {
        Cells::cell(self, col, e)
    }

    /// The W2 dense layout's common case, a float32 slot of a full-width row, without going
    /// through [`Cell`] (measured: the general path doubles the v1 dense encode).
    #[inline]
    fn f32(&self, col: CellCol<'a>, e: usize) -> (f32, Status, i64) {
        if let RowState::Live(row) = self.row(col.view, e) {
            match row.view().f32_at(col.at) {
                Some(Some(x)) => return (x, Status::Present, row.event_ts()),
                Some(None) => return (f32::NAN, Status::NullValue, row.event_ts()),
                None => {}
            }
        }
        dense_f32(self.cell(col, e))
    }

    /// The view's rows are looked up once per column, not through `answer.rows[view]` per cell
    /// (which the writes to the output buffer make the compiler reload every time). Measured
    /// on the W2 Feast gRPC encode, interleaved runs in one sitting against the commit before
    /// the restructuring: with the per-entity timestamp cache alone 555 / 514 / 632 us against
    /// 501 / 578 / 598; with this too, 362 / 488 / 398 / 373 against 786 / 708 / 707 / 719.
    #[inline]
    fn column(&self, col: CellCol<'a>, mut put: impl FnMut(usize, Cell<'_>)) {
        let rows = &self.answer.rows[col.view];
        for (e, state) in rows.iter().enumerate() {
            if let RowState::Live(row) = state {
                if let Some(value) = row.view().fixed_at(col.at) {
                    let status = if matches!(value, ValueRef::Null) {
                        Status::NullValue
                    } else {
                        Status::Present
                    };
                    put(
                        e,
                        Cell {
                            status,
                            value,
                            event_ts: row.event_ts(),
                        },
                    );
                    continue;
                }
            }
            put(e, self.cell_general(col, e));
        }
    }

    /// W2's dense answer: 200 float32 columns of one view. Each row is found once per run of
    /// columns of its view (two indexings, the enum, the full-width check), and the run's cells
    /// are read from its bytes in a tight loop. Measured with perf: finding the row per cell
    /// kept the row's pointer and length out of registers, and made the v1 dense encode 1.6x
    /// slower than this (perf annotate of `encode_proto::v1_dense`).
    #[inline]
    fn f32_rows(&self, cols: &[CellCol<'a>], mut put: impl FnMut(usize, usize, f32, Status, i64)) {
        // runs of consecutive columns of one view: (first column, end)
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (i, c) in cols.iter().enumerate() {
            match runs.last_mut() {
                Some(r) if cols[r.0].view == c.view => r.1 = i + 1,
                _ => runs.push((i, i + 1)),
            }
        }
        for e in 0..self.answer.num_entities {
            for &(start, end) in &runs {
                let run = &cols[start..end];
                if let RowState::Live(r) = self.row(run[0].view, e) {
                    let (row, ts) = (r.view(), r.event_ts());
                    for (k, col) in run.iter().enumerate() {
                        match row.f32_at(col.at) {
                            Some(Some(x)) => put(e, start + k, x, Status::Present, ts),
                            Some(None) => put(e, start + k, f32::NAN, Status::NullValue, ts),
                            None => {
                                let (value, status, ts) = dense_f32(self.cell(*col, e));
                                put(e, start + k, value, status, ts);
                            }
                        }
                    }
                } else {
                    for (k, col) in run.iter().enumerate() {
                        let (value, status, ts) = dense_f32(self.cell(*col, e));
                        put(e, start + k, value, status, ts);
                    }
                }
            }
        }
    }
}
