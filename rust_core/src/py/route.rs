//! PyO3 binding of the router core ([`crate::route`]): `RouterCore` splits a request into
//! per-shard parts and merges their answers; the Python router only moves the bytes.

use super::errors::to_py_err;
use super::feature_log::LogSlot;
use super::gil::without_gil;
use super::pending::PyPending;
use super::settings::{parse_api, ServeSettings};
use crate::catalog::Catalog;
use crate::route::{Routed, RoutedPending, Router};
use crate::serve::feature_log::LogTag;
use crate::serve::ServeConfig;
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyBytesMethods, PyList};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A router's view of the cluster: the registry, the shard count and the sharded views.
#[pyclass(module = "serving._rust_core", name = "RouterCore", frozen)]
pub(super) struct PyRouter {
    router: RwLock<Arc<Router>>,
    settings: ServeSettings,
    spread: AtomicUsize,
    /// Served-feature logging of the merged answers (`route --log-at router`).
    log: LogSlot,
}

fn build(
    registry_json: &str,
    shard_count: u32,
    partitions: HashMap<String, u32>,
) -> PyResult<Router> {
    let catalog = Catalog::from_spec_json(registry_json).map_err(to_py_err)?;
    Router::new(
        Arc::new(catalog),
        shard_count,
        partitions.into_iter().collect(),
    )
    .map_err(to_py_err)
}

#[pymethods]
impl PyRouter {
    /// `registry_json`: `Registry.to_core_json()`; `partitions`: each sharded view (a view
    /// with a stream source) and its topic's partition count.
    #[new]
    fn new(
        registry_json: &str,
        shard_count: u32,
        partitions: HashMap<String, u32>,
    ) -> PyResult<Self> {
        Ok(Self {
            router: RwLock::new(Arc::new(build(registry_json, shard_count, partitions)?)),
            settings: ServeSettings::default(),
            spread: AtomicUsize::new(0),
            log: LogSlot::default(),
        })
    }

    /// Swaps in another registry (and sharded views) for the requests that follow.
    fn reload(
        &self,
        registry_json: &str,
        shard_count: u32,
        partitions: HashMap<String, u32>,
    ) -> PyResult<()> {
        *self.router.write() = Arc::new(build(registry_json, shard_count, partitions)?);
        Ok(())
    }

    #[getter]
    fn shard_count(&self) -> u32 {
        self.router.read().shard_count
    }

    /// Limits and encoding options, as for a node.
    #[pyo3(signature = (*, max_entities = 1000, max_features = 1000, json_float32_shortest = false))]
    fn configure_serving(
        &self,
        max_entities: usize,
        max_features: usize,
        json_float32_shortest: bool,
    ) {
        self.settings
            .configure(max_entities, max_features, json_float32_shortest, 1);
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

    /// Served-feature logging of merged answers, as `Store.configure_logging`.
    #[pyo3(signature = (services = None))]
    fn configure_logging(&self, services: Option<HashMap<String, (f64, usize)>>) {
        self.log.configure(services);
    }

    /// The logged rows buffered for `service`, as `Store.drain_log`.
    fn drain_log(&self, py: Python<'_>, service: &str) -> PyResult<Vec<PyObject>> {
        self.log.drain(py, service)
    }

    /// The log's counters, as `Store.log_counts`.
    fn log_counts(&self) -> HashMap<String, HashMap<&'static str, u64>> {
        self.log.counts()
    }

    /// A router has no store to close (the writer asks, as of a node's store).
    #[getter]
    #[allow(clippy::unused_self)] // a Python property needs its receiver
    fn closed(&self) -> bool {
        false
    }

    /// Parses, plans and splits a request of `api` (GIL released). Errors are those a node
    /// would raise for the same request. `request_id`: the merged answer is logged under it
    /// when its service is logged (`configure_logging`).
    #[pyo3(signature = (api, body, scope_id = None, request_id = None))]
    fn route(
        &self,
        py: Python<'_>,
        api: &str,
        body: &[u8],
        scope_id: Option<u64>,
        request_id: Option<String>,
    ) -> PyResult<PyRouted> {
        let api = parse_api(api).map_err(to_py_err)?;
        let scope = self.settings.scope(scope_id).map_err(to_py_err)?;
        let router = self.router.read().clone();
        let cfg = self.settings.config();
        let spread = self.spread.fetch_add(1, Ordering::Relaxed);
        let routed = without_gil(py, || {
            router.route(api, body, &cfg, scope.as_deref(), spread)
        })?;
        let log = self.log.tag(request_id);
        Ok(PyRouted {
            routed: Arc::new(routed),
            cfg,
            log,
        })
    }
}

/// A request split into per-shard parts.
#[pyclass(module = "serving._rust_core", name = "Routed", frozen)]
pub(super) struct PyRouted {
    routed: Arc<Routed>,
    cfg: ServeConfig,
    log: Option<LogTag>,
}

#[pymethods]
impl PyRouted {
    /// `[(shard, GetCellsRequest bytes), ...]`: send each to a replica of its shard.
    fn parts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        PyList::new(
            py,
            self.routed
                .parts
                .iter()
                .map(|p| (p.shard, PyBytes::new(py, &p.body))),
        )
    }

    /// The response body from the parts' answers, in `parts()` order (GIL released); for a
    /// request naming on-demand views, a `PendingAnswer` whose transforms are due.
    fn merge<'py>(
        &self,
        py: Python<'py>,
        answers: Vec<Bound<'py, PyBytes>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        if self.routed.has_on_demand() {
            let owned: Vec<Vec<u8>> = answers.iter().map(|a| a.as_bytes().to_vec()).collect();
            let routed = self.routed.clone();
            let log = self.log.clone();
            let pending = without_gil(py, || RoutedPending::start(routed, owned, log))?;
            let obj = Bound::new(py, PyPending::routed(self.cfg, Box::new(pending)))?;
            return Ok(obj.into_any());
        }
        let slices: Vec<&[u8]> = answers.iter().map(PyBytesMethods::as_bytes).collect();
        let body = without_gil(py, || {
            self.routed
                .merge_logged(&slices, &self.cfg, self.log.as_ref())
        })?;
        Ok(PyBytes::new(py, &body).into_any())
    }

    #[getter]
    fn num_entities(&self) -> usize {
        self.routed.prepared().num_entities()
    }

    #[getter]
    fn num_features(&self) -> usize {
        self.routed.prepared().num_features()
    }

    /// Feature views the request reads.
    #[getter]
    fn views(&self) -> Vec<String> {
        self.routed.prepared().views().map(str::to_string).collect()
    }
}
