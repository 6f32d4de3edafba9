//! One index per indexed feature, following the store's writes under the merge rule: the
//! store calls [`VectorIndexes::on_write`] with the rows that won, after they are durable and
//! before they are visible in the hot tier. A tombstone, a null vector, or a vector that
//! cannot be indexed (wrong length, non-finite, zero for cosine) removes the entity; rows
//! older than the view's TTL stay in the index and are skipped at search time, as reads skip
//! them.

use super::exact::Flat;
use super::hnsw::Graph;
use crate::catalog::vector_index::{Kind, Metric, VectorIndexSpec};
use crate::catalog::{RegistrySpec, ViewDef};
use crate::error::Result;
use crate::row::{RowView, ValueRef};
use ahash::AHashMap;
use parking_lot::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

enum Body {
    Flat(Flat),
    Graph(Graph),
}

struct Entry {
    /// The entity key (the view's encoded join keys).
    key: Box<[u8]>,
    event_ts: i64,
}

#[derive(Default)]
struct Entries {
    id_of: AHashMap<Box<[u8]>, u64>,
    by_id: AHashMap<u64, Entry>,
    next_id: u64,
}

struct State {
    entries: Entries,
    body: Body,
}

/// What a search hit is: the entity key and its distance.
pub type Hit = (Box<[u8]>, f32);

/// The vector index of one feature of one view.
pub struct VectorIndex {
    pub view: String,
    pub view_id: u32,
    pub feature: String,
    pub slot: usize,
    pub dim: usize,
    pub spec: VectorIndexSpec,
    pub ttl_micros: i64,
    state: RwLock<State>,
    /// Rows whose vector could not be indexed (non-finite, zero under cosine): not findable.
    pub unindexable: AtomicU64,
    /// Index operations that failed (allocation): those rows are not findable until rewritten.
    pub failures: AtomicU64,
    /// How long the last build from the stored rows took (us).
    pub build_micros: AtomicU64,
}

/// One change of a write: add (or replace) a vector, or remove the entity.
enum Op {
    Upsert(u64, Vec<f32>),
    Remove(u64),
}

/// The vector of `row`'s `slot` ready to index, or `None` (tombstone, null, unindexable).
fn vector_of(ix: &VectorIndex, view: &ViewDef, row: &RowView<'_>) -> Option<Vec<f32>> {
    if row.is_tombstone() {
        return None;
    }
    let ValueRef::Float32Array(b) = row.value(&view.layout, ix.slot) else {
        return None;
    };
    if b.len() != ix.dim * 4 {
        return None;
    }
    let mut v: Vec<f32> = b
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
        .collect();
    if prepare(ix.spec.metric, &mut v) {
        Some(v)
    } else {
        ix.unindexable.fetch_add(1, Ordering::Relaxed);
        None
    }
}

/// Normalizes `v` for cosine; false when it cannot be indexed (a non-finite component, or a
/// zero vector under cosine).
pub fn prepare(metric: Metric, v: &mut [f32]) -> bool {
    if !v.iter().all(|x| x.is_finite()) {
        return false;
    }
    if metric == Metric::Cosine {
        let n = super::exact::dot(v, v).sqrt();
        if !(n > 0.0 && n.is_finite()) {
            return false;
        }
        for x in v.iter_mut() {
            *x /= n;
        }
    }
    true
}

impl VectorIndex {
    fn new(view: &ViewDef, feature: &str, dim: usize, spec: VectorIndexSpec) -> Result<Self> {
        let body = match spec.kind {
            Kind::Exact => Body::Flat(Flat::new(dim, spec.metric)),
            Kind::Hnsw => Body::Graph(Graph::new(dim, &spec)?),
        };
        Ok(Self {
            view: view.name.clone(),
            view_id: view.id,
            feature: feature.to_string(),
            slot: view.slot(feature)?,
            dim,
            spec,
            ttl_micros: view.ttl_micros,
            state: RwLock::new(State {
                entries: Entries::default(),
                body,
            }),
            unindexable: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            build_micros: AtomicU64::new(0),
        })
    }

    /// Applies winning rows: `(entity key, stored row bytes)`.
    pub fn apply<'a>(&self, view: &ViewDef, rows: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
        let mut st = self.state.write();
        let mut ops = Vec::new();
        for (key, bytes) in rows {
            let Some(row) = RowView::new(bytes) else {
                continue;
            };
            let e = &mut st.entries;
            match vector_of(self, view, &row) {
                Some(v) => {
                    let id = if let Some(&id) = e.id_of.get(key) {
                        id
                    } else {
                        let id = e.next_id;
                        e.next_id += 1;
                        e.id_of.insert(key.into(), id);
                        id
                    };
                    e.by_id.insert(
                        id,
                        Entry {
                            key: key.into(),
                            event_ts: row.event_ts(),
                        },
                    );
                    ops.push(Op::Upsert(id, v));
                }
                None => {
                    if let Some(id) = e.id_of.remove(key) {
                        e.by_id.remove(&id);
                        ops.push(Op::Remove(id));
                    }
                }
            }
        }
        if let Err(failed) = run_ops(&mut st.body, ops) {
            self.failures.fetch_add(failed, Ordering::Relaxed);
        }
    }

    /// The `k` nearest live entities (within the TTL at `now_us`) that `accept` lets through,
    /// nearest first. `q` is prepared ([`prepare`]) already.
    pub fn search(
        &self,
        q: &[f32],
        k: usize,
        now_us: i64,
        accept: &dyn Fn(&[u8]) -> bool,
    ) -> Result<Vec<Hit>> {
        let st = self.state.read();
        let ttl = self.ttl_micros;
        let ok = |id: u64| {
            st.entries
                .by_id
                .get(&id)
                .is_some_and(|e| (ttl <= 0 || now_us - e.event_ts <= ttl) && accept(&e.key[..]))
        };
        let found = match &st.body {
            Body::Flat(f) => f.search(q, k, &ok),
            Body::Graph(g) => g.search(q, k, &ok)?,
        };
        Ok(found
            .into_iter()
            .filter_map(|(id, d)| st.entries.by_id.get(&id).map(|e| (e.key.clone(), d)))
            .collect())
    }

    pub fn len(&self) -> usize {
        self.state.read().entries.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held: vectors and graph (usearch's own figure for HNSW) plus the key maps.
    pub fn memory_bytes(&self) -> usize {
        let st = self.state.read();
        let body = match &st.body {
            Body::Flat(f) => f.memory_bytes(),
            Body::Graph(g) => g.memory_bytes(),
        };
        let key_bytes: usize = st.entries.by_id.values().map(|e| e.key.len()).sum();
        // two map slots (key -> id, id -> entry) of about 40 bytes each, keys stored twice
        body + 2 * key_bytes + st.entries.by_id.capacity() * 80
    }

    pub fn kind_name(&self) -> &'static str {
        match self.spec.kind {
            Kind::Exact => "exact",
            Kind::Hnsw => "hnsw",
        }
    }
}

/// Number of adds above which a write's HNSW inserts are spread over the cores: a batch
/// loader's chunk builds on every core, a push of one row stays on the writer thread.
const PARALLEL_ADDS: usize = 256;

fn run_ops(body: &mut Body, ops: Vec<Op>) -> std::result::Result<(), u64> {
    let mut failed = 0u64;
    match body {
        Body::Flat(f) => {
            for op in ops {
                match op {
                    Op::Upsert(id, v) => f.upsert(id, &v),
                    Op::Remove(id) => f.remove(id),
                }
            }
        }
        Body::Graph(g) => {
            let mut adds = Vec::new();
            for op in ops {
                match op {
                    Op::Upsert(id, v) => adds.push((id, v)),
                    Op::Remove(id) => failed += u64::from(g.remove(id).is_err()),
                }
            }
            if g.reserve(adds.len()).is_err() {
                return Err(failed + adds.len() as u64);
            }
            let threads =
                std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
            if adds.len() < PARALLEL_ADDS || threads == 1 {
                for (id, v) in &adds {
                    failed += u64::from(g.upsert(*id, v).is_err());
                }
            } else {
                let g = &*g;
                let per = adds.len().div_ceil(threads);
                failed += std::thread::scope(|s| {
                    let hs: Vec<_> = adds
                        .chunks(per)
                        .map(|part| {
                            s.spawn(move || {
                                part.iter()
                                    .map(|(id, v)| u64::from(g.upsert(*id, v).is_err()))
                                    .sum::<u64>()
                            })
                        })
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().unwrap_or(per as u64))
                        .sum::<u64>()
                });
            }
        }
    }
    if failed == 0 {
        Ok(())
    } else {
        Err(failed)
    }
}

/// Every vector index of the store, by view name.
#[derive(Default)]
pub struct VectorIndexes {
    by_view: RwLock<AHashMap<String, Vec<Arc<VectorIndex>>>>,
}

/// Statistics of one index (`stats()["vector_indexes"]`, `/metrics`).
#[derive(Debug, Clone)]
pub struct IndexStats {
    pub view: String,
    pub feature: String,
    pub kind: &'static str,
    pub metric: &'static str,
    pub dim: usize,
    pub vectors: usize,
    pub memory_bytes: usize,
    pub unindexable: u64,
    pub failures: u64,
    /// Seconds the last (re)build from the stored rows took.
    pub build_seconds: f64,
}

impl VectorIndexes {
    pub fn get(&self, view: &str, feature: &str) -> Option<Arc<VectorIndex>> {
        self.by_view
            .read()
            .get(view)?
            .iter()
            .find(|i| i.feature == feature)
            .cloned()
    }

    /// The indexed features of `view` (for error messages).
    pub fn features_of(&self, view: &str) -> Vec<String> {
        self.by_view
            .read()
            .get(view)
            .map(|v| v.iter().map(|i| i.feature.clone()).collect())
            .unwrap_or_default()
    }

    pub fn has_view(&self, view: &str) -> bool {
        self.by_view.read().contains_key(view)
    }

    /// The store's write hook: the winning rows of a write to `view`.
    pub fn on_write(&self, view: &ViewDef, keys: &[&[u8]], rows: &[&[u8]]) {
        let Some(list) = self.by_view.read().get(&view.name).cloned() else {
            return;
        };
        for ix in list.iter().filter(|ix| ix.view_id == view.id) {
            ix.apply(view, keys.iter().copied().zip(rows.iter().copied()));
        }
    }

    /// Makes the set of indexes match the registry: keeps an index whose definition is
    /// unchanged, builds new and changed ones with `fill` (which feeds it the stored rows),
    /// drops the others. Returns a line per index built.
    pub fn sync(
        &self,
        spec: &RegistrySpec,
        views: &[Arc<ViewDef>],
        fill: &dyn Fn(&VectorIndex, &ViewDef) -> Result<()>,
    ) -> Result<Vec<String>> {
        let old = self.by_view.read().clone();
        let mut new: AHashMap<String, Vec<Arc<VectorIndex>>> = AHashMap::new();
        let mut lines = Vec::new();
        for vs in &spec.feature_views {
            let Some(def) = views.iter().find(|v| v.name == vs.name) else {
                continue;
            };
            for f in &vs.features {
                let Some(ispec) = f.vector_index else {
                    continue;
                };
                let dim = f.dim.unwrap_or(0) as usize;
                let kept = old.get(&vs.name).and_then(|l| {
                    l.iter()
                        .find(|i| {
                            i.feature == f.name
                                && i.view_id == def.id
                                && i.spec == ispec
                                && i.dim == dim
                                && i.ttl_micros == def.ttl_micros
                                && def.by_name.get(&f.name) == Some(&i.slot)
                        })
                        .cloned()
                });
                let ix = if let Some(ix) = kept {
                    ix
                } else {
                    let ix = VectorIndex::new(def, &f.name, dim, ispec)?;
                    let t0 = std::time::Instant::now();
                    fill(&ix, def)?;
                    ix.build_micros
                        .store(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
                    lines.push(format!(
                        "vector index '{}:{}' ({}, {}): {} vectors in {:.1} s",
                        vs.name,
                        f.name,
                        ix.kind_name(),
                        ispec.metric.name(),
                        ix.len(),
                        t0.elapsed().as_secs_f64()
                    ));
                    Arc::new(ix)
                };
                new.entry(vs.name.clone()).or_default().push(ix);
            }
        }
        *self.by_view.write() = new;
        Ok(lines)
    }

    pub fn stats(&self) -> Vec<IndexStats> {
        let mut out = Vec::new();
        for list in self.by_view.read().values() {
            for ix in list {
                out.push(IndexStats {
                    view: ix.view.clone(),
                    feature: ix.feature.clone(),
                    kind: ix.kind_name(),
                    metric: ix.spec.metric.name(),
                    dim: ix.dim,
                    vectors: ix.len(),
                    memory_bytes: ix.memory_bytes(),
                    unindexable: ix.unindexable.load(Ordering::Relaxed),
                    failures: ix.failures.load(Ordering::Relaxed),
                    build_seconds: ix.build_micros.load(Ordering::Relaxed) as f64 / 1e6,
                });
            }
        }
        out.sort_by(|a, b| (&a.view, &a.feature).cmp(&(&b.view, &b.feature)));
        out
    }
}
