//! Response encoders of the protobuf APIs (Feast gRPC, v1 gRPC), written straight into one
//! buffer with the wire writer of [`super::pb`]; the tests check that the bytes equal what
//! prost encodes for the same answer.

use super::pb;
use super::Prepared;
use crate::key::KeyColumn;
use crate::proto::feast;
use crate::query::CellSource;
use crate::row::ValueRef;
use crate::types::{DType, Status};

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

/// Each entity's last encoded event timestamp. The cells of one view's columns share their
/// row's event time, so a W2 answer's 20,000 timestamps are 100 distinct ones: encoding each
/// once per entity and copying it for the other 199 columns, together with the row lookup
/// hoisted out of the column loop (`CellSource::column`), took the W2 Feast gRPC encode from
/// 1.3x to 0.8x of the commit before the restructuring (407 / 396 / 522 us against
/// 515 / 629 / 495, interleaved runs of `cargo bench --bench serving --
/// 'w2/feast_grpc/encode$'`); perf had put 40 % of it in the timestamps.
struct TimestampCache {
    entries: Vec<EncodedTimestamp>,
    scratch: Vec<u8>,
}

#[derive(Clone, Copy)]
struct EncodedTimestamp {
    micros: i64,
    len: u8,
    /// field key, length, seconds (key + up to 10 bytes), nanos (key + up to 5 bytes)
    bytes: [u8; 20],
}

impl TimestampCache {
    fn new(n: usize) -> Self {
        Self {
            entries: vec![
                EncodedTimestamp {
                    micros: 0,
                    len: 0,
                    bytes: [0; 20],
                };
                n
            ],
            scratch: Vec::with_capacity(20),
        }
    }

    /// `pb_timestamp(out, 3, micros)` of entity `e`'s cell.
    #[inline]
    fn put(&mut self, out: &mut Vec<u8>, e: usize, micros: i64) {
        let entry = &mut self.entries[e];
        if entry.len == 0 || entry.micros != micros {
            self.scratch.clear();
            pb_timestamp(&mut self.scratch, 3, micros);
            let len = self.scratch.len();
            entry.bytes[..len].copy_from_slice(&self.scratch);
            entry.len = len as u8;
            entry.micros = micros;
        }
        out.extend_from_slice(&entry.bytes[..usize::from(entry.len)]);
    }
}

/// Feast gRPC: `GetOnlineFeaturesResponse`.
pub(super) fn feast(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
    let n = cells.num_entities();
    let f = p.plan.columns.len();
    let mut out = Vec::with_capacity(256 + (f + p.num_key_columns) * (16 + n * 20));
    // metadata { feature_names { val: [...] } }
    pb::nested(&mut out, 1, |out| {
        pb::nested(out, 1, |out| {
            for (name, _) in p.key_columns() {
                pb::bytes(out, 1, name.as_bytes());
            }
            for c in 0..f {
                pb::bytes(out, 1, p.feast_name(c).as_bytes());
            }
        });
    });
    for (_, col) in p.key_columns() {
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
    let mut stamps = TimestampCache::new(n);
    for c in 0..f {
        let cp = cells.col(c);
        pb::nested(&mut out, 2, |out| {
            cells.column(cp, |i, cell| {
                st[i] = cell.status as u8;
                ts[i] = if cell.status == Status::NotFound {
                    0
                } else {
                    cell.event_ts
                };
                feast_value(out, 1, cell.value);
            });
            pb::bytes(out, 2, &st);
            for (e, t) in ts.iter().enumerate() {
                stamps.put(out, e, *t);
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

/// v1 gRPC, columns layout: `GetFeatureVectorResponse` with typed columns.
pub(super) fn v1_columns(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
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
                        let cell = cells.cell(cp, i);
                        st[i] = cell.status as u8;
                        ts[i] = cell.event_ts;
                        v1_value(out, dtype, dim, cell.value);
                    }
                };
                if dtype.is_var() {
                    for i in 0..n {
                        let cell = cells.cell(cp, i);
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

/// v1 gRPC, dense layout: `GetFeatureVectorResponse` with a float32 matrix.
pub(super) fn v1_dense(p: &Prepared, cells: &impl CellSource) -> Vec<u8> {
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
        let cps: Vec<_> = (0..f).map(|c| cells.col(c)).collect();
        let (want_st, want_ts) = (p.v1.include_statuses, p.v1.include_event_timestamps);
        let mut st = vec![0u8; if want_st { cells_n } else { 0 }];
        let mut ts = vec![0u8; if want_ts { cells_n * 8 } else { 0 }];
        pb::key(out, 3, pb::LEN);
        pb::varint(out, (cells_n * 4) as u64);
        let start = out.len();
        out.resize(start + cells_n * 4, 0);
        let dst = &mut out[start..];
        cells.f32_rows(&cps, |e, c, x, s, t| {
            let k = e * f + c;
            dst[k * 4..k * 4 + 4].copy_from_slice(&x.to_le_bytes());
            if want_st {
                st[k] = s as u8;
            }
            if want_ts {
                ts[k * 8..k * 8 + 8].copy_from_slice(&t.to_le_bytes());
            }
        });
        if p.v1.include_statuses {
            pb::bytes(out, 4, &st);
        }
        if p.v1.include_event_timestamps {
            pb::bytes(out, 5, &ts);
        }
    });
    out
}
