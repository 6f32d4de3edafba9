//! The one way a call that does real work leaves Python (polars' `enter_polars` pattern).

use super::errors::to_py_err;
use crate::error::CoreError;
use pyo3::marker::Ungil;
use pyo3::prelude::*;

/// Runs `work` with the GIL released and raises its error as the matching `serving.errors`
/// class. `Ungil` keeps Python objects out of `work`: callers extract and clone what it needs
/// first (the store's `Arc`, the settings), so no lock of a binding object is held meanwhile.
/// Borrowed `&[u8]` of a `bytes` argument may go in: `bytes` is immutable and the caller's
/// reference keeps it alive, so the serving path copies no request body.
#[inline]
pub(super) fn without_gil<T, F>(py: Python<'_>, work: F) -> PyResult<T>
where
    F: Ungil + FnOnce() -> Result<T, CoreError>,
    Result<T, CoreError>: Ungil,
{
    py.allow_threads(work).map_err(to_py_err)
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `src/` with its text.
    fn sources() -> Vec<(PathBuf, String)> {
        let mut files = Vec::new();
        let mut stack = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("src")];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    files.push((path, text));
                }
            }
        }
        files
    }

    /// Every GIL release goes through [`super::without_gil`]: a second `allow_threads` would
    /// bring back a call site with its own error mapping.
    #[test]
    fn the_gil_is_released_in_one_place() {
        // Split so that this test's own text is no call site.
        let needle = [".allow", "_threads("].concat();
        let sites: Vec<_> = sources()
            .into_iter()
            .map(|(path, text)| (path, text.matches(needle.as_str()).count()))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert!(
            sites.len() == 1 && sites[0].0.ends_with("py/gil.rs") && sites[0].1 == 1,
            "allow_threads outside py/gil.rs: {sites:?}"
        );
    }

    /// The core below the binding is plain Rust (the premise of moving it into a crate of its
    /// own some day, docs/design.md "Core and binding"): only `src/py/` names pyo3.
    #[test]
    fn only_the_binding_uses_pyo3() {
        let binding = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/py");
        let outside: Vec<_> = sources()
            .into_iter()
            .filter(|(path, text)| !path.starts_with(&binding) && text.contains("pyo3"))
            .map(|(path, _)| path)
            .collect();
        assert!(outside.is_empty(), "pyo3 outside src/py: {outside:?}");
    }
}
