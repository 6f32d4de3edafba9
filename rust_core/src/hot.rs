//! The hot tier: recently read rows in RAM, bounded by a byte budget.
//!
//! `quick_cache` (S3-FIFO eviction, sharded) rather than a hand-rolled LRU: S3-FIFO keeps
//! one-hit wonders from a scan or a bulk load out of the main queue, which is what a feature
//! store's skewed read pattern wants. Entries are weighed in bytes (key + row + overhead).
//!
//! Consistency with concurrent writers: a reader that missed reads RocksDB and then inserts.
//! If a writer committed a newer row in between, that insert would be stale. Each key hashes to
//! one of `STRIPES` version counters that writers bump after committing; a reader notes the
//! counter before its RocksDB read and removes its own insert if the counter moved meanwhile.
//! Writers update entries that are present (after bumping), so either the writer's value lands
//! last or the reader notices and removes its insert.

use crate::row::RowBytes;
use quick_cache::sync::Cache;
use quick_cache::{Lifecycle, Weighter};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const STRIPES: usize = 4096;
/// Per-entry bookkeeping in the cache beyond key and value bytes (measured order of magnitude:
/// the Arc header, the key Vec, the cache's slot and hash).
const ENTRY_OVERHEAD: u64 = 64;

#[derive(Clone)]
struct ByteWeighter;

impl Weighter<Vec<u8>, RowBytes> for ByteWeighter {
    fn weight(&self, key: &Vec<u8>, val: &RowBytes) -> u64 {
        key.len() as u64 + val.len() as u64 + ENTRY_OVERHEAD
    }
}

#[derive(Clone, Default)]
struct CountEvictions(Arc<AtomicU64>);

impl Lifecycle<Vec<u8>, RowBytes> for CountEvictions {
    type RequestState = ();
    fn begin_request(&self) -> Self::RequestState {}
    fn on_evict(&self, _state: &mut Self::RequestState, _key: Vec<u8>, _val: RowBytes) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

pub struct HotTier {
    cache: Cache<Vec<u8>, RowBytes, ByteWeighter, ahash::RandomState, CountEvictions>,
    stripes: Box<[AtomicU64]>,
    stripe_hasher: ahash::RandomState,
    evictions: Arc<AtomicU64>,
    hits: AtomicU64,
    misses: AtomicU64,
    budget: u64,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct HotStats {
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: u64,
    pub bytes: u64,
    pub budget: u64,
}

impl HotTier {
    pub fn new(budget_bytes: u64) -> Self {
        let evictions = Arc::new(AtomicU64::new(0));
        // Rows of the benchmark view are about 850 bytes; the estimate only sizes the tables.
        let estimated_items = (budget_bytes / 1024).clamp(1024, 1 << 24) as usize;
        let cache = Cache::with(
            estimated_items,
            budget_bytes,
            ByteWeighter,
            ahash::RandomState::new(),
            CountEvictions(evictions.clone()),
        );
        Self {
            cache,
            stripes: (0..STRIPES).map(|_| AtomicU64::new(0)).collect(),
            stripe_hasher: ahash::RandomState::with_seeds(1, 2, 3, 4),
            evictions,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            budget: budget_bytes,
        }
    }

    fn stripe(&self, key: &[u8]) -> &AtomicU64 {
        &self.stripes[(self.stripe_hasher.hash_one(key) as usize) % STRIPES]
    }

    #[inline]
    pub fn get(&self, key: &[u8]) -> Option<RowBytes> {
        self.cache.get(key)
    }

    /// Counts the hits and misses of one lookup (once per batch, not per key).
    pub fn record(&self, hits: u64, misses: u64) {
        self.hits.fetch_add(hits, Ordering::Relaxed);
        self.misses.fetch_add(misses, Ordering::Relaxed);
    }

    /// Version to pass to [`HotTier::fill`] after reading `key` from RocksDB.
    #[inline]
    pub fn version(&self, key: &[u8]) -> u64 {
        self.stripe(key).load(Ordering::SeqCst)
    }

    /// Inserts what a reader read from RocksDB, unless a writer committed since `version`.
    pub fn fill(&self, key: Vec<u8>, row: RowBytes, version: u64) {
        let stripe = self.stripe(&key);
        self.cache.insert(key.clone(), row);
        if stripe.load(Ordering::SeqCst) != version {
            self.cache.remove(&key);
        }
    }

    /// Called by the (single) writer after `row` for `key` is committed to RocksDB.
    pub fn committed(&self, key: &[u8], row: &RowBytes) {
        self.stripe(key).fetch_add(1, Ordering::SeqCst);
        // Soft: a write does not make a key hot; only reads do.
        let _ = self.cache.replace(key.to_vec(), row.clone(), true);
    }

    /// Forgets every entry whose key starts with `prefix` (a view's id on registry changes).
    pub fn invalidate_prefix(&self, prefix: &[u8]) {
        for s in &self.stripes {
            s.fetch_add(1, Ordering::SeqCst);
        }
        self.cache.retain(|k, _| !k.starts_with(prefix));
    }

    pub fn stats(&self) -> HotStats {
        HotStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            entries: self.cache.len() as u64,
            bytes: self.cache.weight(),
            budget: self.budget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(b: &[u8]) -> RowBytes {
        Arc::from(b)
    }

    #[test]
    fn stays_within_budget_and_counts_evictions() {
        let hot = HotTier::new(64 * 1024);
        for i in 0u32..2000 {
            let k = i.to_be_bytes().to_vec();
            let v = hot.version(&k);
            hot.fill(k, row(&[7u8; 200]), v);
        }
        let s = hot.stats();
        assert!(s.bytes <= 64 * 1024, "{s:?}");
        assert!(s.evictions > 0, "{s:?}");
    }

    #[test]
    fn stale_fill_after_a_write_is_dropped() {
        let hot = HotTier::new(1 << 20);
        let k = b"key".to_vec();
        let before = hot.version(&k); // reader notes the version, then reads RocksDB (old row)
        hot.committed(&k, &row(b"new")); // writer commits meanwhile; key not cached yet
        hot.fill(k.clone(), row(b"old"), before); // reader's fill must not survive
        assert!(hot.get(&k).is_none());
    }

    #[test]
    fn writer_updates_a_cached_key() {
        let hot = HotTier::new(1 << 20);
        let k = b"key".to_vec();
        let v = hot.version(&k);
        hot.fill(k.clone(), row(b"old"), v);
        hot.committed(&k, &row(b"new"));
        assert_eq!(&*hot.get(&k).unwrap(), b"new");
    }
}
