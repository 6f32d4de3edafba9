//! Vector indexes over stored `float32_array` features: one per feature declared with
//! `vector_index:` in the registry (`catalog::vector_index`), following every write under the
//! merge rule ([`index::VectorIndexes::on_write`], called by `store::Store::write`), rebuilt
//! from the stored rows when the store opens. Searched by `SearchNearest` (`crate::search`).
//! docs/vector-search.md has the model.
//!
//! | file | holds |
//! |---|---|
//! | `exact.rs` | brute force (the recall reference), SIMD-friendly distance loops |
//! | `hnsw.rs` | the usearch HNSW graph |
//! | `index.rs` | one index per feature: keys, event times, TTL, the write hook |

pub mod exact;
pub mod hnsw;
pub mod index;

pub use crate::catalog::vector_index::{Kind, Metric, VectorIndexSpec};
pub use index::{IndexStats, VectorIndex, VectorIndexes};
