//! The approximate index: a usearch HNSW graph (chosen by the comparison in
//! docs/vector-search.md: the only one of the three crates with both insert and remove).
//! usearch is internally synchronized: adds, removes and searches may run from several threads.

use crate::catalog::vector_index::{Metric, VectorIndexSpec};
use crate::error::{CoreError, Result};

pub struct Graph {
    index: usearch::Index,
}

fn err(e: &impl std::fmt::Display) -> CoreError {
    CoreError::Storage(format!("vector index: {e}"))
}

/// Concurrent searches and adds need a usearch thread context each; more than the serving
/// path ever runs at once (a worker per core plus the writer).
fn contexts() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get() * 4)
        .max(8)
}

impl Graph {
    pub fn new(dim: usize, spec: &VectorIndexSpec) -> Result<Self> {
        let opts = usearch::IndexOptions {
            dimensions: dim,
            // Vectors arrive normalized for cosine, so IP (1 - a.b) is cosine distance.
            metric: match spec.metric {
                Metric::L2 => usearch::MetricKind::L2sq,
                Metric::Cosine | Metric::InnerProduct => usearch::MetricKind::IP,
            },
            quantization: usearch::ScalarKind::F32,
            connectivity: spec.m,
            expansion_add: spec.ef_construction,
            expansion_search: spec.ef_search,
            multi: false,
        };
        let index = usearch::Index::new(&opts).map_err(|e| err(&e))?;
        index
            .reserve_capacity_and_threads(1024, contexts())
            .map_err(|e| err(&e))?;
        Ok(Self { index })
    }

    pub fn len(&self) -> usize {
        self.index.size()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn memory_bytes(&self) -> usize {
        self.index.memory_usage()
    }

    /// Room for `extra` more vectors (capacity doubles, so adds stay amortized O(1)).
    pub fn reserve(&self, extra: usize) -> Result<()> {
        let need = self.index.size() + extra;
        if need > self.index.capacity() {
            let cap = need.max(self.index.capacity() * 2);
            self.index
                .reserve_capacity_and_threads(cap, contexts())
                .map_err(|e| err(&e))?;
        }
        Ok(())
    }

    /// Adds `id` (replacing its vector). Call [`Graph::reserve`] first.
    pub fn upsert(&self, id: u64, v: &[f32]) -> Result<()> {
        if self.index.contains(id) {
            self.index.remove(id).map_err(|e| err(&e))?;
        }
        self.index.add(id, v).map_err(|e| err(&e))
    }

    pub fn remove(&self, id: u64) -> Result<()> {
        if self.index.contains(id) {
            self.index.remove(id).map_err(|e| err(&e))?;
        }
        Ok(())
    }

    /// The `k` nearest ids that `accept` lets through (usearch's filtered search skips the
    /// others while walking the graph), nearest first. usearch widens its candidate list to
    /// `max(ef_search, k)` itself.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        accept: &dyn Fn(u64) -> bool,
    ) -> Result<Vec<(u64, f32)>> {
        if k == 0 || self.is_empty() {
            return Ok(Vec::new());
        }
        let m = self
            .index
            .filtered_search(q, k, accept)
            .map_err(|e| err(&e))?;
        Ok(m.keys.into_iter().zip(m.distances).collect())
    }
}
