//! PyO3 functions of the Kafka loader (`serving/kafka_loader.py`): decoding and writing batches
//! of records with the GIL released, and the record-key encoding shared with producers.

use super::arrow::export_batch;
use super::errors::to_py_err;
use super::gil::without_gil;
use super::store::PyStore;
use crate::arrow_io;
use crate::catalog::ViewDef;
use crate::error::CoreError;
use crate::ingest::{self, Decoded, Format, KeyInput, PartitionCheck, Record};
use crate::partition;
use crate::store::Store;
use crate::types::KeyType;
use parking_lot::Mutex;
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyInt, PyString};
use std::num::NonZeroU32;
use std::sync::Arc;

/// `(key, value, partition, offset, timestamp_ms)` as the loader passes a record; a timestamp
/// of None or below 0 means the record has none.
type RawRecord<'py> = (
    Option<Bound<'py, PyBytes>>,
    Option<Bound<'py, PyBytes>>,
    i32,
    i64,
    Option<i64>,
);

type Meta = Option<Vec<(String, Vec<u8>)>>;
/// `(written, skipped_older, errors)` of [`ingest_batch`].
type IngestResult = (u64, u64, Vec<(usize, String)>);

fn to_records<'a>(raw: &'a [RawRecord<'_>]) -> Vec<Record<'a>> {
    raw.iter()
        .map(|(k, v, partition, offset, ts)| Record {
            key: k.as_ref().map(PyBytesMethods::as_bytes),
            value: v.as_ref().map(PyBytesMethods::as_bytes),
            partition: *partition,
            offset: *offset,
            timestamp_ms: ts.filter(|&t| t >= 0),
        })
        .collect()
}

/// A decoded batch of records, not yet written: the loader dead-letters the bad records first,
/// then writes the rows together with the offsets, so a crash in between loses nothing.
#[pyclass(frozen, module = "serving._rust_core", name = "DecodedBatch")]
pub(super) struct PyDecodedBatch {
    store: Arc<Store>,
    view: Arc<ViewDef>,
    pending: Mutex<Option<Decoded>>,
    errors: Vec<(usize, String)>,
    next_offsets: Vec<(i32, i64)>,
    upserts: u64,
    tombstones: u64,
    ignored: u64,
    max_event_ts: Option<i64>,
    misrouted: Vec<(usize, u32, bool)>,
}

#[pymethods]
impl PyDecodedBatch {
    /// Records that change nothing: `(index in the batch, reason)`.
    #[getter]
    fn errors(&self) -> Vec<(usize, String)> {
        self.errors.clone()
    }

    /// `(partition, offset after the batch's last record)`, ascending by partition.
    #[getter]
    fn next_offsets(&self) -> Vec<(i32, i64)> {
        self.next_offsets.clone()
    }

    #[getter]
    fn upserts(&self) -> u64 {
        self.upserts
    }

    #[getter]
    fn tombstones(&self) -> u64 {
        self.tombstones
    }

    /// Records naming another feature view.
    #[getter]
    fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Newest event time of the batch's rows and deletes (microseconds), None if none.
    #[getter]
    fn max_event_ts(&self) -> Option<i64> {
        self.max_event_ts
    }

    /// Records whose entity key belongs to another partition than the one they arrived on
    /// (with `num_partitions`): `(index in the batch, expected partition, record key is the
    /// entity key)`, ascending by index.
    #[getter]
    fn misrouted(&self) -> Vec<(usize, u32, bool)> {
        self.misrouted.clone()
    }

    /// The join keys and event times of the batch's rows and tombstones (a pyarrow
    /// `RecordBatch`), before `write`: what write-time on-demand views derive from.
    fn entities(&self, py: Python<'_>) -> PyResult<PyObject> {
        let (names, arrays) = {
            let guard = self.pending.lock();
            let d = guard.as_ref().ok_or_else(|| {
                to_py_err(CoreError::InvalidArgument(
                    "this batch was already written".into(),
                ))
            })?;
            arrow_io::entities_of_rows(&self.view, &d.keys, &d.rows).map_err(to_py_err)?
        };
        export_batch(py, &names, arrays)
    }

    /// Writes the rows and `meta` in one atomic write; returns `(written, skipped_older)`.
    /// A batch is written once.
    #[pyo3(signature = (meta = None))]
    fn write(&self, py: Python<'_>, meta: Meta) -> PyResult<(u64, u64)> {
        let mut d = self.pending.lock().take().ok_or_else(|| {
            to_py_err(CoreError::InvalidArgument(
                "this batch was already written".into(),
            ))
        })?;
        let meta = meta.unwrap_or_default();
        let stats = without_gil(py, || ingest::write(&self.store, &self.view, &mut d, &meta))?;
        Ok((stats.written, stats.skipped_older))
    }
}

fn parse_format(format: &str) -> PyResult<Format> {
    Format::parse(format).map_err(to_py_err)
}

/// Decodes a batch of records for `view` (GIL released); bad records are listed in `errors`.
/// With `num_partitions` (the topic's partition count) each row's entity key is checked
/// against the partition its record arrived on (`misrouted`); `drop_misrouted` leaves those
/// records out of the write.
#[pyfunction]
#[pyo3(signature = (store, view, format, records, num_partitions = None, drop_misrouted = false))]
pub(super) fn decode_batch(
    py: Python<'_>,
    store: &PyStore,
    view: &str,
    format: &str,
    records: Vec<RawRecord<'_>>,
    num_partitions: Option<i64>,
    drop_misrouted: bool,
) -> PyResult<PyDecodedBatch> {
    let fmt = parse_format(format)?;
    let check = num_partitions
        .map(|n| {
            partition_count(n).map(|n| PartitionCheck {
                num_partitions: NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN),
                drop: drop_misrouted,
            })
        })
        .transpose()?;
    let store = store.store()?;
    let def = store.catalog().view(view).map_err(to_py_err)?.clone();
    let recs = to_records(&records);
    let mut d = without_gil(py, || Ok(ingest::decode_checked(&def, fmt, &recs, check)))?;
    Ok(PyDecodedBatch {
        store,
        view: def,
        errors: std::mem::take(&mut d.errors),
        next_offsets: std::mem::take(&mut d.next_offsets),
        upserts: d.upserts,
        tombstones: d.tombstones,
        ignored: d.ignored,
        max_event_ts: d.max_event_ts,
        misrouted: d
            .misrouted
            .iter()
            .map(|m| (m.index, m.expected, m.key_matches))
            .collect(),
        pending: Mutex::new(Some(d)),
    })
}

/// Decodes and writes a batch with `meta` in one atomic write (GIL released).
/// Returns `(written, skipped_older, errors)`.
#[pyfunction]
#[pyo3(signature = (store, view, format, records, meta = None))]
pub(super) fn ingest_batch(
    py: Python<'_>,
    store: &PyStore,
    view: &str,
    format: &str,
    records: Vec<RawRecord<'_>>,
    meta: Meta,
) -> PyResult<IngestResult> {
    let fmt = parse_format(format)?;
    let store = store.store()?;
    let recs = to_records(&records);
    let meta = meta.unwrap_or_default();
    let (d, stats) = without_gil(py, || ingest::ingest(&store, view, fmt, &recs, &meta))?;
    Ok((stats.written, stats.skipped_older, d.errors))
}

fn key_types(dtypes: &[String]) -> PyResult<Vec<(String, KeyType)>> {
    dtypes
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let ty = match t.as_str() {
                "int64" => KeyType::Int64,
                "int32" => KeyType::Int32,
                "string" => KeyType::String,
                "bytes" => KeyType::Bytes,
                other => {
                    return Err(to_py_err(CoreError::InvalidArgument(format!(
                        "unknown join key type '{other}' (int32, int64, string or bytes)"
                    ))))
                }
            };
            Ok((format!("#{i}"), ty))
        })
        .collect()
}

fn key_input<'a>(v: &'a Bound<'_, PyAny>) -> PyResult<KeyInput<'a>> {
    if let Ok(b) = v.downcast::<PyBytes>() {
        Ok(KeyInput::Bytes(b.as_bytes()))
    } else if let Ok(s) = v.downcast::<PyString>() {
        Ok(KeyInput::Str(s.to_str()?))
    } else if v.is_instance_of::<PyInt>() {
        Ok(KeyInput::Int(v.extract()?))
    } else {
        Err(PyTypeError::new_err(format!(
            "a join key value must be int, str or bytes, not {}",
            v.get_type().name()?
        )))
    }
}

fn encode_one(types: &[(String, KeyType)], values: &[Bound<'_, PyAny>]) -> PyResult<Vec<u8>> {
    let inputs = values.iter().map(key_input).collect::<PyResult<Vec<_>>>()?;
    ingest::encode_entity_key(types, &inputs).map_err(to_py_err)
}

/// The Kafka record key of an entity: its join-key values (in the view's order, typed by
/// `dtypes`) encoded like the store's entity keys.
#[pyfunction]
pub(super) fn encode_entity_key<'py>(
    py: Python<'py>,
    dtypes: Vec<String>,
    values: Vec<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyBytes>> {
    let types = key_types(&dtypes)?;
    Ok(PyBytes::new(py, &encode_one(&types, &values)?))
}

/// [`encode_entity_key`] for many entities given column-wise (one sequence per join key).
#[pyfunction]
pub(super) fn encode_entity_keys<'py>(
    py: Python<'py>,
    dtypes: Vec<String>,
    columns: Vec<Vec<Bound<'py, PyAny>>>,
) -> PyResult<Vec<Bound<'py, PyBytes>>> {
    let types = key_types(&dtypes)?;
    if columns.len() != types.len() {
        return Err(to_py_err(CoreError::InvalidArgument(format!(
            "expected {} key column(s), got {}",
            types.len(),
            columns.len()
        ))));
    }
    let n = columns.first().map_or(0, Vec::len);
    if columns.iter().any(|c| c.len() != n) {
        return Err(to_py_err(CoreError::InvalidArgument(
            "key columns have different lengths".into(),
        )));
    }
    let mut row = Vec::with_capacity(columns.len());
    (0..n)
        .map(|i| {
            row.clear();
            row.extend(columns.iter().map(|c| c[i].clone()));
            Ok(PyBytes::new(py, &encode_one(&types, &row)?))
        })
        .collect()
}

fn partition_count(num_partitions: i64) -> PyResult<u32> {
    u32::try_from(num_partitions)
        .ok()
        .filter(|&n| n > 0 && i32::try_from(n).is_ok())
        .ok_or_else(|| {
            to_py_err(CoreError::InvalidArgument(format!(
                "num_partitions must be between 1 and 2147483647, got {num_partitions}"
            )))
        })
}

/// The partition Kafka's default keyed partitioner (the Java client's, librdkafka's
/// `murmur2_random`) puts a record with `key` on: `(murmur2(key) & 0x7fffffff) % num_partitions`.
#[pyfunction]
pub(super) fn partition_for_key(key: &[u8], num_partitions: i64) -> PyResult<u32> {
    partition::partition_for_key(key, partition_count(num_partitions)?).map_err(to_py_err)
}

/// [`partition_for_key`] for many keys.
#[pyfunction]
pub(super) fn partitions_for_keys(
    keys: Vec<Bound<'_, PyBytes>>,
    num_partitions: i64,
) -> PyResult<Vec<u32>> {
    let keys: Vec<&[u8]> = keys.iter().map(PyBytesMethods::as_bytes).collect();
    partition::partitions_for_keys(&keys, partition_count(num_partitions)?).map_err(to_py_err)
}

/// Kafka's murmur2 of `data` as the Java client returns it (a signed 32-bit int).
#[pyfunction]
pub(super) fn murmur2(data: &[u8]) -> i32 {
    partition::murmur2(data) as i32
}
