//! The PyO3 binding, the only module that touches Python: this file is the extension module's
//! root. Every call that does real work releases the GIL through `gil::without_gil`; every
//! error is raised through `errors::to_py_err`, the one table of `serving.errors` classes.

mod arrow;
mod errors;
mod feature_log;
mod gil;
mod ingest;
mod pending;
mod route;
mod settings;
mod store;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_rust_core")]
fn rust_core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // A `serving.errors` without a class the core raises fails here, at import, rather than
    // at the first error of that kind.
    errors::bind(m.py())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("ROCKSDB_BINDING", "rust-rocksdb 0.21 (system librocksdb)")?;
    m.add_class::<store::PyStore>()?;
    m.add_class::<pending::PyPending>()?;
    m.add_class::<ingest::PyDecodedBatch>()?;
    m.add_function(wrap_pyfunction!(ingest::decode_batch, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::ingest_batch, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::encode_entity_key, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::encode_entity_keys, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::partition_for_key, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::partitions_for_keys, m)?)?;
    m.add_function(wrap_pyfunction!(ingest::murmur2, m)?)?;
    m.add_class::<route::PyRouter>()?;
    m.add_class::<route::PyRouted>()?;
    Ok(())
}
