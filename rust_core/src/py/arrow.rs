//! Record batches across the Arrow C data interface, without copying.

use super::errors::to_py_err;
use crate::error::CoreError;
use arrow::array::{Array, ArrayRef, StructArray};
use arrow::datatypes::{Field, Fields};
use arrow::ffi::{from_ffi, to_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use pyo3::prelude::*;
use pyo3::types::PyCapsule;

/// Imports an object exporting `__arrow_c_array__` (a pyarrow `RecordBatch`) without copying.
pub(super) fn import_batch(obj: &Bound<'_, PyAny>) -> PyResult<StructArray> {
    let pair = obj.call_method0("__arrow_c_array__").map_err(|_| {
        to_py_err(CoreError::InvalidArgument(
            "expected a pyarrow `RecordBatch` (an object with __arrow_c_array__)".into(),
        ))
    })?;
    let (schema_cap, array_cap): (Bound<'_, PyCapsule>, Bound<'_, PyCapsule>) = pair.extract()?;
    // SAFETY: the capsules come from the Arrow PyCapsule interface, which guarantees these
    // pointer types; `from_raw` moves the array out, leaving the capsule's copy released, and
    // the schema is only borrowed for the duration of `from_ffi`.
    let data = unsafe {
        let array = FFI_ArrowArray::from_raw(array_cap.pointer().cast::<FFI_ArrowArray>());
        let schema = &*(schema_cap.pointer() as *const FFI_ArrowSchema);
        from_ffi(array, schema)
    }
    .map_err(|e| to_py_err(e.into()))?;
    if !matches!(data.data_type(), arrow::datatypes::DataType::Struct(_)) {
        return Err(to_py_err(CoreError::InvalidArgument(
            "expected a record batch (struct array)".into(),
        )));
    }
    Ok(StructArray::from(data))
}

/// Hands named Arrow arrays to pyarrow as one `RecordBatch`.
pub(super) fn export_batch(
    py: Python<'_>,
    names: &[String],
    arrays: Vec<ArrayRef>,
) -> PyResult<PyObject> {
    let fields: Fields = names
        .iter()
        .zip(&arrays)
        .map(|(n, a)| Field::new(n, a.data_type().clone(), true))
        .collect();
    let st = StructArray::try_new(fields, arrays, None).map_err(|e| to_py_err(e.into()))?;
    let (array, schema) = to_ffi(&st.into_data()).map_err(|e| to_py_err(e.into()))?;
    let array = Box::new(array);
    let schema = Box::new(schema);
    let pa = py.import("pyarrow")?;
    // pyarrow moves both structs out (their release callbacks become null), so dropping the
    // boxes afterwards frees nothing twice.
    let rb = pa.getattr("RecordBatch")?.call_method1(
        "_import_from_c",
        (
            std::ptr::addr_of!(*array) as usize,
            std::ptr::addr_of!(*schema) as usize,
        ),
    )?;
    Ok(rb.unbind())
}
