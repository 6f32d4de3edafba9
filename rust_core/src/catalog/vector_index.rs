//! `vector_index:` of a `float32_array` feature, as the registry (validated in
//! `serving/registry.py`, defaults filled in there) sends it to the core.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `1 - cos(a, b)`: vectors are normalized when indexed and when queried.
    #[default]
    Cosine,
    /// Squared Euclidean distance.
    L2,
    /// `1 - a.b` (smaller is nearer, as for the other metrics).
    InnerProduct,
}

impl Metric {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cosine => "cosine",
            Self::L2 => "l2",
            Self::InnerProduct => "inner_product",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Brute force over every vector: exact, the reference for recall.
    Exact,
    /// A usearch HNSW graph (docs/vector-search.md has the measured choice).
    #[default]
    Hnsw,
}

pub const DEFAULT_M: usize = 16;
pub const DEFAULT_EF_CONSTRUCTION: usize = 128;
pub const DEFAULT_EF_SEARCH: usize = 64;
pub const DEFAULT_MAX_K: usize = 1000;

fn d_m() -> usize {
    DEFAULT_M
}
fn d_efc() -> usize {
    DEFAULT_EF_CONSTRUCTION
}
fn d_efs() -> usize {
    DEFAULT_EF_SEARCH
}
fn d_max_k() -> usize {
    DEFAULT_MAX_K
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorIndexSpec {
    #[serde(default)]
    pub metric: Metric,
    #[serde(default)]
    pub kind: Kind,
    /// HNSW: links per node (usearch's connectivity).
    #[serde(default = "d_m")]
    pub m: usize,
    /// HNSW: candidate list while inserting.
    #[serde(default = "d_efc")]
    pub ef_construction: usize,
    /// HNSW: candidate list while searching (at least k is used).
    #[serde(default = "d_efs")]
    pub ef_search: usize,
    /// The largest k a request may ask for.
    #[serde(default = "d_max_k")]
    pub max_k: usize,
}

impl Default for VectorIndexSpec {
    fn default() -> Self {
        Self {
            metric: Metric::default(),
            kind: Kind::default(),
            m: DEFAULT_M,
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            ef_search: DEFAULT_EF_SEARCH,
            max_k: DEFAULT_MAX_K,
        }
    }
}
