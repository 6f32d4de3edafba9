//! The store: a hot tier in RAM over RocksDB, one writer, any number of readers.
//!
//! Layout on disk: one column family per feature view (`view:<name>`, key = encoded entity key,
//! value = encoded row) and a `meta` column family (physical schemas, the registry, and loader
//! progress such as Kafka offsets and batch watermarks, written in the same `WriteBatch` as the
//! rows they cover).

use crate::catalog::{evolve_with, Catalog, Evolution, PhysicalSchema, RegistrySpec, ViewDef};
use crate::error::{CoreError, Result};
use crate::hot::{HotStats, HotTier};
use crate::row::{supersedes, RowBytes, RowView};
use ahash::AHashMap;
use parking_lot::{Mutex, RwLock};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBWithThreadMode,
    MultiThreaded, Options, WriteBatch, WriteOptions,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;

type Db = DBWithThreadMode<MultiThreaded>;

pub const META_CF: &str = "meta";
const META_REGISTRY: &[u8] = b"registry";
const META_NEXT_ID: &[u8] = b"next_view_id";
const SCHEMA_PREFIX: &str = "schema/";
/// Keys callers (the loaders) store their progress under; kept apart from the core's own.
pub const EXT_PREFIX: &str = "ext/";

#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// RAM budget of the hot tier; 0 disables it (reads go to RocksDB's block cache).
    pub hot_tier_bytes: u64,
    /// RocksDB block cache (uncompressed blocks, index and filter blocks).
    pub block_cache_bytes: u64,
    /// fsync the WAL on every write. Off by default: a write that returned survives a crash of
    /// the process (the WAL is in the OS page cache), not a power loss of the machine.
    pub sync_writes: bool,
    /// Threads for RocksDB's background jobs (flushes, compactions). `None`: the environment
    /// variable `FS_ROCKSDB_PARALLELISM`, else the cores available to the process.
    pub rocksdb_parallelism: Option<usize>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            hot_tier_bytes: 256 << 20,
            block_cache_bytes: 256 << 20,
            sync_writes: false,
            rocksdb_parallelism: None,
        }
    }
}

pub const PARALLELISM_ENV: &str = "FS_ROCKSDB_PARALLELISM";

/// RocksDB's background threads: the setting, else `env` (the value of [`PARALLELISM_ENV`]),
/// else the cores available. Background jobs share these cores with the serving threads, so
/// the cores the process may use are the ceiling; a host that serves under heavy writes may
/// want fewer.
fn parallelism(setting: Option<usize>, env: Option<&str>) -> Result<usize> {
    if let Some(n) = setting.filter(|n| *n > 0) {
        return Ok(n);
    }
    if let Some(v) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return v.parse::<usize>().ok().filter(|n| *n > 0).ok_or_else(|| {
            CoreError::InvalidArgument(format!(
                "{PARALLELISM_ENV} must be a whole number of threads, at least 1; got '{v}'"
            ))
        });
    }
    Ok(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Rows in the input.
    pub rows: u64,
    /// Rows that replaced the stored row (or were new).
    pub written: u64,
    /// Rows not applied because the stored row (or another row of the same batch) is newer.
    pub skipped_older: u64,
}

pub struct Store {
    db: Db,
    catalog: RwLock<Arc<Catalog>>,
    hot: Option<HotTier>,
    write_lock: Mutex<()>,
    block_cache: Cache,
    opts: StoreOptions,
    path: PathBuf,
    /// Answer-quality counters of the serving path.
    pub serve_stats: crate::stats::ServeStats,
    /// Vector indexes of the features that declare one; follow [`Store::write`].
    pub vectors: crate::vector::VectorIndexes,
}

/// Column-family options, one place for every RocksDB knob.
fn cf_options(cache: &Cache) -> Options {
    let mut bbo = BlockBasedOptions::default();
    bbo.set_block_cache(cache);
    // Point lookups dominate: a bloom filter per SST file (10 bits/key, about 1 % false
    // positives) lets a miss skip the file without a data-block read.
    bbo.set_bloom_filter(10.0, false);
    // Index and filter blocks count against the block cache budget instead of growing
    // unbounded on the heap; L0's are pinned since every lookup consults them.
    bbo.set_cache_index_and_filter_blocks(true);
    bbo.set_pin_l0_filter_and_index_blocks_in_cache(true);
    // A W2 row is about 850 bytes; 8 KiB blocks keep read amplification of one lookup low
    // without bloating the index.
    bbo.set_block_size(8 << 10);
    bbo.set_format_version(5);
    let mut o = Options::default();
    o.set_block_based_table_factory(&bbo);
    // LZ4 is cheap to decompress on the read path; zstd on the bottommost level where most
    // bytes live and which is rewritten least often.
    o.set_compression_type(DBCompressionType::Lz4);
    o.set_bottommost_compression_type(DBCompressionType::Zstd);
    // Bulk loads of 200-feature rows: a bigger memtable means fewer, larger L0 flushes.
    o.set_write_buffer_size(64 << 20);
    o.set_max_write_buffer_number(4);
    o.set_level_compaction_dynamic_level_bytes(true);
    o
}

fn db_options(opts: &StoreOptions) -> Result<Options> {
    let env = std::env::var(PARALLELISM_ENV).ok();
    let threads =
        i32::try_from(parallelism(opts.rocksdb_parallelism, env.as_deref())?).unwrap_or(i32::MAX);
    let mut o = Options::default();
    o.create_if_missing(true);
    o.create_missing_column_families(true);
    o.increase_parallelism(threads);
    o.set_max_background_jobs(threads);
    o.set_keep_log_file_num(4);
    Ok(o)
}

fn storage_err(path: &Path, e: &rocksdb::Error) -> CoreError {
    let s = e.to_string();
    if s.contains("lock") && (s.contains("Resource temporarily unavailable") || s.contains("LOCK"))
    {
        CoreError::Storage(format!(
            "data directory '{}' is in use by another process (RocksDB allows one writer); \
             stop it or send the job to the running server: {s}",
            path.display()
        ))
    } else {
        CoreError::Storage(format!("data directory '{}': {s}", path.display()))
    }
}

impl Store {
    pub fn open(path: &Path, spec_json: &str, opts: StoreOptions, force: bool) -> Result<Self> {
        let spec = RegistrySpec::from_json(spec_json)?;
        let block_cache = Cache::new_lru_cache(opts.block_cache_bytes as usize);
        let db_opts = db_options(&opts)?;
        if path.exists() && !path.is_dir() {
            return Err(CoreError::Storage(format!(
                "data directory '{}' exists but is not a directory; give the path of a \
                 store directory (or of one to create)",
                path.display()
            )));
        }
        let mut names = if path.join("CURRENT").exists() {
            Db::list_cf(&db_opts, path).map_err(|e| storage_err(path, &e))?
        } else {
            std::fs::create_dir_all(path).map_err(|e| {
                CoreError::Storage(format!(
                    "cannot create data directory '{}': {e}",
                    path.display()
                ))
            })?;
            vec!["default".to_string()]
        };
        if !names.iter().any(|n| n == META_CF) {
            names.push(META_CF.to_string());
        }
        let descriptors = names
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(n, cf_options(&block_cache)));
        let db = Db::open_cf_descriptors(&db_opts, path, descriptors)
            .map_err(|e| storage_err(path, &e))?;
        let store = Store {
            db,
            catalog: RwLock::new(Arc::new(Catalog::default())),
            hot: (opts.hot_tier_bytes > 0).then(|| HotTier::new(opts.hot_tier_bytes)),
            write_lock: Mutex::new(()),
            block_cache,
            opts,
            path: path.to_path_buf(),
            serve_stats: crate::stats::ServeStats::default(),
            vectors: crate::vector::VectorIndexes::default(),
        };
        store.reconcile(&spec, spec_json, force)?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog.read().clone()
    }

    fn meta_cf(&self) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(META_CF)
            .ok_or_else(|| CoreError::Storage("meta column family missing".into()))
    }

    fn view_cf(&self, view: &str) -> Result<Arc<rocksdb::BoundColumnFamily<'_>>> {
        self.db
            .cf_handle(&ViewDef::cf_name(view))
            .ok_or_else(|| CoreError::Storage(format!("column family of view '{view}' missing")))
    }

    /// Whether any stored row of `view` holds a value in `slot` (a row of an unknown version
    /// counts as one). Reads the view's rows until the first such row: a registry change
    /// asks only for the slots it removes or retypes, and the writer lock it holds keeps
    /// writes from racing the answer.
    fn slot_has_values(&self, view: &str, slot: usize) -> Result<bool> {
        let Some(cf) = self.db.cf_handle(&ViewDef::cf_name(view)) else {
            return Ok(false);
        };
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_to_first();
        while let Some(value) = it.value() {
            match RowView::new(value) {
                Some(row) if row.is_tombstone() || !row.is_present(slot) => {}
                _ => return Ok(true),
            }
            it.next();
        }
        it.status()?;
        Ok(false)
    }

    fn stored_schema(&self, view: &str) -> Result<Option<PhysicalSchema>> {
        let key = format!("{SCHEMA_PREFIX}{view}");
        match self.db.get_cf(&self.meta_cf()?, key.as_bytes())? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                CoreError::Storage(format!("stored schema of view '{view}' is unreadable: {e}"))
            }),
        }
    }

    pub fn physical_schema(&self, view: &str) -> Result<Option<PhysicalSchema>> {
        self.stored_schema(view)
    }

    /// Applies a registry: validates every view against its stored schema first (nothing is
    /// changed if any view is refused), then creates, grows or (forced) recreates views.
    /// Returns a line per change.
    pub fn apply_registry(&self, spec_json: &str, force: bool) -> Result<Vec<String>> {
        let spec = RegistrySpec::from_json(spec_json)?;
        self.reconcile(&spec, spec_json, force)
    }

    fn reconcile(&self, spec: &RegistrySpec, spec_json: &str, force: bool) -> Result<Vec<String>> {
        let _w = self.write_lock.lock();
        let meta = self.meta_cf()?;
        let mut next_id = match self.db.get_cf(&meta, META_NEXT_ID)? {
            Some(b) if b.len() == 4 => u32::from_le_bytes(b[..4].try_into().unwrap()),
            _ => 1,
        };
        let mut plans = Vec::new();
        let mut schemas = AHashMap::new();
        for v in &spec.feature_views {
            let stored = self.stored_schema(&v.name)?;
            let evo = evolve_with(stored.as_ref(), v, force, next_id, &mut |slot| {
                self.slot_has_values(&v.name, slot)
            })?;
            if matches!(evo, Evolution::Recreated(_)) {
                next_id += 1;
            }
            match (&evo, stored) {
                (Evolution::Unchanged, Some(s)) => {
                    schemas.insert(v.name.clone(), s);
                }
                (Evolution::Changed(s) | Evolution::Recreated(s), _) => {
                    schemas.insert(v.name.clone(), s.clone());
                }
                (Evolution::Unchanged, None) => unreachable!("no stored schema is never unchanged"),
            }
            plans.push((v.name.clone(), evo));
        }
        // Compile before touching anything, so a bad service reference changes nothing.
        let catalog = Catalog::compile(spec, spec_json, &schemas)?;
        let mut changes = Vec::new();
        let mut batch = WriteBatch::default();
        for (name, evo) in plans {
            let cf_name = ViewDef::cf_name(&name);
            let (schema, line) = match evo {
                Evolution::Unchanged => continue,
                Evolution::Changed(s) => (s, format!("feature view '{name}': schema updated")),
                Evolution::Recreated(s) => {
                    if self.db.cf_handle(&cf_name).is_some() {
                        self.db.drop_cf(&cf_name)?;
                        changes.push(format!("feature view '{name}': stored rows discarded"));
                    }
                    self.db
                        .create_cf(&cf_name, &cf_options(&self.block_cache))?;
                    (s, format!("feature view '{name}': created"))
                }
            };
            let json = serde_json::to_vec(&schema).expect("schema serializes");
            batch.put_cf(&meta, format!("{SCHEMA_PREFIX}{name}").as_bytes(), json);
            changes.push(line);
        }
        batch.put_cf(&meta, META_NEXT_ID, next_id.to_le_bytes());
        batch.put_cf(&meta, META_REGISTRY, spec_json.as_bytes());
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db.write_opt(batch, &wo)?;
        let catalog = Arc::new(catalog);
        *self.catalog.write() = catalog.clone();
        // Under the writer lock: no write lands between a rebuild's scan and its index swap.
        changes.extend(self.vectors.sync(spec, &catalog.views, &|ix, def| {
            self.fill_vector_index(ix, def)
        })?);
        Ok(changes)
    }

    /// Feeds a new vector index every stored row of its view, in chunks (each chunk's HNSW
    /// inserts run on every core). Measured rate in docs/vector-search.md.
    fn fill_vector_index(&self, ix: &crate::vector::VectorIndex, def: &ViewDef) -> Result<()> {
        const CHUNK: usize = 8192;
        let cf = self.view_cf(&def.name)?;
        let mut it = self.db.raw_iterator_cf(&cf);
        it.seek_to_first();
        let mut keys: Vec<Vec<u8>> = Vec::with_capacity(CHUNK);
        let mut rows: Vec<Vec<u8>> = Vec::with_capacity(CHUNK);
        let flush = |keys: &mut Vec<Vec<u8>>, rows: &mut Vec<Vec<u8>>| {
            ix.apply(
                def,
                keys.iter()
                    .map(Vec::as_slice)
                    .zip(rows.iter().map(Vec::as_slice)),
            );
            keys.clear();
            rows.clear();
        };
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            keys.push(k.to_vec());
            rows.push(v.to_vec());
            if keys.len() == CHUNK {
                flush(&mut keys, &mut rows);
            }
            it.next();
        }
        it.status()?;
        flush(&mut keys, &mut rows);
        Ok(())
    }

    /// Applies rows under the merge rule. `keys` are hot-tier keys (the view's 4-byte prefix,
    /// then the entity key); `rows` encoded rows or tombstones. `meta` entries are stored under
    /// `ext/<name>` in the same atomic write batch.
    pub fn write(
        &self,
        view: &ViewDef,
        keys: &[Vec<u8>],
        mut rows: Vec<Vec<u8>>,
        meta: &[(String, Vec<u8>)],
    ) -> Result<WriteStats> {
        debug_assert_eq!(keys.len(), rows.len());
        if view.on_demand.is_some() {
            return Err(CoreError::InvalidArgument(format!(
                "'{}' is a request-time on-demand view: its values are computed per request \
                 and cannot be written",
                view.name
            )));
        }
        let _w = self.write_lock.lock();
        let current = self.catalog();
        if current.view(&view.name)?.id != view.id {
            return Err(CoreError::Schema(format!(
                "feature view '{}' was recreated while this write was prepared; retry",
                view.name
            )));
        }
        let mut stats = WriteStats {
            rows: rows.len() as u64,
            ..WriteStats::default()
        };
        // Duplicate keys within the batch: the newest row per key competes with the stored one.
        let mut pos: AHashMap<&[u8], usize> = AHashMap::with_capacity(rows.len());
        let mut uniq: Vec<usize> = Vec::with_capacity(rows.len());
        for (i, k) in keys.iter().enumerate() {
            if let Some(&u) = pos.get(k.as_slice()) {
                if supersedes(&rows[i], &rows[uniq[u]]) {
                    uniq[u] = i;
                }
                stats.skipped_older += 1;
            } else {
                pos.insert(k, uniq.len());
                uniq.push(i);
            }
        }
        let cf = self.view_cf(&view.name)?;
        // The stored row of each key: from the hot tier when cached, else one batched MultiGet.
        let mut existing: Vec<Option<Vec<u8>>> = vec![None; uniq.len()];
        let mut to_read = Vec::new();
        for (j, &i) in uniq.iter().enumerate() {
            match self.hot.as_ref().and_then(|h| h.get(&keys[i])) {
                Some(r) => existing[j] = (!r.is_empty()).then(|| r.to_vec()),
                None => to_read.push(j),
            }
        }
        if !to_read.is_empty() {
            let got = self.db.batched_multi_get_cf(
                &cf,
                to_read.iter().map(|&j| &keys[uniq[j]][4..]),
                false,
            );
            for (&j, r) in to_read.iter().zip(got) {
                existing[j] = r?.map(|s| s.to_vec());
            }
        }
        let mut batch = WriteBatch::default();
        let mut winners = Vec::new();
        for (j, &i) in uniq.iter().enumerate() {
            if existing[j]
                .as_ref()
                .is_none_or(|old| supersedes(&rows[i], old))
            {
                batch.put_cf(&cf, &keys[i][4..], &rows[i]);
                winners.push(i);
            } else {
                stats.skipped_older += 1;
            }
        }
        stats.written = winners.len() as u64;
        if !meta.is_empty() {
            let mcf = self.meta_cf()?;
            for (k, v) in meta {
                batch.put_cf(&mcf, format!("{EXT_PREFIX}{k}").as_bytes(), v);
            }
        }
        if !batch.is_empty() {
            let mut wo = WriteOptions::default();
            wo.set_sync(self.opts.sync_writes);
            self.db.write_opt(batch, &wo)?;
        }
        if self.vectors.has_view(&view.name) {
            let k: Vec<&[u8]> = winners.iter().map(|&i| &keys[i][4..]).collect();
            let r: Vec<&[u8]> = winners.iter().map(|&i| rows[i].as_slice()).collect();
            self.vectors.on_write(view, &k, &r);
        }
        if let Some(hot) = &self.hot {
            for i in winners {
                hot.committed(&keys[i], &RowBytes::from(std::mem::take(&mut rows[i])));
            }
        }
        Ok(stats)
    }

    /// Reads the stored rows of `keys` (hot-tier keys): `None` for absent entities; tombstones
    /// are returned as stored, so that the reader parses each row's header once
    /// ([`crate::row::ReadRow::live`] drops them).
    pub fn lookup(&self, view: &ViewDef, keys: &[Vec<u8>]) -> Result<Vec<Option<RowBytes>>> {
        let mut out: Vec<Option<RowBytes>> = vec![None; keys.len()];
        let mut miss = Vec::new();
        match &self.hot {
            Some(hot) => {
                for (i, k) in keys.iter().enumerate() {
                    match hot.get(k) {
                        Some(r) => out[i] = stored(r),
                        None => miss.push(i),
                    }
                }
                hot.record((keys.len() - miss.len()) as u64, miss.len() as u64);
            }
            None => miss.extend(0..keys.len()),
        }
        if miss.is_empty() {
            return Ok(out);
        }
        let versions: Vec<u64> = match &self.hot {
            Some(hot) => miss.iter().map(|&i| hot.version(&keys[i])).collect(),
            None => Vec::new(),
        };
        let cf = self.view_cf(&view.name)?;
        let got = self
            .db
            .batched_multi_get_cf(&cf, miss.iter().map(|&i| &keys[i][4..]), false);
        for (j, (&i, r)) in miss.iter().zip(got).enumerate() {
            let row: RowBytes = match r? {
                Some(slice) => RowBytes::from(&*slice),
                None => RowBytes::from(&[][..]),
            };
            if let Some(hot) = &self.hot {
                hot.fill(keys[i].clone(), row.clone(), versions[j]);
            }
            out[i] = stored(row);
        }
        Ok(out)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db
            .get_cf(&self.meta_cf()?, format!("{EXT_PREFIX}{key}").as_bytes())?)
    }

    /// Writes a consistent snapshot of the whole store (every view, the registry, loader
    /// progress such as Kafka offsets) to `dest`, a directory that must not exist yet: a
    /// RocksDB checkpoint, whose SST files are hard links when `dest` is on the same file
    /// system. Memtables are flushed first. Writers wait for it (the loaders' next batch lands
    /// before or after the snapshot, never half in it); readers do not.
    pub fn checkpoint(&self, dest: &Path) -> Result<()> {
        if dest.exists() {
            return Err(CoreError::InvalidArgument(format!(
                "snapshot directory '{}' already exists; give a new path",
                dest.display()
            )));
        }
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                CoreError::Storage(format!("cannot create '{}': {e}", parent.display()))
            })?;
        }
        let _w = self.write_lock.lock();
        let cp = rocksdb::checkpoint::Checkpoint::new(&self.db)?;
        cp.create_checkpoint(dest).map_err(|e| {
            CoreError::Storage(format!("snapshot to '{}' failed: {e}", dest.display()))
        })
    }

    /// Flushes memtables and compacts every view (benchmarks measure bytes per row after it).
    pub fn compact(&self) -> Result<()> {
        for v in self
            .catalog()
            .views
            .iter()
            .filter(|v| v.on_demand.is_none())
        {
            let cf = self.view_cf(&v.name)?;
            self.db.flush_cf(&cf)?;
            self.db.compact_range_cf(&cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    pub fn flush(&self) -> Result<()> {
        for v in self
            .catalog()
            .views
            .iter()
            .filter(|v| v.on_demand.is_none())
        {
            self.db.flush_cf(&self.view_cf(&v.name)?)?;
        }
        self.db.flush_cf(&self.meta_cf()?)?;
        Ok(())
    }

    pub fn hot_stats(&self) -> Option<HotStats> {
        self.hot.as_ref().map(HotTier::stats)
    }

    /// RocksDB figures per view: (name, property, value).
    pub fn rocksdb_stats(&self) -> Vec<(String, &'static str, u64)> {
        const PROPS: [&str; 5] = [
            "rocksdb.estimate-num-keys",
            "rocksdb.estimate-live-data-size",
            "rocksdb.total-sst-files-size",
            "rocksdb.cur-size-all-mem-tables",
            "rocksdb.estimate-pending-compaction-bytes",
        ];
        let mut out = Vec::new();
        for v in self
            .catalog()
            .views
            .iter()
            .filter(|v| v.on_demand.is_none())
        {
            if let Ok(cf) = self.view_cf(&v.name) {
                for p in PROPS {
                    if let Ok(Some(x)) = self.db.property_int_value_cf(&cf, p) {
                        out.push((v.name.clone(), p, x));
                    }
                }
            }
        }
        out.push((
            String::new(),
            "block-cache-usage",
            self.block_cache.get_usage() as u64,
        ));
        out
    }
}

/// The hot tier caches a known absence as an empty row.
fn stored(r: RowBytes) -> Option<RowBytes> {
    (!r.is_empty()).then_some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::row::{BatchRowWriter, ReadRow};

    const REGISTRY: &str = r#"{"project":"t","feature_views":[{"name":"v","join_keys":[{"name":"id","dtype":"int64"}],"features":[{"name":"f","dtype":"float32"}]}]}"#;

    fn keys(store: &Store, ids: &[i64]) -> Vec<Vec<u8>> {
        let cat = store.catalog();
        let prefix = cat.view("v").unwrap().hot_prefix();
        ids.iter()
            .map(|id| {
                let mut k = prefix.to_vec();
                crate::key::encode_i64(*id, &mut k);
                k
            })
            .collect()
    }

    fn write(store: &Store, ids: &[i64], ts: i64, offset: &str) {
        let cat = store.catalog();
        let def = cat.view("v").unwrap();
        let k = keys(store, ids);
        let tss = vec![ts; ids.len()];
        let mut w = BatchRowWriter::new(&def.layout, &tss);
        for (r, id) in ids.iter().enumerate() {
            w.set_fixed(r, def.by_name["f"], &(*id as f32).to_le_bytes());
        }
        let meta = [("kafka/v/t/0".to_string(), offset.as_bytes().to_vec())];
        store.write(def, &k, w.finish(), &meta).unwrap();
    }

    fn present(store: &Store, ids: &[i64]) -> usize {
        let cat = store.catalog();
        let rows = store
            .lookup(cat.view("v").unwrap(), &keys(store, ids))
            .unwrap();
        rows.into_iter()
            .filter(|r| r.clone().and_then(ReadRow::live).is_some())
            .count()
    }

    #[test]
    fn parallelism_from_setting_env_or_cores() {
        let cores = std::thread::available_parallelism().unwrap().get();
        assert_eq!(parallelism(Some(3), Some("5")).unwrap(), 3);
        assert_eq!(parallelism(None, Some(" 5 ")).unwrap(), 5);
        assert_eq!(parallelism(Some(0), None).unwrap(), cores);
        assert_eq!(parallelism(None, Some("")).unwrap(), cores);
        for bad in ["0", "two", "-1"] {
            let e = parallelism(None, Some(bad)).unwrap_err();
            assert!(e.to_string().contains("FS_ROCKSDB_PARALLELISM"), "{e}");
        }
    }

    #[test]
    fn checkpoint_holds_rows_and_meta_of_its_moment() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("live"),
            REGISTRY,
            StoreOptions::default(),
            false,
        )
        .unwrap();
        let ids: Vec<i64> = (0..1000).collect();
        write(&store, &ids, 1_000, "1000");
        let snap = dir.path().join("snaps/one");
        store.checkpoint(&snap).unwrap();
        // written after the snapshot: not in it
        write(&store, &[5000, 5001], 2_000, "1002");
        let err = store.checkpoint(&snap).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        drop(store);

        let restored = Store::open(&snap, REGISTRY, StoreOptions::default(), false).unwrap();
        assert_eq!(present(&restored, &ids), 1000);
        assert_eq!(present(&restored, &[5000, 5001]), 0);
        assert_eq!(
            restored.get_meta("kafka/v/t/0").unwrap().as_deref(),
            Some(&b"1000"[..])
        );
    }
}
