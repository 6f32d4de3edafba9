//! Core errors raised as `serving.errors` classes: one table, the classes bound once per
//! interpreter when the extension is imported.

use crate::error::CoreError;
use pyo3::exceptions::PyImportError;
use pyo3::prelude::*;
use pyo3::sync::GILOnceCell;
use pyo3::types::PyType;

/// Declares the table: `Kind => Class` per line. A `CoreError` variant missing here does not
/// compile (the match is exhaustive); a class missing in `serving.errors` fails the import of
/// `serving._rust_core` (see [`bind`]).
macro_rules! error_classes {
    ($($kind:ident => $class:ident,)+) => {
        /// A `CoreError` variant without its message; indexes [`CLASSES`].
        #[derive(Clone, Copy)]
        enum Kind {
            $($kind,)+
        }

        /// `(CoreError variant, serving.errors class)`, in `Kind` order.
        const TABLE: &[(&str, &str)] = &[$((stringify!($kind), stringify!($class)),)+];

        fn split(e: CoreError) -> (Kind, String) {
            match e {
                $(CoreError::$kind(m) => (Kind::$kind, m),)+
            }
        }
    };
}

error_classes! {
    InvalidArgument => InvalidArgumentError,
    NotFound => NotFoundError,
    Schema => SchemaError,
    Storage => StorageError,
    LimitExceeded => LimitExceededError,
    PermissionDenied => PermissionDeniedError,
    WrongShard => WrongShardError,
    BadShardAnswer => ShardAnswerError,
    Transform => TransformError,
}

/// The classes of [`TABLE`], in its order.
static CLASSES: GILOnceCell<Vec<Py<PyType>>> = GILOnceCell::new();

/// Imports `serving.errors` and binds every class of the table, once. Each must be a subclass of
/// `FeatureServingError`: the frontends answer only those with their own status.
pub(super) fn bind(py: Python<'_>) -> PyResult<&'static [Py<PyType>]> {
    CLASSES
        .get_or_try_init(py, || {
            let module = py.import("serving.errors")?;
            let base = module
                .getattr("FeatureServingError")
                .map_err(|_| PyImportError::new_err("serving.errors has no FeatureServingError"))?;
            TABLE
                .iter()
                .map(|(kind, name)| {
                    let class = module
                        .getattr(*name)
                        .ok()
                        .and_then(|c| c.downcast_into::<PyType>().ok())
                        .filter(|c| c.is_subclass(&base).unwrap_or(false));
                    class.map(Bound::unbind).ok_or_else(|| {
                        PyImportError::new_err(format!(
                            "serving.errors.{name} must be a subclass of FeatureServingError: \
                             the Rust core raises it for CoreError::{kind}"
                        ))
                    })
                })
                .collect()
        })
        .map(Vec::as_slice)
}

/// Maps a core error to its `serving.errors` class (the exception is built when raised).
pub(crate) fn to_py_err(e: CoreError) -> PyErr {
    let (kind, msg) = split(e);
    Python::with_gil(|py| match bind(py) {
        Ok(classes) => PyErr::from_type(classes[kind as usize].bind(py).clone(), (msg,)),
        Err(e) => e,
    })
}
