//! Served-feature logging (docs/feature-logging.md): what a request of a logged feature service
//! was answered, one row per entity, appended to a bounded in-memory columnar buffer by the
//! same call that encodes the answer ([`super::Prepared::finish`]).
//!
//! The rows follow Feast's logged-feature schema: the join keys (and the request fields of
//! on-demand views), then per answered feature `<view>__<feature>`, `..__timestamp` and
//! `..__status` (Feast's `FieldStatus` number, int32), then `__log_timestamp`, `__log_date`
//! and `__request_id`. A background writer in Python (`serving/feature_log/`) drains the
//! buffer ([`FeatureLog::drain`]) as Arrow arrays and writes them to Delta / Parquet / Kafka.
//!
//! Never blocking a request: the lock of a service's buffer is held while a request's cells
//! are appended (one builder push per value) or while the drainer swaps the buffer for an empty
//! one (O(1); the arrays are finished outside the lock). A full buffer drops the request's rows
//! and counts them. Sampling is per request (all of a request's rows or none).

use super::Prepared;
use crate::arrow_io;
use crate::catalog::plan::Plan;
use crate::error::Result;
use crate::key::KeyColumn;
use crate::query::{Cell, CellSource};
use crate::row::ValueRef;
use crate::types::{DType, KeyType};
use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Array, FixedSizeListBuilder, Float32Builder,
    Float64Builder, Int32Array, Int32Builder, Int64Array, Int64Builder, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use parking_lot::Mutex;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const US_PER_DAY: i64 = 86_400_000_000;

/// Rows of one open block: its builders are sized for this many rows up front and the block is
/// sealed when full. Measured (perf, W2 at `sample_rate` 1, 2026-12-03): builders that grew by
/// doubling spent about a quarter of the serving thread's time in memmove and page faults of
/// the regrowth; with fixed-size blocks every byte is written once.
const BLOCK_ROWS: usize = 4096;

/// Logging settings of one feature service.
#[derive(Debug, Clone, Copy)]
pub struct ServiceLogConfig {
    /// Fraction of requests logged, 0.0..=1.0.
    pub sample_rate: f64,
    /// Rows the buffer holds at most; a request whose rows do not fit is dropped (counted).
    pub capacity_rows: usize,
}

/// The counters of one service's log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogCounts {
    /// Requests sampled for logging.
    pub sampled_requests: u64,
    /// Rows appended to the buffer.
    pub appended_rows: u64,
    /// Rows dropped because the buffer was full.
    pub dropped_rows: u64,
    /// Rows in the buffer now.
    pub buffered_rows: u64,
}

/// The log buffers of every logged feature service of a node (or a router).
pub struct FeatureLog {
    services: HashMap<String, ServiceLog>,
}

/// What a request carries to be logged: the node's log, the request id and the log time.
#[derive(Clone, Debug)]
pub struct LogTag {
    pub log: Arc<FeatureLog>,
    pub request_id: String,
    pub now_us: i64,
}

/// One drained block of rows: column names and arrays (all of one length).
pub struct LogBatch {
    pub names: Vec<String>,
    pub arrays: Vec<ArrayRef>,
    pub rows: usize,
}

struct ServiceLog {
    /// A request is logged when a uniform u64 draw is below this (`u64::MAX`: always).
    threshold: u64,
    always: bool,
    capacity_rows: usize,
    buf: Mutex<Buffer>,
    sampled_requests: AtomicU64,
    appended_rows: AtomicU64,
    dropped_rows: AtomicU64,
}

#[derive(Default)]
struct Buffer {
    /// Rows of earlier request shapes, finished.
    sealed: Vec<LogBatch>,
    sealed_rows: usize,
    /// Rows of the current request shape, being appended.
    open: Option<Open>,
}

impl Buffer {
    fn rows(&self) -> usize {
        self.sealed_rows + self.open.as_ref().map_or(0, |o| o.rows)
    }
}

/// A column of feature values being appended.
enum Values {
    Bool(BooleanBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Timestamp(TimestampMicrosecondBuilder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
    Float32Array(FixedSizeListBuilder<Float32Builder>, usize),
}

impl Values {
    fn new(dtype: DType, dim: u32, rows: usize) -> Self {
        match dtype {
            DType::Bool => Self::Bool(BooleanBuilder::with_capacity(rows)),
            DType::Int32 => Self::Int32(Int32Builder::with_capacity(rows)),
            DType::Int64 => Self::Int64(Int64Builder::with_capacity(rows)),
            DType::Float32 => Self::Float32(Float32Builder::with_capacity(rows)),
            DType::Float64 => Self::Float64(Float64Builder::with_capacity(rows)),
            DType::Timestamp => Self::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC"),
            ),
            DType::String => Self::Str(StringBuilder::with_capacity(rows, 16 * rows)),
            DType::Bytes => Self::Bytes(BinaryBuilder::with_capacity(rows, 16 * rows)),
            DType::Float32Array => Self::Float32Array(
                FixedSizeListBuilder::with_capacity(
                    Float32Builder::with_capacity(rows * dim as usize),
                    dim as i32,
                    rows,
                ),
                dim as usize,
            ),
        }
    }

    #[inline]
    fn push(&mut self, v: ValueRef<'_>) {
        match (self, v) {
            (Self::Bool(b), ValueRef::Bool(x)) => b.append_value(x),
            (Self::Int32(b), ValueRef::Int32(x)) => b.append_value(x),
            (Self::Int64(b), ValueRef::Int64(x)) => b.append_value(x),
            (Self::Float32(b), ValueRef::Float32(x)) => b.append_value(x),
            (Self::Float64(b), ValueRef::Float64(x)) => b.append_value(x),
            (Self::Timestamp(b), ValueRef::Timestamp(x)) => b.append_value(x),
            (Self::Str(b), ValueRef::Str(x)) => b.append_value(String::from_utf8_lossy(x)),
            (Self::Bytes(b), ValueRef::Bytes(x)) => b.append_value(x),
            (Self::Float32Array(b, _), ValueRef::Float32Array(bytes)) => {
                for ch in bytes.chunks_exact(4) {
                    b.values()
                        .append_value(f32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]));
                }
                b.append(true);
            }
            (Self::Bool(b), _) => b.append_null(),
            (Self::Int32(b), _) => b.append_null(),
            (Self::Int64(b), _) => b.append_null(),
            (Self::Float32(b), _) => b.append_null(),
            (Self::Float64(b), _) => b.append_null(),
            (Self::Timestamp(b), _) => b.append_null(),
            (Self::Str(b), _) => b.append_null(),
            (Self::Bytes(b), _) => b.append_null(),
            (Self::Float32Array(b, d), _) => {
                for _ in 0..*d {
                    b.values().append_null();
                }
                b.append(false);
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Int32(b) => Arc::new(b.finish()),
            Self::Int64(b) => Arc::new(b.finish()),
            Self::Float32(b) => Arc::new(b.finish()),
            Self::Float64(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
            Self::Float32Array(b, _) => Arc::new(b.finish()),
        }
    }
}

/// A join-key column being appended, of the key's declared type.
enum Keys {
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
}

impl Keys {
    fn new(ty: KeyType, rows: usize) -> Self {
        match ty {
            KeyType::Int32 => Self::Int32(Vec::with_capacity(rows)),
            KeyType::Int64 => Self::Int64(Vec::with_capacity(rows)),
            KeyType::String => Self::Str(StringBuilder::with_capacity(rows, 16 * rows)),
            KeyType::Bytes => Self::Bytes(BinaryBuilder::with_capacity(rows, 16 * rows)),
        }
    }

    #[allow(clippy::cast_possible_truncation)]
    fn push(&mut self, col: &KeyColumn) {
        // The plan accepted the column for a key of this type; the conversions mirror the
        // key encoder's (int32 keys given as int64 values in range).
        match (self, col) {
            (Self::Int64(v), KeyColumn::Int64(x)) => v.extend_from_slice(x),
            (Self::Int64(v), KeyColumn::Int32(x)) => v.extend(x.iter().map(|&i| i64::from(i))),
            (Self::Int32(v), KeyColumn::Int32(x)) => v.extend_from_slice(x),
            (Self::Int32(v), KeyColumn::Int64(x)) => v.extend(x.iter().map(|&i| i as i32)),
            (Self::Str(b), KeyColumn::Str(x)) => x.iter().for_each(|s| b.append_value(s)),
            (Self::Bytes(b), KeyColumn::Bytes(x)) => x.iter().for_each(|s| b.append_value(s)),
            (Self::Bytes(b), KeyColumn::Str(x)) => x.iter().for_each(|s| b.append_value(s)),
            (k, c) => {
                for _ in 0..c.len() {
                    match k {
                        Self::Int32(v) => v.push(0),
                        Self::Int64(v) => v.push(0),
                        Self::Str(b) => b.append_null(),
                        Self::Bytes(b) => b.append_null(),
                    }
                }
            }
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Int32(v) => Arc::new(Int32Array::from(std::mem::take(v))),
            Self::Int64(v) => Arc::new(Int64Array::from(std::mem::take(v))),
            Self::Str(b) => Arc::new(b.finish()),
            Self::Bytes(b) => Arc::new(b.finish()),
        }
    }
}

struct FeatureCols {
    values: Values,
    status: Vec<i32>,
    ts: Vec<i64>,
}

/// The rows of one request shape (one plan) being appended.
struct Open {
    plan: Arc<Plan>,
    /// (entity column of the request, builder), in output order.
    keys: Vec<(usize, Keys)>,
    /// (request field, type, its view, chunks per request).
    request: Vec<(String, DType, String, Vec<ArrayRef>)>,
    features: Vec<FeatureCols>,
    request_id: StringBuilder,
    log_ts: Vec<i64>,
    names: Vec<String>,
    rows: usize,
}

impl Open {
    /// An empty block for the request shape of `p`, sized for `rows` rows.
    fn new(p: &Prepared, rows: usize) -> Self {
        let plan = &p.plan;
        let mut names = Vec::new();
        let mut seen = HashSet::new();
        let mut keys = Vec::new();
        for pv in &plan.views {
            for ((name, ty), &c) in pv.def.join_keys.iter().zip(&pv.key_columns) {
                if seen.insert(name.clone()) {
                    names.push(name.clone());
                    keys.push((c, Keys::new(*ty, rows)));
                }
            }
        }
        let mut request = Vec::new();
        for od in &plan.on_demand {
            let view = &plan.views[od.view].def.name;
            for (name, dtype) in &od.request {
                if seen.insert(name.clone()) {
                    names.push(name.clone());
                    request.push((name.clone(), *dtype, view.clone(), Vec::new()));
                }
            }
        }
        let mut features = Vec::with_capacity(plan.columns.len());
        for col in &plan.columns {
            let base = format!("{}__{}", plan.views[col.view].def.name, col.feature);
            names.push(base.clone());
            names.push(format!("{base}__timestamp"));
            names.push(format!("{base}__status"));
            features.push(FeatureCols {
                values: Values::new(col.dtype, col.dim, rows),
                status: Vec::with_capacity(rows),
                ts: Vec::with_capacity(rows),
            });
        }
        for n in ["__log_timestamp", "__log_date", "__request_id"] {
            names.push(n.to_string());
        }
        Self {
            plan: plan.clone(),
            keys,
            request,
            features,
            request_id: StringBuilder::with_capacity(rows, 32 * rows),
            log_ts: Vec::with_capacity(rows),
            names,
            rows: 0,
        }
    }

    /// Appends a request's rows; the request fields were converted before (`request`).
    fn append<C: CellSource>(
        &mut self,
        tag: &LogTag,
        p: &Prepared,
        cells: &C,
        request: Vec<ArrayRef>,
    ) {
        let n = p.num_entities();
        for (c, k) in &mut self.keys {
            k.push(&p.entities.columns[*c].1);
        }
        for (r, chunk) in self.request.iter_mut().zip(request) {
            r.3.push(chunk);
        }
        for (c, f) in self.features.iter_mut().enumerate() {
            let col = cells.col(c);
            cells.column(col, |_, cell: Cell<'_>| {
                f.values.push(cell.value);
                f.status.push(cell.status as i32);
                f.ts.push(cell.event_ts);
            });
        }
        for _ in 0..n {
            self.request_id.append_value(&tag.request_id);
        }
        self.log_ts.extend(std::iter::repeat_n(tag.now_us, n));
        self.rows += n;
    }

    fn finish(mut self) -> LogBatch {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.names.len());
        for (_, k) in &mut self.keys {
            arrays.push(k.finish());
        }
        for (_, dtype, _, chunks) in &self.request {
            let refs: Vec<&dyn arrow::array::Array> = chunks.iter().map(AsRef::as_ref).collect();
            // Every append pushed a chunk of its declared type, so concat cannot fail.
            let arr = arrow::compute::concat(&refs).unwrap_or_else(|_| {
                arrow::array::new_null_array(&arrow_io::arrow_type(*dtype, 0), self.rows)
            });
            arrays.push(arr);
        }
        for f in &mut self.features {
            arrays.push(f.values.finish());
            arrays.push(Arc::new(
                TimestampMicrosecondArray::from(std::mem::take(&mut f.ts)).with_timezone("UTC"),
            ));
            arrays.push(Arc::new(Int32Array::from(std::mem::take(&mut f.status))));
        }
        let days: Vec<i32> = self
            .log_ts
            .iter()
            .map(|&t| i32::try_from(t.div_euclid(US_PER_DAY)).unwrap_or(0))
            .collect();
        arrays.push(Arc::new(
            TimestampMicrosecondArray::from(std::mem::take(&mut self.log_ts)).with_timezone("UTC"),
        ));
        arrays.push(Arc::new(Date32Array::from(days)));
        arrays.push(Arc::new(self.request_id.finish()));
        LogBatch {
            names: self.names,
            arrays,
            rows: self.rows,
        }
    }
}

/// The sampling draw: splitmix64 over a shared counter (one relaxed add per logged-service
/// request; seeded from the clock so that two processes do not sample alike).
fn draw() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    if s == 0 {
        #[allow(clippy::cast_sign_loss)]
        let seed = crate::query::now_micros() as u64 | 1;
        let _ = STATE.compare_exchange(
            0x9E37_79B9_7F4A_7C15,
            seed,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        s = seed;
    }
    let mut z = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl std::fmt::Debug for FeatureLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureLog")
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl FeatureLog {
    /// A log of the given services: name -> settings.
    #[must_use]
    pub fn new(services: impl IntoIterator<Item = (String, ServiceLogConfig)>) -> Self {
        let services = services
            .into_iter()
            .map(|(name, cfg)| {
                let rate = cfg.sample_rate.clamp(0.0, 1.0);
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let threshold = (rate * u64::MAX as f64) as u64;
                (
                    name,
                    ServiceLog {
                        threshold,
                        always: rate >= 1.0,
                        capacity_rows: cfg.capacity_rows,
                        buf: Mutex::new(Buffer::default()),
                        sampled_requests: AtomicU64::new(0),
                        appended_rows: AtomicU64::new(0),
                        dropped_rows: AtomicU64::new(0),
                    },
                )
            })
            .collect();
        Self { services }
    }

    /// Whether any request of `service` can be logged (it is configured).
    #[must_use]
    pub fn logs(&self, service: &str) -> bool {
        self.services.contains_key(service)
    }

    /// The hook of the encode entry point: appends the answered rows of a sampled request of a
    /// logged service. Requests that name features instead of a service are not logged.
    pub fn append<C: CellSource>(tag: &LogTag, p: &Prepared, cells: &C) {
        let Some(service) = p.log_service.as_deref() else {
            return;
        };
        let Some(s) = tag.log.services.get(service) else {
            return;
        };
        if !s.always && draw() >= s.threshold {
            return;
        }
        s.sampled_requests.fetch_add(1, Ordering::Relaxed);
        let n = p.num_entities();
        // Request fields as Arrow, before the lock (a conversion that fails was refused by
        // the serving path already; such a request is not logged).
        let mut request = Vec::new();
        for od in &p.plan.on_demand {
            let view = &p.plan.views[od.view].def.name;
            for (name, dtype) in &od.request {
                if request
                    .iter()
                    .any(|(n2, _): &(&String, ArrayRef)| *n2 == name)
                {
                    continue;
                }
                match arrow_io::request_column(&p.entities, name, *dtype, view) {
                    Ok(a) => request.push((name, a)),
                    Err(_) => return,
                }
            }
        }
        let request = request.into_iter().map(|(_, a)| a).collect();
        let mut buf = s.buf.lock();
        if buf.rows() + n > s.capacity_rows {
            drop(buf);
            s.dropped_rows.fetch_add(n as u64, Ordering::Relaxed);
            return;
        }
        // a block of this request shape with room for the request's rows, else a new one
        let fits = buf
            .open
            .as_ref()
            .is_some_and(|o| Arc::ptr_eq(&o.plan, &p.plan) && o.rows + n <= BLOCK_ROWS.max(n));
        if !fits {
            // Built under the lock: sized allocations (not touched yet) and the column
            // names, once per BLOCK_ROWS rows.
            let fresh = Open::new(p, BLOCK_ROWS.max(n));
            if let Some(old) = buf.open.replace(fresh) {
                if old.rows > 0 {
                    buf.sealed_rows += old.rows;
                    let done = old.finish();
                    buf.sealed.push(done);
                }
            }
        }
        if let Some(open) = buf.open.as_mut() {
            open.append(tag, p, cells, request);
        }
        drop(buf);
        s.appended_rows.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Takes everything buffered for `service` (oldest first); the lock is held only to swap
    /// the buffer for an empty one.
    pub fn drain(&self, service: &str) -> Result<Vec<LogBatch>> {
        let s = self.services.get(service).ok_or_else(|| {
            crate::invalid!("feature service '{service}' has no logging configured")
        })?;
        let taken = std::mem::take(&mut *s.buf.lock());
        let mut out = taken.sealed;
        if let Some(open) = taken.open {
            if open.rows > 0 {
                out.push(open.finish());
            }
        }
        Ok(out)
    }

    /// The counters of every logged service.
    #[must_use]
    pub fn counts(&self) -> Vec<(String, LogCounts)> {
        let mut out: Vec<_> = self
            .services
            .iter()
            .map(|(name, s)| {
                let buffered = s.buf.lock().rows() as u64;
                (
                    name.clone(),
                    LogCounts {
                        sampled_requests: s.sampled_requests.load(Ordering::Relaxed),
                        appended_rows: s.appended_rows.load(Ordering::Relaxed),
                        dropped_rows: s.dropped_rows.load(Ordering::Relaxed),
                        buffered_rows: buffered,
                    },
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::on_demand::{start, Started};
    use crate::serve::tests::{fixture, NOW};
    use crate::serve::{Api, Caller, ServeConfig};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int32Type, Int64Type};

    fn serve_logged(store: &crate::store::Store, tag: &LogTag, body: &str) {
        let caller = Caller {
            now_us: NOW,
            log: Some(tag),
            ..Caller::default()
        };
        match start(
            store,
            Api::FeastHttp,
            body.as_bytes(),
            &ServeConfig::default(),
            caller,
        ) {
            Ok(Started::Done(_)) => {}
            Ok(Started::Pending(_)) => panic!("pending"),
            Err(e) => panic!("{e}"),
        }
    }

    fn service_name(store: &crate::store::Store) -> String {
        let spec: serde_json::Value = serde_json::from_str(&store.catalog().spec_json).unwrap();
        spec["feature_services"][0]["name"]
            .as_str()
            .unwrap()
            .to_string()
    }

    #[test]
    fn a_service_request_is_logged_in_feasts_schema_with_what_was_answered() {
        let (_dir, store) = fixture(3, 3);
        let svc = service_name(&store);
        let cfg = ServiceLogConfig {
            sample_rate: 1.0,
            capacity_rows: 100,
        };
        let t = LogTag {
            log: Arc::new(FeatureLog::new([(svc.clone(), cfg)])),
            request_id: "req-1".into(),
            now_us: NOW,
        };
        let body = format!(r#"{{"feature_service":"{svc}","entities":{{"user_id":[1,2,99]}}}}"#);
        serve_logged(&store, &t, &body);
        let mut batches = t.log.drain(&svc).unwrap();
        assert_eq!(batches.len(), 1);
        let b = batches.remove(0);
        assert_eq!(b.rows, 3);
        assert_eq!(b.names[0], "user_id");
        assert_eq!(
            &b.names[b.names.len() - 3..],
            ["__log_timestamp", "__log_date", "__request_id"]
        );
        let at = |name: &str| &b.arrays[b.names.iter().position(|n| n == name).unwrap()];
        let keys = at("user_id").as_primitive::<Int64Type>();
        assert_eq!(keys.values().to_vec(), vec![1, 2, 99]);
        let feat = b.names[1].clone();
        assert!(feat.contains("__"), "{feat}");
        let status = at(&format!("{feat}__status")).as_primitive::<Int32Type>();
        assert_eq!(status.value(2), 3, "entity 99 is NOT_FOUND");
        assert_eq!(status.value(0), 1, "entity 1 is PRESENT");
        assert!(b.arrays[1].is_null(2));
        let rid = at("__request_id").as_string::<i32>();
        assert_eq!(rid.value(1), "req-1");
        // drained: the next drain is empty and the counters say what happened
        assert!(t.log.drain(&svc).unwrap().is_empty());
        let counts = t.log.counts();
        assert_eq!(counts[0].1.appended_rows, 3);
        assert_eq!(counts[0].1.buffered_rows, 0);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_and_feature_requests_are_not_logged() {
        let (_dir, store) = fixture(3, 3);
        let svc = service_name(&store);
        let cfg = ServiceLogConfig {
            sample_rate: 1.0,
            capacity_rows: 4,
        };
        let t = LogTag {
            log: Arc::new(FeatureLog::new([(svc.clone(), cfg)])),
            request_id: "r".into(),
            now_us: NOW,
        };
        let body = format!(r#"{{"feature_service":"{svc}","entities":{{"user_id":[1,2,3]}}}}"#);
        serve_logged(&store, &t, &body);
        serve_logged(&store, &t, &body);
        serve_logged(
            &store,
            &t,
            r#"{"features":["user_profile:f000"],"entities":{"user_id":[1]}}"#,
        );
        let c = t.log.counts()[0].1;
        assert_eq!(
            (c.appended_rows, c.dropped_rows, c.buffered_rows),
            (3, 3, 3)
        );
        let b = t.log.drain(&svc).unwrap();
        assert_eq!(b.iter().map(|b| b.rows).sum::<usize>(), 3);
    }

    #[test]
    fn sampling_logs_about_the_rate() {
        let (_dir, store) = fixture(3, 3);
        let svc = service_name(&store);
        let cfg = ServiceLogConfig {
            sample_rate: 0.25,
            capacity_rows: 1 << 20,
        };
        let t = LogTag {
            log: Arc::new(FeatureLog::new([(svc.clone(), cfg)])),
            request_id: "r".into(),
            now_us: NOW,
        };
        let body = format!(r#"{{"feature_service":"{svc}","entities":{{"user_id":[1]}}}}"#);
        for _ in 0..4000 {
            serve_logged(&store, &t, &body);
        }
        let c = t.log.counts()[0].1;
        // binomial(4000, 0.25): mean 1000, sd 27.4; 5 sd either side
        assert!((863..=1137).contains(&c.sampled_requests), "{c:?}");
    }
}
