//! Response encoders of the JSON APIs (Feast HTTP, v1 HTTP), written straight into one buffer
//! from the answer's cells.

use super::json;
use super::Prepared;
use crate::key::KeyColumn;
use crate::query::CellSource;
use crate::row::ValueRef;
use crate::types::{DType, Status};

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

/// Writes one value as JSON. `feast`: timestamp features as integer Unix seconds, as Feast's
/// feature server writes them (its `unix_timestamp_val`); otherwise RFC 3339 text.
#[inline]
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
    let f = p.num_features() + p.num_key_columns;
    256 + f * (64 + n * 56)
}

/// Feast HTTP: the answer in Feast's JSON shape.
pub(super) fn feast<C: CellSource + Sync>(
    p: &Prepared,
    cells: &C,
    shortest: bool,
    max_threads: usize,
) -> Vec<u8> {
    let threads = encode_threads(cells.num_entities() * p.plan.columns.len(), max_threads);
    feast_threads(p, cells, shortest, threads)
}

/// [`feast`] on `threads` threads.
pub(super) fn feast_threads<C: CellSource + Sync>(
    p: &Prepared,
    cells: &C,
    shortest: bool,
    threads: usize,
) -> Vec<u8> {
    let n = cells.num_entities();
    let mut out = Vec::with_capacity(json_capacity(p));
    out.extend_from_slice(b"{\"metadata\":{\"feature_names\":[");
    let mut first = true;
    for (name, _) in p.key_columns() {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::write_str(&mut out, name);
    }
    for c in 0..p.plan.columns.len() {
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        json::write_str(&mut out, &p.feast_name(c));
    }
    out.extend_from_slice(b"]},\"results\":[");
    let mut first = true;
    for (_, col) in p.key_columns() {
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
    let ncols = p.plan.columns.len();
    let threads = threads.clamp(1, ncols.max(1));
    if threads <= 1 {
        feast_columns(&mut out, cells, 0..ncols, first, shortest);
    } else {
        // Large answers: the feature columns in `threads` contiguous ranges, each encoded into
        // its own buffer on its own thread (the GIL is released around the whole call), then
        // appended in order. Text is the same byte for byte (tests: parallel_feast_json_*).
        let per = ncols.div_ceil(threads);
        let ranges: Vec<_> = (0..ncols)
            .step_by(per)
            .map(|c| c..(c + per).min(ncols))
            .collect();
        let parts: Vec<Vec<u8>> = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges[1..]
                .iter()
                .map(|r| {
                    let r = r.clone();
                    scope.spawn(move || {
                        let mut part = Vec::with_capacity(out_capacity_of(n, r.len()));
                        feast_columns(&mut part, cells, r, false, shortest);
                        part
                    })
                })
                .collect();
            feast_columns(&mut out, cells, ranges[0].clone(), first, shortest);
            handles
                .into_iter()
                .map(|h| h.join().expect("an encode thread panicked"))
                .collect()
        });
        out.reserve(parts.iter().map(Vec::len).sum::<usize>() + 2);
        for part in &parts {
            out.extend_from_slice(part);
        }
    }
    out.extend_from_slice(b"]}");
    out
}

/// Feast HTTP: the result entries of feature columns `range`, each preceded by a comma unless
/// `first` (the very first entry of the results).
fn feast_columns<C: CellSource>(
    out: &mut Vec<u8>,
    cells: &C,
    range: std::ops::Range<usize>,
    mut first: bool,
    shortest: bool,
) {
    let n = cells.num_entities();
    let mut st = vec![0u8; n];
    let mut ts = vec![0i64; n];
    let mut tstext = TsText::new();
    for c in range {
        let cp = cells.col(c);
        if !std::mem::take(&mut first) {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"values\":[");
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let cell = cells.cell(cp, i);
            st[i] = cell.status as u8;
            ts[i] = if cell.status == Status::NotFound {
                0
            } else {
                cell.event_ts
            };
            json_value(out, cell.value, shortest, true);
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
            tstext.write(out, *t);
        }
        out.extend_from_slice(b"]}");
    }
}

/// Rough size of `cols` Feast JSON columns of `n` entities.
fn out_capacity_of(n: usize, cols: usize) -> usize {
    cols * (64 + n * 56)
}

/// Below this many answer cells an answer is encoded on the calling thread: a thread costs
/// ~15-30 us to start and join, a W1 answer (100 cells) takes ~5 us to encode in all.
const CELLS_PER_THREAD: usize = 8_000;

/// Threads for encoding an answer of `cells` cells: one per `CELLS_PER_THREAD`, at most
/// `max_threads` and the machine's cores. Off by default (`--encode-threads 1`): on the
/// shared 2-core machine, with no core free beside the event loop and the load generator, a
/// second thread made the W2 encode slower (docs/benchmarks.md, issue 18).
fn encode_threads(cells: usize, max_threads: usize) -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    (cells / CELLS_PER_THREAD).clamp(1, cores.min(max_threads).max(1))
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

/// v1 HTTP, columns layout.
pub(super) fn v1_columns(p: &Prepared, cells: &impl CellSource, shortest: bool) -> Vec<u8> {
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
        // The column's type, so that a reader can tell bytes (base64) from text, a timestamp
        // from a string and int32 from int64 without the registry.
        let col = &p.plan.columns[c];
        out.extend_from_slice(b"{\"dtype\":\"");
        out.extend_from_slice(col.dtype.name().as_bytes());
        out.push(b'"');
        if col.dtype == DType::Float32Array {
            out.extend_from_slice(b",\"dim\":");
            json::write_u64(&mut out, u64::from(col.dim));
        }
        out.extend_from_slice(b",\"values\":[");
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            let cell = cells.cell(cp, i);
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

/// v1 HTTP, dense layout.
pub(super) fn v1_dense(p: &Prepared, cells: &impl CellSource, shortest: bool) -> Vec<u8> {
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
    let cps: Vec<_> = (0..f).map(|c| cells.col(c)).collect();
    for e in 0..n {
        if e > 0 {
            out.push(b',');
        }
        out.push(b'[');
        for (c, cp) in cps.iter().enumerate() {
            if c > 0 {
                out.push(b',');
            }
            let (x, s, t) = cells.f32(*cp, e);
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
