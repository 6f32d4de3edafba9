//! feature-serving's core: row codec, entity keys, hot tier, RocksDB store, batched lookups and
//! response encoders. Plain Rust; only `py` touches PyO3.

pub mod arrow_io;
pub mod catalog;
pub mod error;
pub mod hot;
pub mod ingest;
pub mod json;
pub mod key;
pub mod partition;
pub mod proto;
pub mod query;
pub mod route;
pub mod row;
pub mod scope;
pub mod serve;
pub mod stats;
pub mod store;
pub mod types;

mod py;
