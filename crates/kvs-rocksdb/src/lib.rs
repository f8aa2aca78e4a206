//! The embedded RocksDB backend of Ortelius (the default store).
//!
//! One RocksDB database holds every table in a single key space laid out by [`keys`]: a point
//! read of "the latest version below T" is one seek. `put_unless_exists` and `check_and_set` are
//! atomic across all threads of the process through striped in-process locks (RocksDB's own
//! `LOCK` file keeps other processes out). Writes through the atomic operations — the commit
//! path of transactions — are synced by default, in groups beside RocksDB's write queue, and no
//! read answers with one before it is synced (see `wal_sync`); plain puts are not synced,
//! because a later synced WAL write makes every earlier write durable with it (see
//! [`Durability`]).

mod catalog;
mod iter_pool;
mod range;
pub mod snapshot;
mod wal_sync;

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use ortelius_kvs::{
    validate_read_ts, validate_version_ts, CandidateCell, CandidateCellsRequest, CandidatePage,
    Cell, CellIter, CellView, CellWrites, CheckAndSetRequest, ColumnRange, ColumnSelection,
    KeyValueService, KvsError, KvsResult, RangeRequest, RowIter, RowRange, TableRef, Timestamp,
    TimestampRangeDelete, Value, ATOMIC_TS, SWEEP_SENTINEL_TS,
};
use rocksdb::{DBRawIterator, Options, WriteBatch, WriteOptions, DB};

use crate::catalog::{Catalog, TableInfo, Tables};
use crate::iter_pool::{read_options, IterPool, Seeks};
use crate::range::{collect_row, ColumnRangeIter, RocksRangeIter, Scratch};
use crate::wal_sync::WalSync;
use ortelius_kvs::keycodec::{self as keys, DecodedKey};

/// When writes reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durability {
    /// fsync the WAL on `put`, `multi_put`, `put_with_timestamps` and deletes. Off by default:
    /// such writes survive a process crash (they are in the OS page cache) and become durable
    /// against power loss with the next synced write, because the WAL is sequential.
    pub sync_writes: bool,
    /// fsync the WAL on `put_unless_exists`, `check_and_set` and table creation/drop: the commit
    /// point of a transaction and the timestamp bound. On by default. Concurrent atomic writes
    /// share their syncs, and a read that finds one waits until it is synced.
    pub sync_atomic_writes: bool,
}

impl Default for Durability {
    fn default() -> Self {
        Self {
            sync_writes: false,
            sync_atomic_writes: true,
        }
    }
}

/// Options for opening a RocksDB store.
#[derive(Clone, Debug, Default)]
pub struct RocksDbConfig {
    pub durability: Durability,
}

/// The RocksDB options every store is opened with (LZ4, 10-bit bloom filters on tables and a
/// whole-key bloom filter on the memtable). Public so benchmarks run their raw-RocksDB
/// baseline with exactly the same settings.
pub fn rocksdb_options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut table_opts = rocksdb::BlockBasedOptions::default();
    table_opts.set_bloom_filter(10.0, false);
    opts.set_block_based_table_factory(&table_opts);
    // A whole-key bloom filter on the memtable: `put` probes every new (cell, ts) for a
    // different value already there, and a fresh key is then answered without a skiplist
    // search (a whole put 21.1k -> 17.8k instructions; `examples/put_instructions.rs` under
    // callgrind). 2% of the memtable's size (1.3 MiB of 64 MiB) is about 12 bits per key and
    // prefix for 100-byte values; at 10% the filter's random probes missed the caches more
    // (reads and puts about 10% slower, interleaved `txn_vs_raw` / `kvs_vs_raw`).
    opts.set_memtable_prefix_bloom_ratio(0.02);
    opts.set_memtable_whole_key_filtering(true);
    // The same filters (memtable and SST files) also hold each version key's cell prefix, so a
    // seek to a cell's newest version skips every memtable and file without the cell, as a
    // point get skips those without its key.
    opts.set_prefix_extractor(cell_prefix_extractor());
    opts
}

/// The prefix extractor of the store: a version key's cell prefix (the key without its
/// timestamp). It keeps the key order (a key's cell prefix decides its place among other
/// cells' keys), so the filters may use it; catalogue keys are outside its domain.
fn cell_prefix_extractor() -> rocksdb::SliceTransform {
    rocksdb::SliceTransform::create(
        "ortelius.cell_prefix",
        |key| &key[..key.len().saturating_sub(keys::TS_LEN)],
        Some(keys::is_version_key),
    )
}

/// Number of in-process lock stripes serialising atomic operations per cell.
const ATOMIC_STRIPES: usize = 256;

/// The RocksDB [`KeyValueService`].
pub struct RocksDbKvs {
    db: Arc<DB>,
    /// Iterators reused by reads of given cells (refreshed before each use).
    cell_iters: IterPool,
    /// Iterators reused by reads of given rows.
    iters: IterPool,
    dir: PathBuf,
    tables: Catalog,
    /// Serialises catalogue changes (create/drop), which read-modify-write the next table id.
    catalog_lock: Mutex<()>,
    stripes: Vec<Mutex<()>>,
    hasher: foldhash::fast::RandomState,
    plain_writes: WriteOptions,
    atomic_writes: WriteOptions,
    /// Syncs `put_unless_exists` and `check_and_set` in groups, and holds back reads of what
    /// they wrote until it is synced; `None` when atomic writes are not synced.
    wal_sync: Option<WalSync>,
}

pub(crate) fn storage(e: rocksdb::Error) -> KvsError {
    KvsError::storage(e)
}

pub(crate) fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "an in-process lock of the RocksDB store was poisoned by a panic".to_owned(),
    }
}

impl RocksDbKvs {
    /// Opens (creating if needed) the store in `dir`. Fails with `StoreLocked` when another
    /// process — or another handle in this one — has it open.
    pub fn open(dir: impl AsRef<Path>, config: &RocksDbConfig) -> KvsResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&dir).map_err(|e| KvsError::Storage {
            detail: format!("cannot create data directory {}: {e}", dir.display()),
        })?;
        let db = DB::open(&rocksdb_options(), &dir).map_err(|e| {
            let detail = e.to_string();
            if detail.contains("lock") || detail.contains("LOCK") {
                KvsError::StoreLocked {
                    dir: dir.clone(),
                    detail,
                }
            } else {
                KvsError::Storage {
                    detail: format!("cannot open RocksDB store at {}: {detail}", dir.display()),
                }
            }
        })?;
        Self::from_db(db, dir, config)
    }

    fn from_db(db: DB, dir: PathBuf, config: &RocksDbConfig) -> KvsResult<Self> {
        let tables = load_catalog(&db)?;
        let db = Arc::new(db);
        let mut plain_writes = WriteOptions::default();
        plain_writes.set_sync(config.durability.sync_writes);
        let mut atomic_writes = WriteOptions::default();
        atomic_writes.set_sync(config.durability.sync_atomic_writes);
        Ok(Self {
            cell_iters: IterPool::new(db.clone(), Seeks::WithinCell),
            iters: IterPool::new(db.clone(), Seeks::Anywhere),
            db,
            dir,
            tables: Catalog::new(tables),
            catalog_lock: Mutex::new(()),
            stripes: (0..ATOMIC_STRIPES).map(|_| Mutex::new(())).collect(),
            hasher: foldhash::fast::RandomState::default(),
            plain_writes,
            atomic_writes,
            wal_sync: config.durability.sync_atomic_writes.then(WalSync::new),
        })
    }

    /// Opens a store read-only (e.g. a backup to inspect): nothing in `dir` is modified, and
    /// every write fails.
    pub fn open_read_only(dir: impl AsRef<Path>, config: &RocksDbConfig) -> KvsResult<Self> {
        let dir = dir.as_ref().to_path_buf();
        let db = DB::open_for_read_only(&rocksdb_options(), &dir, false).map_err(|e| {
            KvsError::Storage {
                detail: format!("cannot open {} read-only: {e}", dir.display()),
            }
        })?;
        Self::from_db(db, dir, config)
    }

    /// Reads every key and value of the store (RocksDB verifies block checksums on the way)
    /// and checks that every version key decodes. Returns how many keys it read.
    pub fn verify_integrity(&self) -> KvsResult<u64> {
        let mut iter = self.iter();
        iter.seek_to_first();
        let mut keys = 0u64;
        while let Some(key) = iter.key() {
            if key.first() == Some(&0x01) {
                keys::layout(key)?;
            }
            keys += 1;
            iter.next();
        }
        iter.status().map_err(|e| KvsError::Corruption {
            detail: e.to_string(),
        })?;
        Ok(keys)
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Compacts the whole store (reclaims space after deletes); for maintenance and benchmarks.
    pub fn compact(&self) {
        self.cell_iters.clear();
        self.iters.clear();
        self.db.compact_range(None::<&[u8]>, None::<&[u8]>);
    }

    /// Bytes of live SST files, as RocksDB reports them.
    pub fn live_data_size(&self) -> KvsResult<u64> {
        Ok(self
            .db
            .property_int_value("rocksdb.live-sst-files-size")
            .map_err(storage)?
            .unwrap_or(0))
    }

    pub(crate) fn table_id(&self, table: &TableRef) -> KvsResult<u32> {
        self.tables
            .id(table)?
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })
    }

    fn iter(&self) -> DBRawIterator<'_> {
        self.db.raw_iterator_opt(read_options(Seeks::Anywhere))
    }

    /// Locks the stripes of `cells` in ascending order (no deadlock between callers).
    /// The lock stripe of `cell`.
    fn stripe(&self, cell: &Cell) -> usize {
        (self.hasher.hash_one(cell) % ATOMIC_STRIPES as u64) as usize
    }

    fn lock_cells<'a>(
        &self,
        cells: impl Iterator<Item = &'a Cell>,
    ) -> KvsResult<Vec<MutexGuard<'_, ()>>> {
        let mut idx: Vec<usize> = cells.map(|c| self.stripe(c)).collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .map(|i| self.stripes[i].lock().map_err(|_| poisoned()))
            .collect()
    }

    /// Lets the iterator pools drop iterators idle for a while (they pin memtables and files).
    fn drop_idle_iters(&self) {
        self.cell_iters.drop_idle();
        self.iters.drop_idle();
    }

    fn write(&self, batch: WriteBatch, atomic: bool) -> KvsResult<()> {
        let opts = if atomic {
            &self.atomic_writes
        } else {
            &self.plain_writes
        };
        self.drop_idle_iters();
        self.db.write_opt(batch, opts).map_err(storage)
    }

    /// Writes the batch of a `put_unless_exists` or `check_and_set` on the table `table_id`:
    /// durable when it returns, as configured.
    fn write_atomic(&self, table_id: u32, batch: WriteBatch) -> KvsResult<()> {
        match &self.wal_sync {
            Some(wal_sync) => {
                self.drop_idle_iters();
                wal_sync.write(&self.db, table_id, batch)
            }
            None => self.write(batch, true),
        }
    }

    /// Called after reading the table `table_id` and before answering with what it found (a read
    /// that found nothing needs no call): waits until every atomic write the read could have
    /// seen is synced (see [`wal_sync`]).
    fn settle(&self, table_id: u32) -> KvsResult<()> {
        self.wal_sync
            .as_ref()
            .map_or(Ok(()), |w| w.settle_read(&self.db, table_id))
    }

    /// Reads the table `table_id` with an iterator from `pool` and answers what `read` found
    /// once it is settled (see [`Self::settle`]).
    fn read_settled<T: Found>(
        &self,
        table_id: u32,
        pool: &IterPool,
        read: impl FnOnce(&mut DBRawIterator<'_>) -> KvsResult<T>,
    ) -> KvsResult<T> {
        let found = pool.with_iter(read)?;
        if found.any() {
            self.settle(table_id)?;
        }
        Ok(found)
    }

    /// Adds the puts to `batch` after checking that no different value is stored at any
    /// `(cell, ts)`: identical rewrites pass, a different value fails the whole call.
    fn add_puts<'a>(
        &self,
        batch: &mut WriteBatch,
        table: &TableRef,
        table_id: u32,
        writes: impl Iterator<Item = (&'a Cell, Timestamp, &'a [u8])>,
    ) -> KvsResult<()> {
        for (cell, ts, value) in writes {
            let key = keys::version_key(table_id, cell, ts);
            if let Some(existing) = self.stored(&key)? {
                if existing.as_ref() != value {
                    // At timestamp 0 the value may be an atomic write's.
                    self.settle(table_id)?;
                    return Err(KvsError::ValueAlreadyWritten {
                        table: table.clone(),
                        cell: cell.clone(),
                        timestamp: ts,
                    });
                }
            }
            batch.put(key, value);
        }
        Ok(())
    }

    /// The value stored under `key`. `key_may_exist` answers from the memtable's and the SST
    /// files' bloom filters (and cached blocks): its "no", the usual answer for a key about to
    /// be written for the first time, needs no memtable search or read.
    fn stored(&self, key: &[u8]) -> KvsResult<Option<rocksdb::DBPinnableSlice<'_>>> {
        if self.db.key_may_exist(key) {
            self.db.get_pinned(key).map_err(storage)
        } else {
            Ok(None)
        }
    }

    /// For each requested cell, `read` of its newest version below the requested timestamp
    /// (cells without one are left out), from a pooled iterator; settled as every read is.
    fn newest_versions<T>(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
        read: fn(&DBRawIterator<'_>, &[u8]) -> KvsResult<Option<T>>,
    ) -> KvsResult<BTreeMap<Cell, T>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        let id = self.table_id(table)?;
        self.read_settled(id, &self.cell_iters, |iter| {
            let mut out = BTreeMap::new();
            for (cell, ts) in cells {
                // One buffer: the seek key, whose first bytes are the cell's prefix.
                let key = keys::version_key(id, cell, ts - 1);
                iter.seek(&key);
                if let Some(v) = read(iter, &key[..key.len().saturating_sub(keys::TS_LEN)])? {
                    out.insert(cell.clone(), v);
                }
            }
            Ok(out)
        })
    }
}

/// What a read found: only a read that found something waits for its writes to settle.
trait Found {
    fn any(&self) -> bool;
}

impl<K, V> Found for BTreeMap<K, V> {
    fn any(&self) -> bool {
        !self.is_empty()
    }
}

impl<T> Found for Option<T> {
    fn any(&self) -> bool {
        self.is_some()
    }
}

/// The timestamp of the version under the iterator if it belongs to the cell of `prefix`.
fn version_ts(iter: &DBRawIterator<'_>, prefix: &[u8]) -> KvsResult<Option<Timestamp>> {
    match iter.key() {
        Some(k) if k.starts_with(prefix) => {
            keys::ts_of(k, prefix.len())
                .map(Some)
                .ok_or_else(|| KvsError::Corruption {
                    detail: format!("malformed version key {}", k.escape_ascii()),
                })
        }
        _ => {
            iter.status().map_err(storage)?;
            Ok(None)
        }
    }
}

/// The version under the iterator if it belongs to the cell of `prefix`.
fn read_version(iter: &DBRawIterator<'_>, prefix: &[u8]) -> KvsResult<Option<Value>> {
    Ok(version_ts(iter, prefix)?.map(|ts| Value::new(iter.value().unwrap_or_default(), ts)))
}

fn load_catalog(db: &DB) -> KvsResult<Tables> {
    let mut tables = BTreeMap::new();
    let mut iter = db.raw_iterator_opt(read_options(Seeks::Anywhere));
    iter.seek(keys::CATALOG_TABLE_PREFIX);
    while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
        let Some(name) = k.strip_prefix(keys::CATALOG_TABLE_PREFIX) else {
            break;
        };
        let corrupt = || KvsError::Corruption {
            detail: format!("malformed catalogue entry for {}", name.escape_ascii()),
        };
        let name = std::str::from_utf8(name).map_err(|_| corrupt())?;
        let table = TableRef::parse(name).map_err(|_| corrupt())?;
        let id: [u8; 4] = v
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(corrupt)?;
        tables.insert(
            table,
            TableInfo {
                id: u32::from_be_bytes(id),
                metadata: v[4..].to_vec(),
            },
        );
        iter.next();
    }
    iter.status().map_err(storage)?;
    Ok(tables)
}

fn catalog_value(id: u32, metadata: &[u8]) -> Vec<u8> {
    let mut v = id.to_be_bytes().to_vec();
    v.extend_from_slice(metadata);
    v
}

impl KeyValueService for RocksDbKvs {
    fn backend_name(&self) -> &'static str {
        "rocksdb"
    }

    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let _catalog = self.catalog_lock.lock().map_err(|_| poisoned())?;
        let existing = self.tables.id(table)?;
        let mut batch = WriteBatch::default();
        let id = match existing {
            Some(id) => id,
            None => {
                let next = match self.db.get(keys::NEXT_TABLE_ID_KEY).map_err(storage)? {
                    Some(b) => u32::from_be_bytes(b.as_slice().try_into().map_err(|_| {
                        KvsError::Corruption {
                            detail: "malformed next-table-id record".to_owned(),
                        }
                    })?),
                    None => 0,
                };
                let after = next.checked_add(1).ok_or_else(|| KvsError::Storage {
                    detail: "table ids exhausted".to_owned(),
                })?;
                batch.put(keys::NEXT_TABLE_ID_KEY, after.to_be_bytes());
                next
            }
        };
        batch.put(
            keys::catalog_key(&table.qualified_name()),
            catalog_value(id, metadata),
        );
        self.write(batch, true)?;
        self.tables.update(|tables| {
            tables.insert(
                table.clone(),
                TableInfo {
                    id,
                    metadata: metadata.to_vec(),
                },
            );
        })
    }

    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        let _catalog = self.catalog_lock.lock().map_err(|_| poisoned())?;
        let Ok(id) = self.table_id(table) else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        batch.delete(keys::catalog_key(&table.qualified_name()));
        batch.delete_range(keys::table_start(id), keys::table_end(id));
        self.write(batch, true)?;
        self.tables.update(|tables| {
            tables.remove(table);
        })
    }

    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let mut batch = WriteBatch::default();
        batch.delete_range(keys::table_start(id), keys::table_end(id));
        self.write(batch, true)
    }

    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        Ok(self.tables.tables()?.keys().cloned().collect())
    }

    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        self.tables
            .tables()?
            .get(table)
            .map(|t| t.metadata.clone())
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })
    }

    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.table_id(table)?;
        self.create_table(table, metadata)
    }

    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        self.newest_versions(table, cells, read_version)
    }

    fn get_one(&self, table: &TableRef, cell: &Cell, bound: Timestamp) -> KvsResult<Option<Value>> {
        validate_read_ts(bound)?;
        let id = self.table_id(table)?;
        self.read_settled(id, &self.cell_iters, |iter| {
            let key = keys::version_key(id, cell, bound - 1);
            iter.seek(&key);
            read_version(iter, &key[..key.len().saturating_sub(keys::TS_LEN)])
        })
    }

    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        self.read_settled(id, &self.iters, |iter| {
            let mut out = BTreeMap::new();
            let mut scratch = Scratch::default();
            for row in rows {
                let prefix = keys::row_prefix(id, row);
                iter.seek(&prefix);
                if let Some(result) = collect_row(iter, &prefix, columns, ts, &mut scratch)? {
                    for (column, value) in result.columns {
                        out.insert(Cell::new(row.clone(), column)?, value);
                    }
                }
            }
            Ok(out)
        })
    }

    fn get_range<'a>(
        &'a self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<RowIter<'a>> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        // The iterator sees the store as of its creation.
        let rows = RocksRangeIter::new(&self.db, id, request, ts);
        self.settle(id)?;
        Ok(Box::new(rows))
    }

    fn scan_range(
        &self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
        visit: &mut dyn FnMut(CellView<'_>) -> ControlFlow<()>,
    ) -> KvsResult<()> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        range::scan(&self.db, id, request, ts, || self.settle(id), visit)
    }

    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        let cells = ColumnRangeIter::new(self.iter(), id, rows.to_vec(), columns.clone(), ts);
        self.settle(id)?;
        Ok(Box::new(cells))
    }

    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        // Only the key is read: the value is not copied out.
        self.newest_versions(table, cells, version_ts)
    }

    fn get_all_timestamps(
        &self,
        table: &TableRef,
        cells: &[Cell],
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Vec<Timestamp>>> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        self.read_settled(id, &self.cell_iters, |iter| {
            let mut out = BTreeMap::new();
            for cell in cells {
                let prefix = keys::cell_prefix(id, cell.row(), cell.column());
                iter.seek(keys::with_ts(&prefix, ts - 1));
                let mut all = Vec::new();
                while let Some(version) = version_ts(iter, &prefix)? {
                    all.push(version);
                    iter.next();
                }
                if !all.is_empty() {
                    all.reverse();
                    out.insert(cell.clone(), all);
                }
            }
            Ok(out)
        })
    }

    fn get_candidate_cells_for_sweeping(
        &self,
        table: &TableRef,
        request: &CandidateCellsRequest,
    ) -> KvsResult<CandidatePage> {
        validate_read_ts(request.max_ts_exclusive)?;
        let id = self.table_id(table)?;
        let batch = request.batch_size.max(1);
        let mut opts = read_options(Seeks::Anywhere);
        opts.set_iterate_upper_bound(keys::table_end(id));
        let mut iter = self.db.raw_iterator_opt(opts);
        self.settle(id)?;
        match &request.start {
            Some(c) => iter.seek(keys::cell_prefix(id, c.row(), c.column())),
            None => iter.seek(keys::table_start(id)),
        }
        let mut cells = Vec::new();
        // The cell being collected: its decoded key and versions below the bound (newest first).
        let mut current: Option<(DecodedKey, Vec<(Timestamp, bool)>)> = None;
        loop {
            let key = match iter.key() {
                Some(k) => keys::decode(k)?,
                None => {
                    iter.status().map_err(storage)?;
                    break;
                }
            };
            let same_cell = current
                .as_ref()
                .is_some_and(|(c, _)| c.row == key.row && c.column == key.column);
            if !same_cell {
                if let Some((done, versions)) = current.take() {
                    if let Some(c) = candidate(done, versions, request)? {
                        cells.push(c);
                    }
                }
                if cells.len() == batch {
                    return Ok(CandidatePage {
                        cells,
                        next_start: Some(Cell::new(key.row, key.column)?),
                    });
                }
            }
            let is_empty = iter.value().is_some_and(<[u8]>::is_empty);
            let below = key.ts < request.max_ts_exclusive;
            let entry = current.get_or_insert_with(|| (key, Vec::new()));
            if below {
                entry
                    .1
                    .push((entry_ts(&iter, entry.0.cell_prefix_len)?, is_empty));
            }
            iter.next();
        }
        if let Some((done, versions)) = current.take() {
            if let Some(c) = candidate(done, versions, request)? {
                cells.push(c);
            }
        }
        Ok(CandidatePage {
            cells,
            next_start: None,
        })
    }

    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        let id = self.table_id(table)?;
        let mut batch = WriteBatch::default();
        self.add_puts(
            &mut batch,
            table,
            id,
            writes.iter().map(|(c, v)| (c, ts, v.as_slice())),
        )?;
        self.write(batch, false)
    }

    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        let ids = writes
            .iter()
            .map(|(t, _)| self.table_id(t))
            .collect::<KvsResult<Vec<u32>>>()?;
        // No check for a different value already at (cell, `ts`): the contract lets a
        // transaction's data write overwrite (only that transaction writes at its start
        // timestamp), which saves a memtable and bloom-filter probe per cell.
        let mut batch = WriteBatch::default();
        for (cells, id) in writes.iter().map(|(_, cells)| cells).zip(ids) {
            for (cell, value) in cells {
                batch.put(keys::version_key(id, cell, ts), value);
            }
        }
        self.write(batch, false)
    }

    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        for (_, v) in values {
            validate_version_ts(v.timestamp, true)?;
        }
        let id = self.table_id(table)?;
        let mut batch = WriteBatch::default();
        self.add_puts(
            &mut batch,
            table,
            id,
            values
                .iter()
                .map(|(c, v)| (c, v.timestamp, v.contents.as_slice())),
        )?;
        self.write(batch, false)
    }

    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let _guards = self.lock_cells(writes.iter().map(|(c, _)| c))?;
        let mut batch = WriteBatch::default();
        let mut existing = Vec::new();
        for (cell, value) in writes {
            let key = keys::version_key(id, cell, ATOMIC_TS);
            if self.stored(&key)?.is_some() {
                existing.push(cell.clone());
            }
            batch.put(key, value);
        }
        if !existing.is_empty() {
            self.settle(id)?;
            return Err(KvsError::KeyAlreadyExists {
                table: table.clone(),
                cells: existing,
            });
        }
        self.write_atomic(id, batch)
    }

    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let _guards = self.lock_cells(std::iter::once(&request.cell))?;
        let key = keys::version_key(id, &request.cell, ATOMIC_TS);
        let actual = self.db.get(&key).map_err(storage)?;
        if actual != request.expected {
            self.settle(id)?;
            return Err(KvsError::CheckAndSetFailed {
                table: table.clone(),
                cell: request.cell.clone(),
                actual,
            });
        }
        let mut batch = WriteBatch::default();
        batch.put(key, &request.new_value);
        self.write_atomic(id, batch)
    }

    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let mut batch = WriteBatch::default();
        for (cell, ts) in versions {
            batch.delete(keys::version_key(id, cell, *ts));
        }
        self.write(batch, false)
    }

    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let start = if rows.start.is_empty() {
            keys::table_start(id)
        } else {
            keys::row_prefix(id, &rows.start)
        };
        let end = if rows.end.is_empty() {
            keys::table_end(id)
        } else {
            keys::row_prefix(id, &rows.end)
        };
        if start >= end {
            return Ok(());
        }
        let mut batch = WriteBatch::default();
        batch.delete_range(start, end);
        self.write(batch, false)
    }

    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let batch = self.cell_iters.with_iter(|iter| {
            let mut batch = WriteBatch::default();
            for (cell, range) in deletes {
                let (min, max) = range.bounds();
                let prefix = keys::cell_prefix(id, cell.row(), cell.column());
                // Versions are newest first: start at `max`, stop below `min`. Point deletes (not
                // a range tombstone per cell) keep later reads fast without waiting for
                // compaction.
                iter.seek(keys::with_ts(&prefix, max));
                while let Some(version) = version_ts(iter, &prefix)? {
                    if version < min {
                        break;
                    }
                    batch.delete(keys::with_ts(&prefix, version));
                    iter.next();
                }
            }
            Ok(batch)
        })?;
        self.write(batch, false)
    }

    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let mut batch = WriteBatch::default();
        for cell in cells {
            let key = keys::version_key(id, cell, SWEEP_SENTINEL_TS);
            if self.stored(&key)?.is_none() {
                batch.put(key, []);
            }
        }
        self.write(batch, false)
    }
}

fn entry_ts(iter: &DBRawIterator<'_>, prefix_len: usize) -> KvsResult<Timestamp> {
    iter.key()
        .and_then(|k| keys::ts_of(k, prefix_len))
        .ok_or_else(|| KvsError::Corruption {
            detail: "version key vanished under the iterator".to_owned(),
        })
}

/// Builds a sweep candidate from a cell's versions below the bound (newest first).
fn candidate(
    key: DecodedKey,
    versions: Vec<(Timestamp, bool)>,
    request: &CandidateCellsRequest,
) -> KvsResult<Option<CandidateCell>> {
    let Some(&(_, latest_is_empty)) = versions.first() else {
        return Ok(None);
    };
    let mut timestamps: Vec<Timestamp> = versions
        .into_iter()
        .map(|(ts, _)| ts)
        .filter(|ts| request.include_sentinels || *ts != SWEEP_SENTINEL_TS)
        .collect();
    if timestamps.is_empty() {
        return Ok(None);
    }
    timestamps.reverse();
    Ok(Some(CandidateCell {
        cell: Cell::new(key.row, key.column)?,
        timestamps,
        latest_is_empty,
    }))
}
