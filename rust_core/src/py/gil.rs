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
    use std::path::Path;

    /// Every GIL release goes through [`super::without_gil`]: a second `allow_threads` would
    /// bring back a call site with its own error mapping.
    #[test]
    fn the_gil_is_released_in_one_place() {
        // Split so that this test's own text is no call site.
        let needle = [".allow", "_threads("].concat();
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut sites = Vec::new();
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let n = text.matches(needle.as_str()).count();
                    if n > 0 {
                        sites.push((path.display().to_string(), n));
                    }
                }
            }
        }
        assert_eq!(sites.len(), 1, "allow_threads outside py/gil.rs: {sites:?}");
        assert!(
            sites[0].0.ends_with("gil.rs") && sites[0].1 == 1,
            "{sites:?}"
        );
    }
}
