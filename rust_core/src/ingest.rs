//! Stream ingestion: a batch of Kafka records for one feature view decoded into rows and
//! tombstones, and written with the consumer's offsets in one atomic [`Store::write`].
//!
//! Record formats (the value of a record):
//! - `json`: one UTF-8 object per record: the view's join keys, `event_timestamp` (an RFC 3339
//!   string such as `"2024-01-01T00:00:00.5Z"`, or an integer of **microseconds** since the
//!   Unix epoch), and features by name. A feature that is absent or `null` is stored as null.
//!   Types: numbers for numeric features (integers must be integral and in range; float32
//!   must be within float32's range), `true`/`false`, strings, base64 (standard alphabet,
//!   padded) for `bytes`, RFC 3339 or integer microseconds for `timestamp`, arrays of exactly
//!   `dim` numbers for `float32_array`. An optional `"feature_view"` string names the view; a
//!   record naming another view is ignored (counted), so several views can share a topic.
//! - `protobuf`: one `feature_serving.v1.FeatureRow` (`proto/feature_serving/v1/feature_row.proto`).
//!
//! A record whose value is null (a Kafka tombstone) deletes the row of its key. The record key
//! is the encoded entity key of [`crate::key`] (the view's join-key values in order; integers
//! as big-endian with the sign bit flipped, strings and bytes length-prefixed), the bytes
//! [`encode_entity_key`] returns; the delete is timed by the record's Kafka timestamp, so it
//! follows the same newer-wins merge rule as rows. The key of a record carrying a value is not
//! interpreted (the row names its join keys), though producers should set it the same way so
//! that every version of an entity lands in one partition.
//!
//! A record that cannot be decoded or violates the view's schema (unknown field, missing join
//! key or timestamp, wrong type, out-of-range number) is reported as `(index, reason)` and
//! changes nothing; the rest of the batch is applied.
//!
//! With a [`PartitionCheck`] (the loader always passes one, with the topic's partition count),
//! every decoded row or tombstone is checked against the partition it arrived on: its entity
//! key must land there under Kafka's murmur2 partitioner ([`crate::partition`]), which is what
//! shard ownership and serving nodes assume. Records that do not are listed in
//! [`Decoded::misrouted`] (a producer with another partitioner, e.g. librdkafka's default
//! crc32, or keys that are not the encoded entity key), and left out of the write if the check
//! says so. The check hashes the key the decoder has already built: a few nanoseconds a record.

use crate::catalog::{did_you_mean, ViewDef};
use crate::error::Result;
use crate::invalid;
use crate::key::{decode_key, encode_bytes, encode_i32, encode_i64};
use crate::partition::partition_of;
use crate::proto::v1::{self, entity_value, feature_value::Value as V};
use crate::row::{tombstone, BatchRowWriter};
use crate::store::{Store, WriteStats};
use crate::types::{DType, KeyType};
use base64::Engine as _;
use prost::Message as _;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;
use std::num::NonZeroU32;

/// The field of a JSON record holding its event time.
pub const EVENT_TIMESTAMP: &str = "event_timestamp";
/// The optional field of a JSON record naming its feature view.
pub const FEATURE_VIEW: &str = "feature_view";
/// Where a row's event time sits in its header (see `row.rs`: version, flags, `n_slots`, ts).
const ROW_EVENT_TS: std::ops::Range<usize> = 4..12;

/// Encoding of record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Protobuf,
}

impl Format {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "json" => Ok(Self::Json),
            "protobuf" => Ok(Self::Protobuf),
            other => Err(invalid!(
                "unknown record format '{other}' (expected json or protobuf)"
            )),
        }
    }
}

/// One consumed record, borrowing its key and value.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub partition: i32,
    pub offset: i64,
    /// The Kafka timestamp in milliseconds since the Unix epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
}

/// Checks that each record arrived on the partition its entity key belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionCheck {
    /// The topic's partition count.
    pub num_partitions: NonZeroU32,
    /// Leave misrouted records out of the rows to write (they are reported either way).
    pub drop: bool,
}

/// A record whose entity key belongs to another partition than the one it arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Misrouted {
    /// Index of the record in the batch.
    pub index: usize,
    /// The partition its entity key belongs to (murmur2 over the topic's partition count).
    pub expected: u32,
    /// The record key equals the entity key of the row (so the producer's partitioner is the
    /// culprit); false when the record has no key or another one.
    pub key_matches: bool,
}

/// A decoded batch: hot-tier keys and encoded rows (or tombstones) ready for [`Store::write`],
/// and what happened to every record.
#[derive(Debug, Default)]
pub struct Decoded {
    pub keys: Vec<Vec<u8>>,
    pub rows: Vec<Vec<u8>>,
    /// Records decoded into rows / into tombstones (to be written: without dropped misrouted
    /// records).
    pub upserts: u64,
    pub tombstones: u64,
    /// Records naming another feature view (left to that view's consumer).
    pub ignored: u64,
    /// Records that change nothing: (index in the batch, reason).
    pub errors: Vec<(usize, String)>,
    /// Per partition (ascending), the offset after the last record of the batch: where the
    /// consumer resumes once this batch is applied.
    pub next_offsets: Vec<(i32, i64)>,
    /// Newest event time (us) among the rows and tombstones.
    pub max_event_ts: Option<i64>,
    /// Records on another partition than their entity key's (with a [`PartitionCheck`]).
    pub misrouted: Vec<Misrouted>,
}

/// Records per decoding thread below which a batch is decoded on the calling thread alone.
const MIN_RECORDS_PER_THREAD: usize = 256;

/// Decodes `records` for `view`. Never fails as a whole: bad records are listed in `errors`.
/// Large batches are split over the machine's cores (the GIL is released around this call).
pub fn decode(view: &ViewDef, format: Format, records: &[Record<'_>]) -> Decoded {
    decode_checked(view, format, records, None)
}

/// [`decode`], checking each record's partition when `check` is given (see the module docs).
pub fn decode_checked(
    view: &ViewDef,
    format: Format,
    records: &[Record<'_>],
    check: Option<PartitionCheck>,
) -> Decoded {
    let threads = std::thread::available_parallelism()
        .map_or(1, std::num::NonZeroUsize::get)
        .min(records.len() / MIN_RECORDS_PER_THREAD)
        .min(8);
    if threads <= 1 {
        return decode_serial(view, format, records, check);
    }
    let chunk = records.len().div_ceil(threads);
    let parts: Vec<Decoded> = std::thread::scope(|s| {
        let handles: Vec<_> = records
            .chunks(chunk)
            .map(|c| s.spawn(move || decode_serial(view, format, c, check)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("decoding thread panicked"))
            .collect()
    });
    let mut out = Decoded::default();
    out.keys.reserve(records.len());
    out.rows.reserve(records.len());
    for (i, mut p) in parts.into_iter().enumerate() {
        let base = i * chunk;
        out.keys.append(&mut p.keys);
        out.rows.append(&mut p.rows);
        out.upserts += p.upserts;
        out.tombstones += p.tombstones;
        out.ignored += p.ignored;
        out.errors
            .extend(p.errors.into_iter().map(|(j, e)| (base + j, e)));
        out.misrouted
            .extend(p.misrouted.into_iter().map(|m| Misrouted {
                index: base + m.index,
                ..m
            }));
        out.max_event_ts = out.max_event_ts.max(p.max_event_ts);
    }
    out.next_offsets = next_offsets(records);
    out
}

fn decode_serial(
    view: &ViewDef,
    format: Format,
    records: &[Record<'_>],
    check: Option<PartitionCheck>,
) -> Decoded {
    let n = records.len();
    let layout = &view.layout;
    let mut w = BatchRowWriter::new(layout, &vec![0; n]);
    let mut scratch = Scratch::new(view);
    // Per record: Some((hot key, event ts, is_tombstone)) when it is to be written.
    let mut kept: Vec<Option<(Vec<u8>, i64, bool)>> = Vec::with_capacity(n);
    let mut out = Decoded::default();
    for (i, rec) in records.iter().enumerate() {
        let result = match rec.value {
            None => tombstone_key(view, rec).map(|(k, ts)| Some((k, ts, true))),
            Some(value) => {
                scratch.reset();
                let parsed = match format {
                    Format::Json => decode_json(view, value, &mut w, i, &mut scratch),
                    Format::Protobuf => decode_proto(view, value, &mut w, i, &mut scratch),
                };
                parsed.and_then(|()| scratch.finish(view, &mut w, i))
            }
        };
        match result {
            Ok(Some(k)) => kept.push(Some(k)),
            Ok(None) => {
                out.ignored += 1;
                kept.push(None);
            }
            Err(reason) => {
                out.errors.push((i, reason));
                kept.push(None);
            }
        }
    }
    let rows = w.finish();
    out.keys.reserve(n);
    out.rows.reserve(n);
    for (i, (mut row, k)) in rows.into_iter().zip(kept).enumerate() {
        let Some((key, ts, tomb)) = k else { continue };
        if let Some(c) = check {
            // the hot key is the 4-byte view prefix and the entity key, the bytes a producer
            // keys the record with (and serving nodes hash for shard ownership)
            let entity = key.get(4..).unwrap_or_default();
            let expected = partition_of(entity, c.num_partitions);
            if i32::try_from(expected).ok() != Some(records[i].partition) {
                out.misrouted.push(Misrouted {
                    index: i,
                    expected,
                    key_matches: records[i].key == Some(entity),
                });
                if c.drop {
                    continue;
                }
            }
        }
        if tomb {
            out.tombstones += 1;
            row = tombstone(ts);
        } else {
            out.upserts += 1;
            row[ROW_EVENT_TS].copy_from_slice(&ts.to_le_bytes());
        }
        out.max_event_ts = Some(out.max_event_ts.map_or(ts, |m| m.max(ts)));
        out.keys.push(key);
        out.rows.push(row);
    }
    out.next_offsets = next_offsets(records);
    out
}

fn next_offsets(records: &[Record<'_>]) -> Vec<(i32, i64)> {
    let mut v: Vec<(i32, i64)> = Vec::new();
    for r in records {
        match v.iter_mut().find(|(p, _)| *p == r.partition) {
            Some(e) => e.1 = e.1.max(r.offset + 1),
            None => v.push((r.partition, r.offset + 1)),
        }
    }
    v.sort_unstable();
    v
}

/// Decodes `records` and writes them with `meta` (the consumer's offsets) in one atomic write.
pub fn ingest(
    store: &Store,
    view: &str,
    format: Format,
    records: &[Record<'_>],
    meta: &[(String, Vec<u8>)],
) -> Result<(Decoded, WriteStats)> {
    let cat = store.catalog();
    let def = cat.view(view)?;
    let mut d = decode(def, format, records);
    let stats = write(store, def, &mut d, meta)?;
    Ok((d, stats))
}

/// Writes the rows of a decoded batch (taking them out of `d`) and `meta` atomically.
pub fn write(
    store: &Store,
    view: &ViewDef,
    d: &mut Decoded,
    meta: &[(String, Vec<u8>)],
) -> Result<WriteStats> {
    let keys = std::mem::take(&mut d.keys);
    let rows = std::mem::take(&mut d.rows);
    if keys.is_empty() && meta.is_empty() {
        return Ok(WriteStats::default());
    }
    store.write(view, &keys, rows, meta)
}

/// A join-key value given by a caller (the producer helper).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyInput<'a> {
    Int(i64),
    Str(&'a str),
    Bytes(&'a [u8]),
}

/// The record key of an entity: its join-key values, in the view's order, encoded as the store
/// encodes entity keys (without the store's internal view prefix).
pub fn encode_entity_key(types: &[(String, KeyType)], values: &[KeyInput<'_>]) -> Result<Vec<u8>> {
    if types.len() != values.len() {
        return Err(invalid!(
            "expected {} join key value(s) ({}), got {}",
            types.len(),
            types
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            values.len()
        ));
    }
    let mut out = Vec::with_capacity(8 * types.len());
    for ((name, ty), v) in types.iter().zip(values) {
        match (ty, v) {
            (KeyType::Int64, KeyInput::Int(x)) => encode_i64(*x, &mut out),
            (KeyType::Int32, KeyInput::Int(x)) => encode_i32(
                i32::try_from(*x)
                    .map_err(|_| invalid!("join key '{name}': value {x} does not fit int32"))?,
                &mut out,
            ),
            (KeyType::String, KeyInput::Str(s)) => encode_bytes(s.as_bytes(), &mut out),
            (KeyType::Bytes, KeyInput::Bytes(b)) => encode_bytes(b, &mut out),
            (ty, v) => {
                let given = match v {
                    KeyInput::Int(_) => "an integer",
                    KeyInput::Str(_) => "a string",
                    KeyInput::Bytes(_) => "bytes",
                };
                return Err(invalid!(
                    "join key '{name}' has type {} but {given} was given",
                    ty.name()
                ));
            }
        }
    }
    Ok(out)
}

// --------------------------------------------------------------------------------------------
// per-record decoding

fn tombstone_key(view: &ViewDef, rec: &Record<'_>) -> Result<(Vec<u8>, i64), String> {
    let key = rec
        .key
        .ok_or("tombstone (null value) without a key: nothing to delete")?;
    let types: Vec<KeyType> = view.join_keys.iter().map(|(_, t)| *t).collect();
    if decode_key(key, &types).is_none() {
        return Err(format!(
            "tombstone key ({} bytes) is not an encoded entity key of view '{}' (join keys {})",
            key.len(),
            view.name,
            key_list(view)
        ));
    }
    let ms = rec
        .timestamp_ms
        .ok_or("tombstone without a Kafka timestamp: cannot order the delete")?;
    let mut k = Vec::with_capacity(4 + key.len());
    k.extend_from_slice(&view.hot_prefix());
    k.extend_from_slice(key);
    Ok((k, ms.saturating_mul(1000)))
}

fn key_list(view: &ViewDef) -> String {
    view.join_keys
        .iter()
        .map(|(n, t)| format!("{n}:{}", t.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Per-record state shared by both formats.
struct Scratch {
    /// Encoded value of each join key, in the view's order.
    keys: Vec<Option<Vec<u8>>>,
    ts: Option<i64>,
    /// Values of string / bytes slots, written in slot order once the record is complete.
    var: Vec<Option<Vec<u8>>>,
    var_slots: Vec<usize>,
    other_view: bool,
    unknown: Option<String>,
    /// Index in `view.features` of the feature expected next in a JSON record.
    hint: usize,
    /// Slot -> index in `view.features`.
    feature_of_slot: Vec<usize>,
    /// Numeric values found by the JSON fast path: (slot, little-endian bytes, width).
    fast: Vec<(usize, [u8; 8], usize)>,
}

impl Scratch {
    fn new(view: &ViewDef) -> Self {
        let slots = view.layout.slots();
        Self {
            keys: vec![None; view.join_keys.len()],
            ts: None,
            var: vec![None; slots.len()],
            var_slots: (0..slots.len())
                .filter(|&s| slots[s].dtype.is_var())
                .collect(),
            other_view: false,
            unknown: None,
            hint: 0,
            fast: Vec::with_capacity(view.features.len()),
            feature_of_slot: {
                let mut v = vec![usize::MAX; slots.len()];
                for (i, (_, slot)) in view.features.iter().enumerate() {
                    v[*slot] = i;
                }
                v
            },
        }
    }

    fn feature_index(&self, slot: usize) -> usize {
        self.feature_of_slot[slot]
    }

    fn reset(&mut self) {
        self.keys.iter_mut().for_each(|k| *k = None);
        self.ts = None;
        for &s in &self.var_slots {
            self.var[s] = None;
        }
        self.other_view = false;
        self.unknown = None;
        self.hint = 0;
        self.fast.clear();
    }

    /// Checks completeness and writes the var slots; `Ok(None)` for a record of another view.
    fn finish(
        &mut self,
        view: &ViewDef,
        w: &mut BatchRowWriter<'_>,
        row: usize,
    ) -> Result<Option<(Vec<u8>, i64, bool)>, String> {
        if self.other_view {
            return Ok(None);
        }
        if let Some(name) = &self.unknown {
            return Err(format!(
                "unknown field '{name}': not a join key, feature or '{EVENT_TIMESTAMP}' of view \
                 '{}'{}",
                view.name,
                did_you_mean(
                    name,
                    view.join_keys
                        .iter()
                        .map(|(n, _)| n.as_str())
                        .chain(view.features.iter().map(|(n, _)| n.as_str()))
                        .chain([EVENT_TIMESTAMP])
                )
            ));
        }
        let mut key = Vec::with_capacity(4 + 8 * self.keys.len());
        key.extend_from_slice(&view.hot_prefix());
        for ((name, _), k) in view.join_keys.iter().zip(&self.keys) {
            match k {
                Some(b) => key.extend_from_slice(b),
                None => return Err(format!("missing join key '{name}'")),
            }
        }
        let ts = self
            .ts
            .ok_or_else(|| format!("missing '{EVENT_TIMESTAMP}'"))?;
        for &s in &self.var_slots {
            w.set_var(row, s, self.var[s].take().as_deref());
        }
        Ok(Some((key, ts, false)))
    }
}

fn f32_in_range(x: f64, name: &str) -> Result<f32, String> {
    let f = x as f32;
    if f.is_finite() || !x.is_finite() {
        Ok(f)
    } else {
        Err(format!(
            "feature '{name}': {x} is outside the range of float32"
        ))
    }
}

fn int32_in_range(x: i64, name: &str) -> Result<i32, String> {
    i32::try_from(x).map_err(|_| format!("feature '{name}': {x} does not fit int32"))
}

// ----- protobuf -----------------------------------------------------------------------------

fn decode_proto(
    view: &ViewDef,
    value: &[u8],
    w: &mut BatchRowWriter<'_>,
    row: usize,
    st: &mut Scratch,
) -> Result<(), String> {
    let msg = v1::FeatureRow::decode(value)
        .map_err(|e| format!("not a feature_serving.v1.FeatureRow: {e}"))?;
    if !msg.feature_view.is_empty() && msg.feature_view != view.name {
        st.other_view = true;
        return Ok(());
    }
    if msg.event_timestamp_micros == 0 {
        return Err("event_timestamp_micros is required (0 or unset)".into());
    }
    st.ts = Some(msg.event_timestamp_micros);
    for (name, v) in &msg.join_keys {
        let Some(pos) = view.join_keys.iter().position(|(n, _)| n == name) else {
            return Err(format!(
                "unknown join key '{name}' (view '{}' has {})",
                view.name,
                key_list(view)
            ));
        };
        let ty = view.join_keys[pos].1;
        let mut b = Vec::with_capacity(8);
        match (&v.value, ty) {
            (Some(entity_value::Value::Int64Value(x)), KeyType::Int64) => encode_i64(*x, &mut b),
            (Some(entity_value::Value::Int32Value(x)), KeyType::Int64) => {
                encode_i64(i64::from(*x), &mut b);
            }
            (Some(entity_value::Value::Int32Value(x)), KeyType::Int32) => encode_i32(*x, &mut b),
            (Some(entity_value::Value::Int64Value(x)), KeyType::Int32) => encode_i32(
                i32::try_from(*x)
                    .map_err(|_| format!("join key '{name}': {x} does not fit int32"))?,
                &mut b,
            ),
            (Some(entity_value::Value::StringValue(s)), KeyType::String) => {
                encode_bytes(s.as_bytes(), &mut b);
            }
            (Some(entity_value::Value::BytesValue(s)), KeyType::Bytes) => encode_bytes(s, &mut b),
            (None, _) => return Err(format!("join key '{name}' has no value")),
            (Some(other), ty) => {
                let given = match other {
                    entity_value::Value::Int64Value(_) => "int64",
                    entity_value::Value::Int32Value(_) => "int32",
                    entity_value::Value::StringValue(_) => "string",
                    entity_value::Value::BytesValue(_) => "bytes",
                };
                return Err(format!(
                    "join key '{name}' has type {} but the row gives {given}",
                    ty.name()
                ));
            }
        }
        st.keys[pos] = Some(b);
    }
    for (name, fv) in &msg.features {
        let Some(&slot) = view.by_name.get(name.as_str()) else {
            st.unknown.get_or_insert_with(|| name.clone());
            continue;
        };
        let spec = view.layout.slots()[slot];
        let Some(v) = &fv.value else { continue };
        match (v, spec.dtype) {
            (V::NullValue(_), _) => {}
            (V::BoolValue(x), DType::Bool) => w.set_fixed(row, slot, &[u8::from(*x)]),
            (V::Int32Value(x), DType::Int32) => w.set_fixed(row, slot, &x.to_le_bytes()),
            (V::Int32Value(x), DType::Int64) => {
                w.set_fixed(row, slot, &i64::from(*x).to_le_bytes());
            }
            (V::Int64Value(x), DType::Int64) | (V::TimestampMicrosValue(x), DType::Timestamp) => {
                w.set_fixed(row, slot, &x.to_le_bytes());
            }
            (V::FloatValue(x), DType::Float32) => w.set_fixed(row, slot, &x.to_le_bytes()),
            (V::FloatValue(x), DType::Float64) => {
                w.set_fixed(row, slot, &f64::from(*x).to_le_bytes());
            }
            (V::DoubleValue(x), DType::Float64) => w.set_fixed(row, slot, &x.to_le_bytes()),
            (V::StringValue(s), DType::String) => st.var[slot] = Some(s.as_bytes().to_vec()),
            (V::BytesValue(b), DType::Bytes) => st.var[slot] = Some(b.clone()),
            (V::FloatArrayValue(a), DType::Float32Array) => {
                if a.values.len() != spec.dim as usize {
                    return Err(format!(
                        "feature '{name}': array of {} elements, expected {}",
                        a.values.len(),
                        spec.dim
                    ));
                }
                let b: Vec<u8> = a.values.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.set_fixed(row, slot, &b);
            }
            (v, dtype) => {
                let given = match v {
                    V::BoolValue(_) => "bool_value",
                    V::Int32Value(_) => "int32_value",
                    V::Int64Value(_) => "int64_value",
                    V::FloatValue(_) => "float_value",
                    V::DoubleValue(_) => "double_value",
                    V::StringValue(_) => "string_value",
                    V::BytesValue(_) => "bytes_value",
                    V::TimestampMicrosValue(_) => "timestamp_micros_value",
                    V::FloatArrayValue(_) => "float_array_value",
                    V::NullValue(_) => "null_value",
                };
                return Err(format!(
                    "feature '{name}' has type {} but the row gives {given}",
                    dtype.name()
                ));
            }
        }
    }
    Ok(())
}

// ----- JSON ---------------------------------------------------------------------------------

fn decode_json(
    view: &ViewDef,
    value: &[u8],
    w: &mut BatchRowWriter<'_>,
    row: usize,
    st: &mut Scratch,
) -> Result<(), String> {
    if fast_json(view, value, st) {
        for &(slot, bytes, len) in &st.fast {
            w.set_fixed(row, slot, &bytes[..len]);
        }
        return Ok(());
    }
    st.reset();
    let mut de = serde_json::Deserializer::from_slice(value);
    let seed = JsonRow { view, w, row, st };
    seed.deserialize(&mut de)
        .and_then(|()| de.end())
        .map_err(|e| format!("invalid JSON record: {e}"))
}

// The fast path: records made of numbers (and RFC 3339 / string / integer keys and timestamps)
// without escapes, as streaming jobs write them, parsed by hand; about twice as fast as
// serde_json on 200-float rows. Anything else (strings, arrays, escapes, errors) returns false
// and the record goes through serde_json, which also writes the error messages.

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// A JSON string without escapes starting at `b[i] == '"'`: (contents, index after it).
fn plain_string(b: &[u8], i: usize) -> Option<(&[u8], usize)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let len = b[i + 1..]
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    let end = i + 1 + len;
    (b[end] == b'"').then(|| (&b[i + 1..end], end + 1))
}

/// A JSON number token at `b[i]` (strict grammar): (token, is an integer, index after it).
fn number(b: &[u8], i: usize) -> Option<(&str, bool, usize)> {
    let digits = |mut j: usize| {
        let s = j;
        while j < b.len() && b[j].is_ascii_digit() {
            j += 1;
        }
        (j > s).then_some(j)
    };
    let mut j = i;
    if b.get(j) == Some(&b'-') {
        j += 1;
    }
    let int_start = j;
    j = digits(j)?;
    if b[int_start] == b'0' && j - int_start > 1 {
        return None;
    }
    let mut integer = true;
    if b.get(j) == Some(&b'.') {
        integer = false;
        j = digits(j + 1)?;
    }
    if matches!(b.get(j), Some(b'e' | b'E')) {
        integer = false;
        j += 1;
        if matches!(b.get(j), Some(b'+' | b'-')) {
            j += 1;
        }
        j = digits(j)?;
    }
    Some((std::str::from_utf8(&b[i..j]).ok()?, integer, j))
}

/// Clinger's fast path: a decimal of at most 15 digits without exponent is `m / 10^k` with
/// both exact in f64, so one division rounds correctly. `None` for anything else.
fn clinger_f64(tok: &str) -> Option<f64> {
    const POW10: [f64; 16] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
    ];
    let (neg, b) = match tok.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        b => (false, b),
    };
    let (mut m, mut digits, mut frac) = (0u64, 0usize, 0usize);
    let mut in_frac = false;
    for &c in b {
        match c {
            b'0'..=b'9' => {
                m = m * 10 + u64::from(c - b'0');
                digits += 1;
                frac += usize::from(in_frac);
                if digits > 15 {
                    return None;
                }
            }
            b'.' => in_frac = true,
            _ => return None,
        }
    }
    let x = m as f64 / POW10[frac];
    Some(if neg { -x } else { x })
}

fn fast_json(view: &ViewDef, b: &[u8], st: &mut Scratch) -> bool {
    fast_json_inner(view, b, st).is_some()
}

fn fast_json_inner(view: &ViewDef, b: &[u8], st: &mut Scratch) -> Option<()> {
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(b, i + 1);
    if b.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            let (key, after) = plain_string(b, i)?;
            i = skip_ws(b, after);
            if b.get(i) != Some(&b':') {
                return None;
            }
            i = skip_ws(b, i + 1);
            i = fast_value(view, key, b, i, st)?;
            i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => i = skip_ws(b, i + 1),
                Some(b'}') => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    (skip_ws(b, i) == b.len()).then_some(())
}

fn fast_value(view: &ViewDef, key: &[u8], b: &[u8], i: usize, st: &mut Scratch) -> Option<usize> {
    let hinted = view
        .features
        .get(st.hint)
        .filter(|(n, _)| n.as_bytes() == key)
        .map(|&(_, slot)| (st.hint, slot));
    let found = hinted.or_else(|| {
        let k = std::str::from_utf8(key).ok()?;
        view.by_name
            .get(k)
            .map(|&slot| (st.feature_index(slot), slot))
    });
    if let Some((fi, slot)) = found {
        st.hint = fi + 1;
        if b[i..].starts_with(b"null") {
            return Some(i + 4);
        }
        let (tok, integer, end) = number(b, i)?;
        let mut buf = [0u8; 8];
        let width = match view.layout.slots()[slot].dtype {
            DType::Float32 => {
                let x: f64 = clinger_f64(tok).or_else(|| tok.parse().ok())?;
                let f = x as f32;
                if !f.is_finite() {
                    return None;
                }
                buf[..4].copy_from_slice(&f.to_le_bytes());
                4
            }
            DType::Float64 => {
                let x: f64 = clinger_f64(tok).or_else(|| tok.parse().ok())?;
                buf.copy_from_slice(&x.to_le_bytes());
                8
            }
            DType::Int32 if integer => {
                let x: i32 = tok.parse().ok()?;
                buf[..4].copy_from_slice(&x.to_le_bytes());
                4
            }
            DType::Int64 | DType::Timestamp if integer => {
                let x: i64 = tok.parse().ok()?;
                buf.copy_from_slice(&x.to_le_bytes());
                8
            }
            _ => return None,
        };
        st.fast.push((slot, buf, width));
        return Some(end);
    }
    if key == EVENT_TIMESTAMP.as_bytes() {
        if let Some((text, end)) = plain_string(b, i) {
            st.ts = Some(parse_rfc3339(std::str::from_utf8(text).ok()?)?);
            return Some(end);
        }
        let (tok, integer, end) = number(b, i)?;
        if !integer {
            return None;
        }
        st.ts = Some(tok.parse().ok()?);
        return Some(end);
    }
    let pos = view
        .join_keys
        .iter()
        .position(|(n, _)| n.as_bytes() == key)?;
    let mut enc = Vec::with_capacity(8);
    let end = match view.join_keys[pos].1 {
        KeyType::Int64 | KeyType::Int32 => {
            let (tok, integer, end) = number(b, i)?;
            if !integer {
                return None;
            }
            if view.join_keys[pos].1 == KeyType::Int64 {
                encode_i64(tok.parse().ok()?, &mut enc);
            } else {
                encode_i32(tok.parse().ok()?, &mut enc);
            }
            end
        }
        KeyType::String => {
            let (text, end) = plain_string(b, i)?;
            encode_bytes(std::str::from_utf8(text).ok()?.as_bytes(), &mut enc);
            end
        }
        KeyType::Bytes => return None,
    };
    st.keys[pos] = Some(enc);
    Some(end)
}

/// A string that borrows from the input when it has no escapes.
struct Text<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E: de::Error>(self, s: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(s)))
            }
        }
        d.deserialize_str(V)
    }
}

/// A timestamp: RFC 3339 text or integer microseconds since the Unix epoch.
struct Micros(i64);

impl<'de> Deserialize<'de> for Micros {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Micros;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 timestamp string or integer microseconds since the epoch")
            }
            fn visit_i64<E: de::Error>(self, x: i64) -> Result<Micros, E> {
                Ok(Micros(x))
            }
            fn visit_u64<E: de::Error>(self, x: u64) -> Result<Micros, E> {
                i64::try_from(x)
                    .map(Micros)
                    .map_err(|_| E::custom(format!("timestamp {x} is out of range")))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Micros, E> {
                parse_rfc3339(s).map(Micros).ok_or_else(|| {
                    E::custom(format!(
                        "'{s}' is not an RFC 3339 timestamp (e.g. 2024-01-31T12:00:00.250Z)"
                    ))
                })
            }
        }
        d.deserialize_any(V)
    }
}

struct Base64(Vec<u8>);

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let t = Text::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(t.0.as_bytes())
            .map(Base64)
            .map_err(|e| de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// Deserializes a JSON record straight into row `row` of the writer (no intermediate values).
struct JsonRow<'v, 'w, 'l, 's> {
    view: &'v ViewDef,
    w: &'w mut BatchRowWriter<'l>,
    row: usize,
    st: &'s mut Scratch,
}

impl<'de> DeserializeSeed<'de> for JsonRow<'_, '_, '_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for JsonRow<'_, '_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object (join keys, event_timestamp, features)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let JsonRow { view, w, row, st } = self;
        while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
            let key: &str = &key;
            // Producers write features in the same order every time: try the one after the
            // previous feature before hashing.
            let hinted = view
                .features
                .get(st.hint)
                .filter(|(n, _)| n == key)
                .map(|&(_, slot)| (st.hint, slot));
            if let Some((i, slot)) = hinted.or_else(|| {
                view.by_name
                    .get(key)
                    .map(|&slot| (st.feature_index(slot), slot))
            }) {
                st.hint = i + 1;
                json_feature(&mut map, view, w, row, st, slot, key)?;
            } else if key == EVENT_TIMESTAMP {
                st.ts = Some(map.next_value::<Micros>()?.0);
            } else if let Some(pos) = view.join_keys.iter().position(|(n, _)| n == key) {
                let ty = view.join_keys[pos].1;
                let mut b = Vec::with_capacity(8);
                match ty {
                    KeyType::Int64 => encode_i64(map.next_value::<i64>()?, &mut b),
                    KeyType::Int32 => {
                        let x = map.next_value::<i64>()?;
                        let x = i32::try_from(x).map_err(|_| {
                            de::Error::custom(format!("join key '{key}': {x} does not fit int32"))
                        })?;
                        encode_i32(x, &mut b);
                    }
                    KeyType::String => encode_bytes(map.next_value::<Text>()?.0.as_bytes(), &mut b),
                    KeyType::Bytes => encode_bytes(&map.next_value::<Base64>()?.0, &mut b),
                }
                st.keys[pos] = Some(b);
            } else if key == FEATURE_VIEW {
                let v = map.next_value::<Option<Text>>()?;
                if v.is_some_and(|t| !t.0.is_empty() && t.0 != view.name) {
                    st.other_view = true;
                }
            } else {
                st.unknown.get_or_insert_with(|| key.to_owned());
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

fn json_feature<'de, A: MapAccess<'de>>(
    map: &mut A,
    view: &ViewDef,
    w: &mut BatchRowWriter<'_>,
    row: usize,
    st: &mut Scratch,
    slot: usize,
    name: &str,
) -> Result<(), A::Error> {
    let spec = view.layout.slots()[slot];
    let err = |m: String| <A::Error as de::Error>::custom(m);
    match spec.dtype {
        DType::Float32 => {
            if let Some(x) = map.next_value::<Option<f64>>()? {
                let f = f32_in_range(x, name).map_err(err)?;
                w.set_fixed(row, slot, &f.to_le_bytes());
            }
        }
        DType::Float64 => {
            if let Some(x) = map.next_value::<Option<f64>>()? {
                w.set_fixed(row, slot, &x.to_le_bytes());
            }
        }
        DType::Int32 => {
            if let Some(x) = map.next_value::<Option<i64>>()? {
                let x = int32_in_range(x, name).map_err(err)?;
                w.set_fixed(row, slot, &x.to_le_bytes());
            }
        }
        DType::Int64 => {
            if let Some(x) = map.next_value::<Option<i64>>()? {
                w.set_fixed(row, slot, &x.to_le_bytes());
            }
        }
        DType::Bool => {
            if let Some(x) = map.next_value::<Option<bool>>()? {
                w.set_fixed(row, slot, &[u8::from(x)]);
            }
        }
        DType::Timestamp => {
            if let Some(Micros(x)) = map.next_value::<Option<Micros>>()? {
                w.set_fixed(row, slot, &x.to_le_bytes());
            }
        }
        DType::String => {
            st.var[slot] = map
                .next_value::<Option<Text>>()?
                .map(|t| t.0.as_bytes().to_vec());
        }
        DType::Bytes => st.var[slot] = map.next_value::<Option<Base64>>()?.map(|b| b.0),
        DType::Float32Array => {
            if let Some(a) = map.next_value::<Option<Vec<f64>>>()? {
                if a.len() != spec.dim as usize {
                    return Err(err(format!(
                        "feature '{name}': array of {} elements, expected {}",
                        a.len(),
                        spec.dim
                    )));
                }
                let mut b = Vec::with_capacity(4 * a.len());
                for x in a {
                    b.extend_from_slice(&f32_in_range(x, name).map_err(err)?.to_le_bytes());
                }
                w.set_fixed(row, slot, &b);
            }
        }
    }
    Ok(())
}

// ----- RFC 3339 -----------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM)` (a space may replace the `T`) to
/// microseconds since the Unix epoch; digits beyond microseconds are truncated.
#[allow(clippy::many_single_char_names)]
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        part.iter().all(u8::is_ascii_digit).then(|| {
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0'))
        })
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&mo)
        || d < 1
        || d > month_days[(mo - 1) as usize]
        || h > 23
        || mi > 59
        || sec > 60
    {
        return None;
    }
    let mut i = 19;
    let mut micros = 0i64;
    if b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            if i - start < 6 {
                micros = micros * 10 + i64::from(b[i] - b'0');
            }
            i += 1;
        }
        let digits = i - start;
        if digits == 0 {
            return None;
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_s = match b.get(i..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            if *sign == b'-' {
                -(oh * 3600 + om * 60)
            } else {
                oh * 3600 + om * 60
            }
        }
        _ => return None,
    };
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset_s;
    secs.checked_mul(1_000_000)?.checked_add(micros)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{Catalog, RegistrySpec};
    use crate::proto::v1::feature_value;
    use crate::row::{RowView, ValueRef};
    use std::sync::Arc;

    const SPEC: &str = r#"{"project": "t", "feature_views": [
        {"name": "v", "join_keys": [{"name": "user_id", "dtype": "int64"}], "features": [
            {"name": "f", "dtype": "float32"}, {"name": "s", "dtype": "string"},
            {"name": "i", "dtype": "int32"}, {"name": "raw", "dtype": "bytes"},
            {"name": "ts", "dtype": "timestamp"}, {"name": "e", "dtype": "float32_array", "dim": 2},
            {"name": "b", "dtype": "bool"}, {"name": "d", "dtype": "float64"}]},
        {"name": "pair", "join_keys": [{"name": "a", "dtype": "int32"}, {"name": "k", "dtype": "string"}],
         "features": [{"name": "x", "dtype": "int64"}]}]}"#;

    fn view(name: &str) -> Arc<ViewDef> {
        let spec = RegistrySpec::from_json(SPEC).unwrap();
        let mut schemas = ahash::AHashMap::new();
        for (i, v) in spec.feature_views.iter().enumerate() {
            let evo = crate::catalog::evolve(None, v, false, i as u32 + 1).unwrap();
            let crate::catalog::Evolution::Recreated(s) = evo else {
                unreachable!()
            };
            schemas.insert(v.name.clone(), s);
        }
        Catalog::compile(&spec, SPEC, &schemas)
            .unwrap()
            .view(name)
            .unwrap()
            .clone()
    }

    fn rec(value: Option<&[u8]>, offset: i64) -> Record<'_> {
        Record {
            key: None,
            value,
            partition: 0,
            offset,
            timestamp_ms: Some(1000),
        }
    }

    fn value<'a>(v: &ViewDef, row: &'a [u8], name: &str) -> ValueRef<'a> {
        RowView::new(row).unwrap().value(&v.layout, v.by_name[name])
    }

    #[test]
    fn json_row_all_types() {
        let v = view("v");
        let body = br#"{"user_id": 7, "event_timestamp": "2024-01-01T00:00:00.5Z", "f": 1.5,
            "s": "h\u00e9", "i": -3, "raw": "AP8=", "ts": 12, "e": [0.5, 2], "b": true, "d": null}"#;
        let d = decode(&v, Format::Json, &[rec(Some(body), 4)]);
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(d.upserts, 1);
        assert_eq!(d.next_offsets, vec![(0, 5)]);
        let row = &d.rows[0];
        let ts = 1_704_067_200_500_000;
        assert_eq!(RowView::new(row).unwrap().event_ts(), ts);
        assert_eq!(d.max_event_ts, Some(ts));
        assert_eq!(value(&v, row, "f"), ValueRef::Float32(1.5));
        assert_eq!(value(&v, row, "s"), ValueRef::Str("hé".as_bytes()));
        assert_eq!(value(&v, row, "i"), ValueRef::Int32(-3));
        assert_eq!(value(&v, row, "raw"), ValueRef::Bytes(&[0, 255]));
        assert_eq!(value(&v, row, "ts"), ValueRef::Timestamp(12));
        assert_eq!(value(&v, row, "b"), ValueRef::Bool(true));
        assert_eq!(value(&v, row, "d"), ValueRef::Null);
        let mut key = v.hot_prefix().to_vec();
        encode_i64(7, &mut key);
        assert_eq!(d.keys[0], key);
    }

    #[test]
    fn json_errors_name_the_problem() {
        let v = view("v");
        let cases: [(&[u8], &str); 9] = [
            (b"{", "invalid JSON"),
            (br#"{"user_id": 1}"#, "missing 'event_timestamp'"),
            (br#"{"event_timestamp": 1}"#, "missing join key 'user_id'"),
            (
                br#"{"user_id": 1, "event_timestamp": 1, "ff": 1}"#,
                "unknown field 'ff'",
            ),
            (
                br#"{"user_id": 1, "event_timestamp": 1, "f": "x"}"#,
                "invalid type",
            ),
            (
                br#"{"user_id": 1, "event_timestamp": 1, "i": 3000000000}"#,
                "does not fit int32",
            ),
            (
                br#"{"user_id": 1, "event_timestamp": 1, "f": 1e300}"#,
                "range of float32",
            ),
            (
                br#"{"user_id": 1, "event_timestamp": 1, "e": [1]}"#,
                "expected 2",
            ),
            (
                br#"{"user_id": 1, "event_timestamp": "yesterday"}"#,
                "RFC 3339",
            ),
        ];
        for (body, want) in cases {
            let d = decode(&v, Format::Json, &[rec(Some(body), 0)]);
            assert_eq!(d.errors.len(), 1, "{}", String::from_utf8_lossy(body));
            assert!(d.errors[0].1.contains(want), "{want}: {}", d.errors[0].1);
            assert!(d.rows.is_empty());
            assert_eq!(d.next_offsets, vec![(0, 1)]);
        }
    }

    #[test]
    fn other_views_are_ignored_and_bad_records_do_not_spoil_the_batch() {
        let v = view("v");
        let bodies: [&[u8]; 3] = [
            br#"{"user_id": 1, "event_timestamp": 5, "s": "a"}"#,
            br#"{"feature_view": "pair", "a": 1, "k": "x", "x": 1}"#,
            br#"{"user_id": 2, "event_timestamp": 5, "s": 7}"#,
        ];
        let recs: Vec<Record<'_>> = bodies
            .iter()
            .enumerate()
            .map(|(i, b)| rec(Some(b), i as i64))
            .collect();
        let d = decode(&v, Format::Json, &recs);
        assert_eq!((d.upserts, d.ignored, d.errors.len()), (1, 1, 1));
        assert_eq!(d.errors[0].0, 2);
        assert_eq!(value(&v, &d.rows[0], "s"), ValueRef::Str(b"a"));
    }

    #[test]
    fn tombstones_use_the_record_key_and_timestamp() {
        let v = view("pair");
        let types = v.join_keys.clone();
        let key = encode_entity_key(&types, &[KeyInput::Int(3), KeyInput::Str("sku")]).unwrap();
        let mut r = rec(None, 9);
        r.key = Some(&key);
        let bad = Record {
            key: Some(b"junk"),
            ..r
        };
        let nokey = Record { key: None, ..r };
        let d = decode(&v, Format::Json, &[r, bad, nokey]);
        assert_eq!(d.tombstones, 1);
        assert_eq!(d.errors.len(), 2);
        let t = RowView::new(&d.rows[0]).unwrap();
        assert!(t.is_tombstone());
        assert_eq!(t.event_ts(), 1_000_000);
        assert_eq!(&d.keys[0][4..], key.as_slice());
        assert!(encode_entity_key(&types, &[KeyInput::Int(1 << 40), KeyInput::Str("x")]).is_err());
        assert!(encode_entity_key(&types, &[KeyInput::Int(1)]).is_err());
    }

    #[test]
    fn partition_check_reports_and_optionally_drops_misrouted_records() {
        use crate::partition::partition_for_key;
        let v = view("v");
        let types = v.join_keys.clone();
        // 1,000 rows (decoded on several threads), each put on partition u % 4 whatever its
        // key: about three quarters land elsewhere than murmur2 says; user 5 has no record key,
        // user 6 a key that is not its entity key; the last record is a tombstone
        let n = 1000_i64;
        let keys: Vec<Vec<u8>> = (0..=n)
            .map(|u| encode_entity_key(&types, &[KeyInput::Int(u)]).unwrap())
            .collect();
        let bodies: Vec<Vec<u8>> = (0..n)
            .map(|u| format!(r#"{{"user_id": {u}, "event_timestamp": {}}}"#, 10 + u).into_bytes())
            .collect();
        let mut recs: Vec<Record<'_>> = (0..n)
            .map(|u| Record {
                key: Some(&keys[u as usize]),
                value: Some(&bodies[u as usize]),
                partition: (u % 4) as i32,
                offset: u,
                timestamp_ms: Some(1),
            })
            .collect();
        recs[5].key = None;
        recs[6].key = Some(b"6");
        recs.push(Record {
            key: Some(&keys[n as usize]),
            value: None,
            partition: ((n + 1) % 4) as i32,
            offset: n,
            timestamp_ms: Some(1),
        });
        let expected: Vec<u32> = keys
            .iter()
            .map(|k| partition_for_key(k, 4).unwrap())
            .collect();
        let wrong: Vec<usize> = (0..recs.len())
            .filter(|&i| i32::try_from(expected[i]).unwrap() != recs[i].partition)
            .collect();
        assert!(wrong.len() > 600 && wrong.len() < 900, "{}", wrong.len());
        let parts = NonZeroU32::new(4).unwrap();

        let d = decode_checked(
            &v,
            Format::Json,
            &recs,
            Some(PartitionCheck {
                num_partitions: parts,
                drop: false,
            }),
        );
        assert!(d.errors.is_empty(), "{:?}", d.errors);
        assert_eq!(
            d.misrouted.iter().map(|m| m.index).collect::<Vec<_>>(),
            wrong
        );
        for m in &d.misrouted {
            assert_eq!(m.expected, expected[m.index]);
            assert_eq!(m.key_matches, m.index != 5 && m.index != 6, "{m:?}");
        }
        assert_eq!(d.keys.len(), recs.len());
        assert_eq!((d.upserts, d.tombstones), (n as u64, 1));

        let d = decode_checked(
            &v,
            Format::Json,
            &recs,
            Some(PartitionCheck {
                num_partitions: parts,
                drop: true,
            }),
        );
        assert_eq!(d.misrouted.len(), wrong.len());
        assert_eq!(d.keys.len(), recs.len() - wrong.len());
        assert_eq!(d.upserts + d.tombstones, (recs.len() - wrong.len()) as u64);
        // what is kept is exactly the records on their own partition (record i has keys[i])
        for k in &d.keys {
            let i = keys.iter().position(|e| e.as_slice() == &k[4..]).unwrap();
            assert!(!wrong.contains(&i), "{i}");
        }
        // without a check nothing is reported
        assert!(decode(&v, Format::Json, &recs).misrouted.is_empty());
        // one partition: nothing can be misrouted
        let one: Vec<Record<'_>> = recs.iter().map(|r| Record { partition: 0, ..*r }).collect();
        let d = decode_checked(
            &v,
            Format::Json,
            &one,
            Some(PartitionCheck {
                num_partitions: NonZeroU32::MIN,
                drop: true,
            }),
        );
        assert!(d.misrouted.is_empty());
        assert_eq!(d.keys.len(), recs.len());
    }

    #[test]
    fn protobuf_rows() {
        let v = view("v");
        let fv = |x| v1::FeatureValue { value: Some(x) };
        let mut msg = v1::FeatureRow {
            join_keys: [(
                "user_id".to_owned(),
                v1::EntityValue {
                    value: Some(entity_value::Value::Int64Value(42)),
                },
            )]
            .into(),
            event_timestamp_micros: 99,
            features: [
                ("f".to_owned(), fv(feature_value::Value::FloatValue(2.5))),
                (
                    "s".to_owned(),
                    fv(feature_value::Value::StringValue("x".into())),
                ),
                (
                    "raw".to_owned(),
                    fv(feature_value::Value::NullValue(v1::Null {})),
                ),
            ]
            .into(),
            feature_view: String::new(),
        };
        let good = msg.encode_to_vec();
        msg.features.insert(
            "i".to_owned(),
            fv(feature_value::Value::StringValue("no".into())),
        );
        let bad = msg.encode_to_vec();
        msg.feature_view = "pair".into();
        let other = msg.encode_to_vec();
        let d = decode(
            &v,
            Format::Protobuf,
            &[
                rec(Some(&good), 0),
                rec(Some(&bad), 1),
                rec(Some(&other), 2),
                rec(Some(b"\xff"), 3),
            ],
        );
        assert_eq!((d.upserts, d.ignored, d.errors.len()), (1, 1, 2));
        assert!(
            d.errors[0].1.contains("feature 'i' has type int32"),
            "{:?}",
            d.errors
        );
        assert_eq!(value(&v, &d.rows[0], "f"), ValueRef::Float32(2.5));
        assert_eq!(value(&v, &d.rows[0], "s"), ValueRef::Str(b"x"));
        assert_eq!(value(&v, &d.rows[0], "raw"), ValueRef::Null);
        assert_eq!(RowView::new(&d.rows[0]).unwrap().event_ts(), 99);
    }

    #[test]
    fn json_fast_path_matches_serde() {
        let v = view("v");
        let cases: [&[u8]; 6] = [
            br#"{"user_id":-7,"event_timestamp":5,"f":1.25e2,"d":-0.0,"i":-2147483648,"ts":3}"#,
            br#" { "event_timestamp" : "2024-01-01T00:00:00Z" , "f" : null , "user_id" : 1 } "#,
            br#"{"user_id":1,"event_timestamp":5,"f":0.1,"d":1e-310,"s":"x"}"#,
            br#"{"user_id":1,"event_timestamp":5,"f":3.4028235e38,"d":12345678901234567890}"#,
            br#"{"user_id":1,"event_timestamp":5,"f":-0.000123456789012,"d":0.30000000000000004}"#,
            br#"{"user_id":1,"event_timestamp":5,"f":99.99999,"d":123456789012345.6}"#,
        ];
        for body in cases {
            let mut st = Scratch::new(&v);
            assert!(
                fast_json(&v, body, &mut st) != body.windows(3).any(|w| w == br#""s""#),
                "fast path taken iff no string feature: {}",
                String::from_utf8_lossy(body)
            );
            let d = decode(&v, Format::Json, &[rec(Some(body), 0)]);
            assert!(d.errors.is_empty(), "{:?}", d.errors);
            let parsed: serde_json::Value = serde_json::from_slice(body).unwrap();
            for name in ["f", "d", "i", "ts"] {
                let got = value(&v, &d.rows[0], name);
                match (parsed.get(name), got) {
                    (None | Some(serde_json::Value::Null), ValueRef::Null) => {}
                    (Some(x), ValueRef::Float32(g)) => {
                        assert_eq!(g.to_bits(), (x.as_f64().unwrap() as f32).to_bits());
                    }
                    (Some(x), ValueRef::Float64(g)) => {
                        assert_eq!(g.to_bits(), x.as_f64().unwrap().to_bits());
                    }
                    (Some(x), ValueRef::Int32(g)) => assert_eq!(i64::from(g), x.as_i64().unwrap()),
                    (Some(x), ValueRef::Timestamp(g)) => assert_eq!(g, x.as_i64().unwrap()),
                    (x, g) => panic!("{name}: {x:?} vs {g:?}"),
                }
            }
        }
        // Not JSON numbers: left to serde_json, which reports them.
        for bad in [
            &br#"{"user_id":1,"event_timestamp":5,"f":01}"#[..],
            br#"{"user_id":1,"event_timestamp":5,"f":.5}"#,
            br#"{"user_id":1,"event_timestamp":5,"f":1e999}"#,
        ] {
            let d = decode(&v, Format::Json, &[rec(Some(bad), 0)]);
            assert_eq!(d.errors.len(), 1, "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn clinger_agrees_with_core_parsing() {
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let digits = (x % 15) as usize + 1;
            let mant = (x >> 8) % 10u64.pow(digits as u32);
            let point = (x >> 4) as usize % (digits + 1);
            let text = format!("{mant:0digits$}");
            let tok = format!("-{}.{}", &text[..digits - point], &text[digits - point..]);
            let tok = tok.trim_end_matches('.');
            let want: f64 = tok.parse().unwrap();
            assert_eq!(
                clinger_f64(tok).map(f64::to_bits),
                Some(want.to_bits()),
                "{tok}"
            );
        }
        assert_eq!(clinger_f64("1e5"), None);
        assert_eq!(clinger_f64("1234567890123456"), None);
    }

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339("2024-01-01T01:00:00.123456789+01:00"),
            Some(1_704_067_200_123_456)
        );
        assert_eq!(parse_rfc3339("1969-12-31 23:59:59.5z"), Some(-500_000));
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z"),
            Some(1_709_164_800_000_000)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01",
            "2024-01-01T00:00:00.Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }
}
