//! The cells answer: how a node answers a router's part of a request (a `GetCellsRequest`,
//! API `Api::Cells`), and how the router reads it back. Both sides use this module: the node
//! encodes the cells of its plan ([`encode`]), the router parses each part's answer
//! ([`PartCells::parse`]) and reads its cells in request order (`route::Gathered`).
//!
//! The answer carries cells, not stored rows: a row's physical layout depends on the node's
//! schema history, the cells do not. Little-endian throughout:
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

use crate::error::{CoreError, Result};
use crate::query::{Cell, CellSource, Plan};
use crate::row::ValueRef;
use crate::types::{DType, Status};

const MAGIC: &[u8; 4] = b"FSC1";

/// One part's answer, parsed in place.
pub struct PartCells<'a> {
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
    pub fn parse(b: &'a [u8], n: usize, expect: &[(DType, u32)]) -> Result<Self> {
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

    /// Column `c`'s float32 value of row `r` and its event time, when the column is float32
    /// and the value PRESENT (the dense layout's fast path).
    #[inline]
    pub fn present_f32(&self, c: usize, r: usize) -> Option<(f32, i64)> {
        let col = &self.cols[c];
        if col.dtype != DType::Float32 || col.statuses[r] != Status::Present as u8 {
            return None;
        }
        let x = f32::from_le_bytes(col.values[r * 4..r * 4 + 4].try_into().expect("4"));
        Some((x, self.ts[col.view][r]))
    }

    #[inline]
    pub fn cell(&self, c: usize, r: usize) -> Cell<'a> {
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
pub fn encode(plan: &Plan, cells: &impl CellSource) -> Vec<u8> {
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
            out.extend_from_slice(&cells.cell(cp, e).event_ts.to_le_bytes());
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
            let cell = cells.cell(cp, e);
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
