//! The core's one error type. `py/errors.rs` maps each kind to a class of `serving.errors`.

use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CoreError {
    /// Malformed request or input data.
    #[error("{0}")]
    InvalidArgument(String),
    /// A named view, feature or feature service does not exist.
    #[error("{0}")]
    NotFound(String),
    /// A registry change conflicts with the stored schema.
    #[error("{0}")]
    Schema(String),
    /// RocksDB failed (I/O, lock held, corruption).
    #[error("{0}")]
    Storage(String),
    /// The caller's API key may not read what it asked for.
    #[error("{0}")]
    PermissionDenied(String),
    /// A per-request limit was exceeded (entities or features per request). Raised as
    /// `LimitExceededError`: `RESOURCE_EXHAUSTED` over gRPC, 413 over HTTP, as the body-size limit.
    #[error("{0}")]
    LimitExceeded(String),
    /// The request asks a sharded node for an entity another shard owns.
    #[error("{0}")]
    WrongShard(String),
    /// A router cannot use a shard's answer (another registry on the node, malformed bytes).
    #[error("{0}")]
    BadShardAnswer(String),
    /// An on-demand view's transform failed or returned output that does not match the
    /// registry: the server's fault, not the caller's (INTERNAL / 500).
    #[error("{0}")]
    Transform(String),
}

impl From<rocksdb::Error> for CoreError {
    fn from(e: rocksdb::Error) -> Self {
        CoreError::Storage(format!("rocksdb: {e}"))
    }
}

impl From<arrow::error::ArrowError> for CoreError {
    fn from(e: arrow::error::ArrowError) -> Self {
        CoreError::InvalidArgument(format!("arrow: {e}"))
    }
}

pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Shorthand for `Err(CoreError::InvalidArgument(format!(...)))`.
#[macro_export]
macro_rules! invalid {
    ($($arg:tt)*) => { $crate::error::CoreError::InvalidArgument(format!($($arg)*)) };
}
