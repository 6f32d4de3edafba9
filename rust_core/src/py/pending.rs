//! `PendingAnswer`: a request with on-demand views, read and waiting for its transforms. A
//! node's (`serve/on_demand.rs`: read from its store) or a router's (`route.rs`: gathered from
//! the shards' answers); the frontend runs each transform over the inputs and hands the output
//! back, the same way for both; `finish` encodes the answer with the GIL released.

use super::arrow::{export_batch, import_batch};
use super::errors::to_py_err;
use super::gil::without_gil;
use crate::error::{CoreError, Result};
use crate::route::RoutedPending;
use crate::serve::on_demand::Pending;
use crate::serve::ServeConfig;
use crate::store::Store;
use arrow::array::{ArrayRef, StructArray};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

/// Whose request waits: a node's or a router's.
enum Waiting {
    Node(Arc<Store>, Box<Pending>),
    Routed(Box<RoutedPending>),
}

impl Waiting {
    fn inputs(&self, k: usize) -> Result<(Vec<String>, Vec<ArrayRef>)> {
        match self {
            Self::Node(_, p) => p.inputs(k),
            Self::Routed(p) => p.inputs(k),
        }
    }

    fn set_output(&mut self, k: usize, batch: &StructArray) -> Result<()> {
        match self {
            Self::Node(_, p) => p.set_output(k, batch),
            Self::Routed(p) => p.set_output(k, batch),
        }
    }

    fn finish(&self, cfg: &ServeConfig) -> Result<Vec<u8>> {
        match self {
            Self::Node(store, p) => Ok(p.finish(store, cfg)?.body),
            Self::Routed(p) => p.finish(cfg),
        }
    }
}

#[pyclass(frozen, module = "serving._rust_core", name = "PendingAnswer")]
pub(super) struct PyPending {
    cfg: ServeConfig,
    inner: Mutex<Waiting>,
    views: Vec<String>,
    num_entities: usize,
}

impl PyPending {
    pub(super) fn new(store: Arc<Store>, cfg: ServeConfig, p: Box<Pending>) -> Self {
        Self {
            cfg,
            views: p.views(),
            num_entities: p.num_entities(),
            inner: Mutex::new(Waiting::Node(store, p)),
        }
    }

    pub(super) fn routed(cfg: ServeConfig, p: Box<RoutedPending>) -> Self {
        Self {
            cfg,
            views: p.views(),
            num_entities: p.num_entities(),
            inner: Mutex::new(Waiting::Routed(p)),
        }
    }
}

#[pymethods]
impl PyPending {
    /// The request's on-demand views, in the order `inputs` and `set_output` number them.
    #[getter]
    fn views(&self) -> Vec<String> {
        self.views.clone()
    }

    #[getter]
    fn num_entities(&self) -> usize {
        self.num_entities
    }

    /// The inputs of on-demand view `k` as a pyarrow `RecordBatch`: the stored source features
    /// (null where not PRESENT), then the request fields, one row per entity.
    fn inputs(&self, py: Python<'_>, k: usize) -> PyResult<PyObject> {
        let (names, arrays) = self.inner.lock().inputs(k).map_err(to_py_err)?;
        export_batch(py, &names, arrays)
    }

    /// The transform's output of on-demand view `k` (a pyarrow `RecordBatch`), checked
    /// against the registry's output features.
    fn set_output(&self, py: Python<'_>, k: usize, batch: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = import_batch(batch).map_err(|_| {
            to_py_err(CoreError::Transform(format!(
                "on-demand feature view '{}': the transform's output is no record batch",
                self.views.get(k).map_or("?", String::as_str)
            )))
        })?;
        let inner = &self.inner;
        without_gil(py, || inner.lock().set_output(k, &data))
    }

    /// The complete response body, once every view has its output.
    fn finish<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyBytes>> {
        let (inner, cfg) = (&self.inner, &self.cfg);
        let body = without_gil(py, || inner.lock().finish(cfg))?;
        Ok(PyBytes::new(py, &body))
    }
}
