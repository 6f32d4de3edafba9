//! Served-feature logging in the binding: the log of a node's `Store` or a router's
//! `RouterCore` (`serve/feature_log.rs`), configured, drained and counted from Python
//! (`serving/feature_log/writer.py`).

use super::arrow::export_batch;
use super::gil::without_gil;
use crate::query;
use crate::serve::feature_log::{FeatureLog, LogTag, ServiceLogConfig};
use parking_lot::RwLock;
use pyo3::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

/// The log of one store or router (None: logging off).
#[derive(Default)]
pub(super) struct LogSlot(RwLock<Option<Arc<FeatureLog>>>);

impl LogSlot {
    /// `{service: (sample_rate, capacity_rows)}`: new, empty buffers; `None`: off.
    pub(super) fn configure(&self, services: Option<HashMap<String, (f64, usize)>>) {
        *self.0.write() = services.map(|m| {
            Arc::new(FeatureLog::new(m.into_iter().map(|(name, (rate, cap))| {
                (
                    name,
                    ServiceLogConfig {
                        sample_rate: rate,
                        capacity_rows: cap,
                    },
                )
            })))
        });
    }

    /// The logging tag of a request with id `request_id` (None when logging is off).
    pub(super) fn tag(&self, request_id: Option<String>) -> Option<LogTag> {
        let request_id = request_id?;
        let log = self.0.read().clone()?;
        Some(LogTag {
            log,
            request_id,
            now_us: query::now_micros(),
        })
    }

    /// The rows buffered for `service` as pyarrow `RecordBatch`es (oldest first).
    pub(super) fn drain(&self, py: Python<'_>, service: &str) -> PyResult<Vec<PyObject>> {
        let Some(log) = self.0.read().clone() else {
            return Ok(Vec::new());
        };
        let batches = without_gil(py, || log.drain(service))?;
        batches
            .into_iter()
            .map(|b| export_batch(py, &b.names, b.arrays))
            .collect()
    }

    /// Per logged service: `{sampled_requests, appended_rows, dropped_rows, buffered_rows}`.
    pub(super) fn counts(&self) -> HashMap<String, HashMap<&'static str, u64>> {
        let Some(log) = self.0.read().clone() else {
            return HashMap::new();
        };
        log.counts()
            .into_iter()
            .map(|(name, c)| {
                let m = HashMap::from([
                    ("sampled_requests", c.sampled_requests),
                    ("appended_rows", c.appended_rows),
                    ("dropped_rows", c.dropped_rows),
                    ("buffered_rows", c.buffered_rows),
                ]);
                (name, m)
            })
            .collect()
    }
}
