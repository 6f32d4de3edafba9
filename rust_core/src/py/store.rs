//! The `Store` class: a node's store, its serving path and its writes.

use super::arrow::{export_batch, import_batch};
use super::errors::to_py_err;
use super::feature_log::LogSlot;
use super::gil::without_gil;
use super::pending::PyPending;
use super::settings::{parse_api, ServeSettings};
use crate::arrow_io;
use crate::catalog::ViewDef;
use crate::error::CoreError;
use crate::partition::ShardCheck;
use crate::query::{self, Entities, Limits, Selector};
use crate::scope::Scope;
use crate::serve::feature_log::LogTag;
use crate::serve::on_demand::Started;
use crate::serve::{self, Caller, ServeConfig};
use crate::store::{Store, StoreOptions, WriteStats};
use arrow::array::StructArray;
use parking_lot::{Mutex, RwLock};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

/// A served request as Python sees it: the response bytes, or the `PendingAnswer` of a request
/// with on-demand views.
fn started_to_py(py: Python<'_>, store: &Arc<Store>, cfg: ServeConfig, s: Started) -> PyObject {
    match s {
        Started::Done(served) => PyBytes::new(py, &served.body).into_any().unbind(),
        Started::Pending(p) => match Py::new(py, PyPending::new(store.clone(), cfg, p)) {
            Ok(obj) => obj.into_any(),
            Err(e) => e.into_value(py).into_any(),
        },
    }
}

/// One serving call: `SearchNearest` (`v1_search_http`, `v1_search_grpc`, Feast's
/// `feast_documents`) goes to
/// [`crate::search::serve::search`], every other API to the feature-vector path.
fn dispatch(
    store: &Store,
    api: &str,
    body: &[u8],
    cfg: &ServeConfig,
    caller: Caller<'_>,
) -> Result<Started, CoreError> {
    use crate::search::serve::{search, Wire};
    match api {
        "v1_search_http" => search(store, Wire::V1Http, body, cfg, caller).map(Started::Done),
        "v1_search_grpc" => search(store, Wire::V1Grpc, body, cfg, caller).map(Started::Done),
        "feast_documents" => search(store, Wire::FeastHttp, body, cfg, caller).map(Started::Done),
        _ => serve::on_demand::start(store, parse_api(api)?, body, cfg, caller),
    }
}

fn stats_tuple(s: WriteStats) -> (u64, u64, u64) {
    (s.rows, s.written, s.skipped_older)
}

/// The feature store: a hot tier in RAM over an embedded RocksDB.
#[pyclass(frozen, module = "serving._rust_core", name = "Store")]
pub(super) struct PyStore {
    inner: RwLock<Option<Arc<Store>>>,
    settings: ServeSettings,
    /// Shard ownership enforced by `serve` (None: not sharded, no check at all).
    shard: RwLock<Option<Arc<ShardCheck>>>,
    /// The feature names of the last plan answered, as a Python tuple: a model server asks
    /// for the same features again and again, and building 200 strings costs ~10 us a call.
    names_cache: Mutex<Option<(Arc<query::Plan>, Py<PyTuple>)>>,
    /// Served-feature logging (None: off); requests with a request id are logged.
    log: LogSlot,
}

impl PyStore {
    /// The reference names of `plan`'s columns as a (cached) tuple.
    fn plan_names(&self, py: Python<'_>, plan: &Arc<query::Plan>) -> PyResult<PyObject> {
        let mut cache = self.names_cache.lock();
        if let Some((p, names)) = cache.as_ref() {
            if Arc::ptr_eq(p, plan) {
                return Ok(names.clone_ref(py).into_any());
            }
        }
        let names = PyTuple::new(py, plan.columns.iter().map(|c| c.reference.as_str()))?;
        *cache = Some((plan.clone(), names.clone().unbind()));
        Ok(names.into_any().unbind())
    }

    /// Encodes a record batch with `encode` (rows or tombstones) and writes it with `meta`,
    /// the GIL released. Returns `(rows, written, skipped_older)`.
    fn apply_batch(
        &self,
        py: Python<'_>,
        view: &str,
        batch: &Bound<'_, PyAny>,
        meta: Option<Vec<(String, Vec<u8>)>>,
        encode: fn(&ViewDef, &StructArray) -> Result<arrow_io::KeysAndRows, CoreError>,
    ) -> PyResult<(u64, u64, u64)> {
        let store = self.store()?;
        let data = import_batch(batch)?;
        let meta = meta.unwrap_or_default();
        without_gil(py, || {
            let cat = store.catalog();
            let def = cat.view(view)?;
            let (keys, rows) = encode(def, &data)?;
            store.write(def, &keys, rows, &meta)
        })
        .map(stats_tuple)
    }

    pub(super) fn store(&self) -> PyResult<Arc<Store>> {
        self.inner
            .read()
            .clone()
            .ok_or_else(|| to_py_err(CoreError::Storage("the store is closed".into())))
    }
}

#[pymethods]
impl PyStore {
    #[new]
    #[pyo3(signature = (path, registry_json, *, hot_tier_bytes = 268_435_456, block_cache_bytes = 268_435_456, sync_writes = false, force = false))]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        registry_json: String,
        hot_tier_bytes: u64,
        block_cache_bytes: u64,
        sync_writes: bool,
        force: bool,
    ) -> PyResult<Self> {
        let opts = StoreOptions {
            hot_tier_bytes,
            block_cache_bytes,
            sync_writes,
            ..StoreOptions::default()
        };
        let store = without_gil(py, || Store::open(&path, &registry_json, opts, force))?;
        Ok(Self {
            inner: RwLock::new(Some(Arc::new(store))),
            settings: ServeSettings::default(),
            shard: RwLock::new(None),
            names_cache: Mutex::new(None),
            log: LogSlot::default(),
        })
    }

    /// Limits and encoding options of [`PyStore::serve`].
    /// `encode_threads`: threads that may encode one large Feast JSON answer (1: the calling
    /// thread alone).
    #[pyo3(signature = (*, max_entities = 1000, max_features = 1000, json_float32_shortest = false, encode_threads = 1))]
    fn configure_serving(
        &self,
        max_entities: usize,
        max_features: usize,
        json_float32_shortest: bool,
        encode_threads: usize,
    ) {
        self.settings.configure(
            max_entities,
            max_features,
            json_float32_shortest,
            encode_threads,
        );
    }

    /// Makes `serve` refuse entities of other shards: this node is shard `index` of `count`,
    /// and `partitions` maps each view with a stream source to its topic's partition count
    /// (views not listed are not checked). `None` turns the check off.
    #[pyo3(signature = (shard))]
    fn configure_sharding(&self, shard: Option<(u32, u32, HashMap<String, u32>)>) -> PyResult<()> {
        let check = match shard {
            None => None,
            Some((index, count, parts)) => Some(Arc::new(
                ShardCheck::new(index, count, parts.into_iter().collect()).map_err(to_py_err)?,
            )),
        };
        *self.shard.write() = check;
        Ok(())
    }

    /// The serving path: a request body of `api` (`feast_http`, `feast_grpc`, `v1_grpc`,
    /// `v1_http`) in, the complete response body out, in one call with the GIL released; a
    /// request naming request-time on-demand views gives a `PendingAnswer` instead, which the
    /// caller completes with the transforms' outputs.
    /// `request_id`: the request's id, logged with its rows when its feature service is
    /// logged (`configure_logging`); without one nothing is logged.
    #[pyo3(signature = (api, body, scope_id = None, request_id = None))]
    fn serve(
        &self,
        py: Python<'_>,
        api: &str,
        body: &[u8],
        scope_id: Option<u64>,
        request_id: Option<String>,
    ) -> PyResult<PyObject> {
        let store = self.store()?;
        let cfg = self.settings.config();
        let scope = self.settings.scope(scope_id).map_err(to_py_err)?;
        let shard = self.shard.read().clone();
        let log = self.log.tag(request_id);
        let served = without_gil(py, || {
            let now_us = log.as_ref().map_or_else(query::now_micros, |t| t.now_us);
            let caller = Caller {
                scope: scope.as_deref(),
                shard: shard.as_deref(),
                now_us,
                log: log.as_ref(),
            };
            dispatch(&store, api, body, &cfg, caller)
        })?;
        Ok(started_to_py(py, &store, cfg, served))
    }

    /// Many requests in one call (request batching): `(api, body, scope_id)` each; returns, in
    /// order, the response bytes or the exception of each. The GIL is released once for all.
    /// `request_ids`: per request, its id for served-feature logging (as `serve`).
    #[pyo3(signature = (requests, request_ids = None))]
    fn serve_many<'py>(
        &self,
        py: Python<'py>,
        requests: Vec<(String, Bound<'py, PyBytes>, Option<u64>)>,
        request_ids: Option<Vec<Option<String>>>,
    ) -> PyResult<Vec<PyObject>> {
        let store = self.store()?;
        let cfg = self.settings.config();
        let shard = self.shard.read().clone();
        let mut ids = request_ids.unwrap_or_default().into_iter();
        let tags: Vec<Option<LogTag>> = (0..requests.len())
            .map(|_| self.log.tag(ids.next().flatten()))
            .collect();
        let parsed: Vec<ParsedRequest<'_>> = requests
            .iter()
            .map(|(api, body, scope_id)| {
                (
                    api.as_str(),
                    body.as_bytes(),
                    self.settings.scope(*scope_id),
                )
            })
            .collect();
        let results: Vec<Result<Started, CoreError>> = without_gil(py, || {
            let now = query::now_micros();
            Ok(parsed
                .into_iter()
                .zip(&tags)
                .map(|((api, body, scope), log)| {
                    let scope = scope?;
                    let caller = Caller {
                        scope: scope.as_deref(),
                        shard: shard.as_deref(),
                        now_us: now,
                        log: log.as_ref(),
                    };
                    dispatch(&store, api, body, &cfg, caller)
                })
                .collect())
        })?;
        Ok(results
            .into_iter()
            .map(|r| match r {
                Ok(started) => started_to_py(py, &store, cfg, started),
                Err(e) => to_py_err(e).into_value(py).into_any(),
            })
            .collect())
    }

    /// Served-feature logging: `{service: (sample_rate, capacity_rows)}` starts new, empty
    /// buffers (drain the old ones first); `None` turns logging off.
    #[pyo3(signature = (services = None))]
    fn configure_logging(&self, services: Option<HashMap<String, (f64, usize)>>) {
        self.log.configure(services);
    }

    /// Takes the logged rows buffered for `service`: a list of pyarrow `RecordBatch`es
    /// (oldest first; one per request shape), empty when nothing is buffered.
    fn drain_log(&self, py: Python<'_>, service: &str) -> PyResult<Vec<PyObject>> {
        self.log.drain(py, service)
    }

    /// Per logged service: `{sampled_requests, appended_rows, dropped_rows, buffered_rows}`.
    fn log_counts(&self) -> HashMap<String, HashMap<&'static str, u64>> {
        self.log.counts()
    }

    /// Registers the read scope of an API key: `views=None` reads everything.
    #[pyo3(signature = (scope_id, views, services))]
    fn set_scope(&self, scope_id: u64, views: Option<Vec<String>>, services: Vec<String>) {
        self.settings.set_scope(scope_id, views, services);
    }

    /// Forgets every registered scope (keys were reloaded).
    fn clear_scopes(&self) {
        self.settings.clear_scopes();
    }

    /// Closes the store; RocksDB is closed once calls in flight have finished.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        let taken = self.inner.write().take();
        without_gil(py, move || {
            drop(taken);
            Ok(())
        })
    }

    #[getter]
    fn closed(&self) -> bool {
        self.inner.read().is_none()
    }

    /// Applies a new registry to the open store; returns a line per change.
    #[pyo3(signature = (registry_json, *, force = false))]
    fn apply_registry(
        &self,
        py: Python<'_>,
        registry_json: String,
        force: bool,
    ) -> PyResult<Vec<String>> {
        let store = self.store()?;
        without_gil(py, || store.apply_registry(&registry_json, force))
    }

    /// Writes a record batch (join keys, `event_timestamp`, every feature of the view) under the
    /// merge rule; `meta` entries are stored in the same atomic batch.
    /// Returns `(rows, written, skipped_older)`.
    #[pyo3(signature = (view, batch, meta = None))]
    fn write(
        &self,
        py: Python<'_>,
        view: &str,
        batch: &Bound<'_, PyAny>,
        meta: Option<Vec<(String, Vec<u8>)>>,
    ) -> PyResult<(u64, u64, u64)> {
        self.apply_batch(py, view, batch, meta, arrow_io::rows_from_batch)
    }

    /// Deletes the entities of a record batch (join keys and `event_timestamp`) with tombstones
    /// that follow the merge rule. Returns `(rows, written, skipped_older)`.
    #[pyo3(signature = (view, batch, meta = None))]
    fn delete(
        &self,
        py: Python<'_>,
        view: &str,
        batch: &Bound<'_, PyAny>,
        meta: Option<Vec<(String, Vec<u8>)>>,
    ) -> PyResult<(u64, u64, u64)> {
        self.apply_batch(py, view, batch, meta, arrow_io::tombstones_from_batch)
    }

    /// Batched lookup. Returns (feature names, pyarrow `RecordBatch` of values, statuses as bytes
    /// (u8 per cell, row-major [entity][feature]), event timestamps as bytes (i64 LE us)).
    #[pyo3(signature = (entities, *, features = None, feature_service = None, max_entities = 1_000_000))]
    fn get(
        &self,
        py: Python<'_>,
        entities: &Bound<'_, PyAny>,
        features: Option<Vec<String>>,
        feature_service: Option<String>,
        max_entities: usize,
    ) -> PyResult<(Vec<String>, PyObject, PyObject, PyObject)> {
        let store = self.store()?;
        let sel = selector(features, feature_service)?;
        let ents = arrow_io::entities_from_batch(&import_batch(entities)?).map_err(to_py_err)?;
        let (names, arrays, st, ts) = without_gil(py, || {
            let (plan, answer) = run(&store, &sel, &ents, max_entities)?;
            let arrays = arrow_io::answer_to_arrow(&answer, &plan)?;
            let (st, ts) = arrow_io::status_and_ts(&answer, &plan);
            let names: Vec<String> = plan.columns.iter().map(|c| c.reference.clone()).collect();
            Ok((names, arrays, st, ts))
        })?;
        let rb = export_batch(py, &names, arrays)?;
        let ts_bytes: Vec<u8> = ts.iter().flat_map(|t| t.to_le_bytes()).collect();
        Ok((
            names,
            rb,
            PyBytes::new(py, &st).into_any().unbind(),
            PyBytes::new(py, &ts_bytes).into_any().unbind(),
        ))
    }

    /// Dense lookup: (feature names, float32 LE bytes [entity][feature] with NaN where not
    /// PRESENT, statuses as bytes). `names=False` skips building the names list (the caller knows
    /// them when it passed explicit refs).
    #[pyo3(signature = (entities, *, features = None, feature_service = None, max_entities = 1_000_000, names = true))]
    fn get_dense(
        &self,
        py: Python<'_>,
        entities: &Bound<'_, PyAny>,
        features: Option<Vec<String>>,
        feature_service: Option<String>,
        max_entities: usize,
        names: bool,
    ) -> PyResult<(PyObject, PyObject, PyObject)> {
        let store = self.store()?;
        let sel = selector(features, feature_service)?;
        let ents = arrow_io::entities_from_batch(&import_batch(entities)?).map_err(to_py_err)?;
        let (plan, vals, st) = without_gil(py, || {
            let (plan, answer) = run(&store, &sel, &ents, max_entities)?;
            let (vals, st) = arrow_io::dense_f32(&answer, &plan)?;
            Ok((plan, vals, st))
        })?;
        let names = if names {
            self.plan_names(py, &plan)?
        } else {
            PyTuple::empty(py).into_any().unbind()
        };
        Ok((
            names,
            PyBytes::new(py, &vals).into_any().unbind(),
            PyBytes::new(py, &st).into_any().unbind(),
        ))
    }

    /// A value stored by a loader under `key` (in the same batch as the rows it covers).
    fn get_meta(&self, py: Python<'_>, key: &str) -> PyResult<Option<PyObject>> {
        let store = self.store()?;
        let v = without_gil(py, || store.get_meta(key))?;
        Ok(v.map(|b| PyBytes::new(py, &b).into_any().unbind()))
    }

    /// The registry JSON the store was last opened or updated with.
    fn registry_json(&self) -> PyResult<String> {
        Ok(self.store()?.catalog().spec_json.clone())
    }

    /// The stored (append-only) physical schema of a view, as JSON.
    fn physical_schema_json(&self, view: &str) -> PyResult<Option<String>> {
        let s = self.store()?.physical_schema(view).map_err(to_py_err)?;
        Ok(s.map(|s| serde_json::to_string(&s).expect("schema serializes")))
    }

    fn flush(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store()?;
        without_gil(py, || store.flush())
    }

    /// Writes a consistent RocksDB checkpoint of the store to `path` (must not exist); reads
    /// go on meanwhile, writes wait.
    fn checkpoint(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let store = self.store()?;
        without_gil(py, || store.checkpoint(&path))
    }

    /// Flushes and compacts every view.
    fn compact(&self, py: Python<'_>) -> PyResult<()> {
        let store = self.store()?;
        without_gil(py, || store.compact())
    }

    /// Answer-quality counters of the serving path (see `stats.rs`).
    fn serving_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let snap = self.store()?.serve_stats.snapshot();
        let d = PyDict::new(py);
        let views = PyDict::new(py);
        for (name, v) in snap.views {
            let vd = PyDict::new(py);
            vd.set_item("values", v.values.to_vec())?;
            vd.set_item("newest_event_ts", v.newest_event_ts)?;
            views.set_item(name, vd)?;
        }
        d.set_item("views", views)?;
        d.set_item("buckets", crate::stats::SIZE_BUCKETS.to_vec())?;
        d.set_item("entities", snap.entities)?;
        d.set_item("features", snap.features)?;
        d.set_item("entities_sum", snap.entities_sum)?;
        d.set_item("features_sum", snap.features_sum)?;
        d.set_item("requests", snap.requests)?;
        Ok(d)
    }

    /// Hot-tier and RocksDB figures.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let store = self.store()?;
        let d = PyDict::new(py);
        if let Some(h) = store.hot_stats() {
            let hot = PyDict::new(py);
            hot.set_item("hits", h.hits)?;
            hot.set_item("misses", h.misses)?;
            hot.set_item("evictions", h.evictions)?;
            hot.set_item("entries", h.entries)?;
            hot.set_item("bytes", h.bytes)?;
            hot.set_item("budget_bytes", h.budget)?;
            d.set_item("hot_tier", hot)?;
        }
        let rocks = PyDict::new(py);
        for (view, prop, v) in store.rocksdb_stats() {
            let key = if view.is_empty() {
                prop.to_string()
            } else {
                format!("{view}/{}", prop.trim_start_matches("rocksdb."))
            };
            rocks.set_item(key, v)?;
        }
        d.set_item("rocksdb", rocks)?;
        let vectors = PyDict::new(py);
        for s in store.vectors.stats() {
            let v = PyDict::new(py);
            v.set_item("kind", s.kind)?;
            v.set_item("metric", s.metric)?;
            v.set_item("dim", s.dim)?;
            v.set_item("vectors", s.vectors)?;
            v.set_item("memory_bytes", s.memory_bytes)?;
            v.set_item("unindexable", s.unindexable)?;
            v.set_item("failures", s.failures)?;
            v.set_item("build_seconds", s.build_seconds)?;
            vectors.set_item(format!("{}:{}", s.view, s.feature), v)?;
        }
        d.set_item("vector_indexes", vectors)?;
        Ok(d)
    }
}

/// One request of a `serve_many` batch: its API, body and scope, resolved before the GIL is
/// released.
type ParsedRequest<'a> = (&'a str, &'a [u8], Result<Option<Arc<Scope>>, CoreError>);

fn selector(features: Option<Vec<String>>, service: Option<String>) -> PyResult<Selector> {
    match (features, service) {
        (Some(f), None) => Ok(Selector::Refs(f)),
        (None, Some(s)) => Ok(Selector::Service(s)),
        _ => Err(to_py_err(CoreError::InvalidArgument(
            "give either features or feature_service".into(),
        ))),
    }
}

fn run(
    store: &Store,
    sel: &Selector,
    ents: &Entities,
    max_entities: usize,
) -> Result<(Arc<query::Plan>, query::Answer), CoreError> {
    let limits = Limits {
        max_entities,
        max_features: 100_000,
    };
    let cat = store.catalog();
    let names: Vec<&str> = ents.columns.iter().map(|c| c.0.as_str()).collect();
    let plan = query::plan_cached(&cat, sel, &names, limits)?;
    ents.check(limits)?;
    let answer = query::execute(store, &plan, ents, query::now_micros(), None)?;
    Ok((plan, answer))
}
