//! feature-serving's core: row codec, entity keys, hot tier, RocksDB store, batched lookups and
//! response encoders. Plain Rust; only `py` touches PyO3.
//!
//! The modules form layers; a module uses only modules of lower layers (so there is no import
//! circle):
//!
//! 1. codecs and counters: `types`, `error`, `key`, `row`, `partition`, `proto`, `stats`;
//! 2. catalog and storage: `catalog` (with request planning, `catalog::plan`, cached in the
//!    catalog), `hot`, `vector` (the vector indexes, kept by the store), `store`;
//! 3. reading and writing: `query` (execute a plan, answer cells), `scope`, `arrow_io`,
//!    `ingest`;
//! 4. serving: `cells_codec` (a node's answer to a router), `serve` (one entry point,
//!    `serve::serve`), `search` (`SearchNearest`, one entry point `search::serve::search`);
//! 5. routing: `route`;
//! 6. the Python binding: `py*`.

pub mod arrow_io;
pub mod catalog;
pub mod cells_codec;
pub mod error;
pub mod hot;
pub mod ingest;
pub mod key;
pub mod partition;
pub mod proto;
pub mod query;
pub mod route;
pub mod row;
pub mod scope;
pub mod search;
pub mod serve;
pub mod stats;
pub mod store;
pub mod types;
pub mod vector;

mod py;
