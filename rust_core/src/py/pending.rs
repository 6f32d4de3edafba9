//! `PendingAnswer`: a request with on-demand views, read and waiting for its transforms
//! (`serve/on_demand.rs`). The frontend runs each transform over the inputs and hands the
//! output back; `finish` encodes the answer with the GIL released.

use super::arrow::{export_batch, import_batch};
use super::errors::to_py_err;
use super::gil::without_gil;
use crate::error::CoreError;
use crate::serve::on_demand::Pending;
use crate::serve::ServeConfig;
use crate::store::Store;
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::sync::Arc;

#[pyclass(frozen, module = "serving._rust_core", name = "PendingAnswer")]
pub(super) struct PyPending {
    store: Arc<Store>,
    cfg: ServeConfig,
    inner: Mutex<Box<Pending>>,
    views: Vec<String>,
    num_entities: usize,
}

impl PyPending {
    pub(super) fn new(store: Arc<Store>, cfg: ServeConfig, p: Box<Pending>) -> Self {
        Self {
            store,
            cfg,
            views: p.views(),
            num_entities: p.num_entities(),
            inner: Mutex::new(p),
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
        let (inner, store, cfg) = (&self.inner, &self.store, &self.cfg);
        let served = without_gil(py, || inner.lock().finish(store, cfg))?;
        Ok(PyBytes::new(py, &served.body))
    }
}
