//! The transactions table: `start_ts -> commit_ts | aborted`, written only by
//! `put_unless_exists`, so exactly one outcome of every transaction ever sticks.
//!
//! Encoding (system table `_transactions`, every value at ts 0): row = start ts as 8 bytes
//! big-endian (order-preserving for non-negative timestamps, so a range scan walks start order),
//! column `t`, value = commit ts as 8 bytes big-endian, or `-1` (eight `FF` bytes) for aborted.
//! No entry means in progress or abandoned. Start timestamps below 1 read as committed at 0:
//! data written directly at ts 0 is visible to everyone.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::ControlFlow;
use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ortelius_kvs::{
    Cell, KeyValueService, KvsError, KvsResult, RangeRequest, TableRef, Timestamp, ATOMIC_TS,
    MAX_READ_TS,
};
use ortelius_timelock::LockDescriptor;

/// The system table holding commit records.
pub const TRANSACTIONS_TABLE: &str = "_transactions";
const COLUMN: &[u8] = b"t";
const ABORTED: Timestamp = -1;
const CACHE_SHARDS: usize = 16;
/// Slots of the lock-free front of the outcome cache (a power of two).
const HOT_SLOTS: usize = 4096;

/// The decided outcome of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnStatus {
    Committed(Timestamp),
    Aborted,
}

impl TxnStatus {
    fn encode(self) -> Vec<u8> {
        match self {
            Self::Committed(ts) => ts.to_be_bytes().to_vec(),
            Self::Aborted => ABORTED.to_be_bytes().to_vec(),
        }
    }

    fn decode(start_ts: Timestamp, bytes: &[u8]) -> KvsResult<Self> {
        let arr: [u8; 8] = bytes.try_into().map_err(|_| KvsError::Corruption {
            detail: format!(
                "transactions-table entry for {start_ts} has {} bytes, not 8",
                bytes.len()
            ),
        })?;
        match i64::from_be_bytes(arr) {
            ABORTED => Ok(Self::Aborted),
            ts if ts > start_ts => Ok(Self::Committed(ts)),
            ts => Err(KvsError::Corruption {
                detail: format!(
                    "transaction {start_ts} recorded with commit ts {ts}, not after its start"
                ),
            }),
        }
    }
}

/// What `clean_from` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanReport {
    pub scanned: u64,
    pub deleted: u64,
}

/// Hashes a timestamp with two multiplications instead of SipHash, which was a twentieth of a
/// point read's instructions. Timestamps come from the timestamp authority, not from users, so
/// there is no flooding of a bucket to defend against.
#[derive(Default)]
pub struct TimestampHasher(u64);

impl Hasher for TimestampHasher {
    fn finish(&self) -> u64 {
        // The product's low bits are poorly mixed (timestamps that are multiples of 2^k give k
        // zero bits) and the map picks buckets by the low bits: finish as MurmurHash3 does.
        let h = (self.0 ^ (self.0 >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
        h ^ (h >> 33)
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_i64(&mut self, ts: i64) {
        self.0 = (self.0 ^ ts.cast_unsigned()).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// Outcomes by start timestamp.
pub type Statuses = HashMap<Timestamp, TxnStatus, BuildHasherDefault<TimestampHasher>>;

/// One cache shard: the outcomes and their insertion order (for FIFO eviction).
type CacheShard = Mutex<(Statuses, VecDeque<Timestamp>)>;

/// One slot of [`HotStatuses`]: a sequence lock over (start, outcome). The sequence is odd
/// while a writer changes the slot.
#[derive(Default)]
struct HotSlot {
    seq: AtomicU64,
    start: AtomicI64,
    /// The commit timestamp, or [`ABORTED`].
    outcome: AtomicI64,
}

/// A direct-mapped cache of recent outcomes that readers consult without taking a lock or
/// writing shared memory, so threads reading cells of the same writers do not pass a lock's
/// cache line between cores. A slot holds one start timestamp; a writer that finds the slot
/// being written by another skips it (this is only a cache).
struct HotStatuses {
    slots: Box<[HotSlot]>,
}

impl HotStatuses {
    fn new() -> Self {
        Self {
            slots: (0..HOT_SLOTS).map(|_| HotSlot::default()).collect(),
        }
    }

    fn slot(&self, ts: Timestamp) -> &HotSlot {
        &self.slots[(ts.cast_unsigned() % HOT_SLOTS as u64) as usize]
    }

    fn get(&self, ts: Timestamp) -> Option<TxnStatus> {
        let slot = self.slot(ts);
        let before = slot.seq.load(Ordering::Acquire);
        if !before.is_multiple_of(2) {
            return None;
        }
        let start = slot.start.load(Ordering::Relaxed);
        let outcome = slot.outcome.load(Ordering::Relaxed);
        // Orders the two loads above before the re-check: a writer that changed them in
        // between has moved the sequence on.
        fence(Ordering::Acquire);
        if slot.seq.load(Ordering::Relaxed) != before || start != ts || before == 0 {
            return None;
        }
        Some(match outcome {
            ABORTED => TxnStatus::Aborted,
            commit => TxnStatus::Committed(commit),
        })
    }

    /// Stores `ts`'s outcome, or `ts` alone with `None` (which matches nothing: an emptied
    /// slot). Gives up if another writer holds the slot, unless `wait`.
    fn put(&self, ts: Timestamp, status: Option<TxnStatus>, wait: bool) {
        let slot = self.slot(ts);
        let seq = loop {
            let seq = slot.seq.load(Ordering::Relaxed);
            if seq.is_multiple_of(2)
                && slot
                    .seq
                    .compare_exchange(seq, seq + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break seq;
            }
            if !wait {
                return;
            }
            std::thread::yield_now();
        };
        // The odd sequence is visible before either store below.
        fence(Ordering::Release);
        let (start, outcome) = match status {
            Some(TxnStatus::Committed(commit)) => (ts, commit),
            Some(TxnStatus::Aborted) => (ts, ABORTED),
            // No start timestamp is negative in a slot that `get` accepts.
            None => (i64::MIN, ABORTED),
        };
        slot.start.store(start, Ordering::Relaxed);
        slot.outcome.store(outcome, Ordering::Relaxed);
        slot.seq.store(seq.wrapping_add(2), Ordering::Release);
    }

    fn clear(&self) {
        for (i, _) in self.slots.iter().enumerate() {
            self.put(i as Timestamp, None, true);
        }
    }
}

/// A bounded cache of decided outcomes (they never change), FIFO-evicted per shard, behind a
/// lock-free front of recent ones.
struct StatusCache {
    hot: HotStatuses,
    shards: Vec<CacheShard>,
    per_shard: usize,
}

impl StatusCache {
    fn new(capacity: usize) -> Self {
        Self {
            hot: HotStatuses::new(),
            shards: (0..CACHE_SHARDS)
                .map(|_| Mutex::new((Statuses::default(), VecDeque::new())))
                .collect(),
            per_shard: (capacity / CACHE_SHARDS).max(1),
        }
    }

    fn shard(&self, ts: Timestamp) -> &CacheShard {
        &self.shards[(ts.unsigned_abs() % CACHE_SHARDS as u64) as usize]
    }

    fn get(&self, ts: Timestamp) -> Option<TxnStatus> {
        if let Some(status) = self.hot.get(ts) {
            return Some(status);
        }
        let status = self.shard(ts).lock().ok()?.0.get(&ts).copied()?;
        self.hot.put(ts, Some(status), false);
        Some(status)
    }

    fn insert(&self, ts: Timestamp, status: TxnStatus) {
        self.hot.put(ts, Some(status), false);
        let Ok(mut shard) = self.shard(ts).lock() else {
            return;
        };
        let (map, order) = &mut *shard;
        if map.insert(ts, status).is_none() {
            order.push_back(ts);
            if order.len() > self.per_shard {
                if let Some(old) = order.pop_front() {
                    map.remove(&old);
                }
            }
        }
    }

    fn clear(&self) {
        self.hot.clear();
        for shard in &self.shards {
            if let Ok(mut s) = shard.lock() {
                s.0.clear();
                s.1.clear();
            }
        }
    }
}

/// Access to the transactions table with a commit-timestamp cache.
pub struct TransactionsTable {
    kvs: Arc<dyn KeyValueService>,
    table: TableRef,
    cache: StatusCache,
}

fn decode_start(row: &[u8]) -> KvsResult<Timestamp> {
    <[u8; 8]>::try_from(row)
        .map(i64::from_be_bytes)
        .map_err(|_| KvsError::Corruption {
            detail: format!(
                "transactions-table row {} is not 8 bytes",
                row.escape_ascii()
            ),
        })
}

fn table_ref() -> TableRef {
    // A constant, valid name: construction cannot fail.
    TableRef::system(TRANSACTIONS_TABLE).unwrap_or_else(|_| unreachable!("valid system table name"))
}

impl TransactionsTable {
    /// Opens the table, creating it if needed; caches up to `cache_capacity` outcomes.
    pub fn new(kvs: Arc<dyn KeyValueService>, cache_capacity: usize) -> KvsResult<Self> {
        let table = table_ref();
        if !kvs.list_tables()?.contains(&table) {
            kvs.create_table(&table, b"")?;
        }
        Ok(Self {
            kvs,
            table,
            cache: StatusCache::new(cache_capacity),
        })
    }

    pub fn table(&self) -> &TableRef {
        &self.table
    }

    /// The cell holding the outcome of the transaction that started at `start_ts`.
    pub fn cell(start_ts: Timestamp) -> Cell {
        Cell::new(start_ts.to_be_bytes(), COLUMN)
            .unwrap_or_else(|_| unreachable!("8-byte row, 1-byte column"))
    }

    /// The lock a committer holds on its own entry until its commit record is written; readers
    /// wait on it before deciding a writer was abandoned.
    pub fn commit_lock(&self, start_ts: Timestamp) -> LockDescriptor {
        LockDescriptor::row(&self.table, &start_ts.to_be_bytes())
    }

    /// The outcome of the transaction that started at `start` if it is known without reading
    /// the store (versions below timestamp 1 were never written by a transaction).
    pub fn cached(&self, start: Timestamp) -> Option<TxnStatus> {
        if start < 1 {
            Some(TxnStatus::Committed(0))
        } else {
            self.cache.get(start)
        }
    }

    /// Outcomes of the given transactions that are decided (cache first, then one store read).
    pub fn load(&self, starts: &[Timestamp]) -> KvsResult<Statuses> {
        let mut out = Statuses::default();
        let mut missing = Vec::new();
        for &ts in starts {
            if let Some(s) = self.cached(ts) {
                out.insert(ts, s);
            } else {
                missing.push(ts);
            }
        }
        out.extend(self.load_uncached(&missing)?);
        Ok(out)
    }

    /// Reads outcomes from the store, bypassing (and then filling) the cache.
    pub fn load_uncached(&self, starts: &[Timestamp]) -> KvsResult<Statuses> {
        if starts.is_empty() {
            return Ok(Statuses::default());
        }
        let cells: Vec<(Cell, Timestamp)> = starts
            .iter()
            .map(|&ts| (Self::cell(ts), ATOMIC_TS + 1))
            .collect();
        let found = self.kvs.get(&self.table, &cells)?;
        let mut out = Statuses::default();
        for &ts in starts {
            if let Some(v) = found.get(&Self::cell(ts)) {
                let status = TxnStatus::decode(ts, &v.contents)?;
                self.cache.insert(ts, status);
                out.insert(ts, status);
            }
        }
        Ok(out)
    }

    /// Records an outcome unless one exists; `KeyAlreadyExists` means someone decided first.
    pub fn put_unless_exists(&self, start_ts: Timestamp, status: TxnStatus) -> KvsResult<()> {
        self.kvs
            .put_unless_exists(&self.table, &[(Self::cell(start_ts), status.encode())])?;
        self.cache.insert(start_ts, status);
        Ok(())
    }

    /// Decodes one stored entry (row = start timestamp), e.g. read from a raw snapshot.
    pub fn decode_entry(cell: &Cell, value: &[u8]) -> KvsResult<(Timestamp, TxnStatus)> {
        let start = decode_start(cell.row())?;
        Ok((start, TxnStatus::decode(start, value)?))
    }

    /// Calls `f` with every decided transaction in start order: a whole-table scan that never
    /// loads the table at once (and on RocksDB copies no entry out of the store). Fails on a
    /// malformed entry or the first error of `f`.
    pub fn scan(&self, mut f: impl FnMut(Timestamp, TxnStatus) -> KvsResult<()>) -> KvsResult<()> {
        let mut outcome = Ok(());
        self.kvs.scan_range(
            &self.table,
            &RangeRequest::all(),
            MAX_READ_TS,
            &mut |entry| {
                outcome = decode_start(entry.row)
                    .and_then(|start| f(start, TxnStatus::decode(start, entry.contents)?));
                if outcome.is_ok() {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                }
            },
        )?;
        outcome
    }

    /// Restore step: deletes every entry whose commit timestamp is `>= backup_ts`, scanning the
    /// whole table (a transaction may start before `backup_ts` and commit after it). Aborted
    /// entries are kept. Afterwards those transactions read as abandoned and are rolled back.
    pub fn clean_from(
        &self,
        backup_ts: Timestamp,
        mut progress: impl FnMut(&CleanReport),
    ) -> KvsResult<CleanReport> {
        let mut report = CleanReport::default();
        let mut batch = Vec::new();
        self.scan(|start, status| {
            report.scanned += 1;
            if matches!(status, TxnStatus::Committed(commit) if commit >= backup_ts) {
                batch.push((Self::cell(start), ATOMIC_TS));
            }
            if batch.len() >= 10_000 {
                report.deleted += batch.len() as u64;
                self.kvs.delete(&self.table, &batch)?;
                batch.clear();
            }
            if report.scanned % 100_000 == 0 {
                progress(&report);
            }
            Ok(())
        })?;
        report.deleted += batch.len() as u64;
        self.kvs.delete(&self.table, &batch)?;
        self.cache.clear();
        progress(&report);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::hash::BuildHasher;

    use super::*;

    #[test]
    fn a_scan_stops_at_the_first_error() {
        let kvs: Arc<dyn KeyValueService> = Arc::new(ortelius_kvs::memory::MemoryKvs::new());
        let table = TransactionsTable::new(kvs.clone(), 16).unwrap();
        for start in 1..=5 {
            table
                .put_unless_exists(start, TxnStatus::Committed(start + 10))
                .unwrap();
        }
        let mut seen = Vec::new();
        let err = table
            .scan(|start, _| {
                seen.push(start);
                if start == 2 {
                    Err(KvsError::Unavailable {
                        detail: "stop".to_owned(),
                    })
                } else {
                    Ok(())
                }
            })
            .unwrap_err();
        assert!(matches!(err, KvsError::Unavailable { .. }), "{err:?}");
        assert_eq!(seen, [1, 2], "nothing after the error");
        // A row that is not a start timestamp is corruption, reported as such.
        kvs.put_unless_exists(
            table.table(),
            &[(Cell::new("bad", COLUMN).unwrap(), vec![])],
        )
        .unwrap();
        seen.clear();
        let err = table
            .scan(|start, _| {
                seen.push(start);
                Ok(())
            })
            .unwrap_err();
        assert!(matches!(err, KvsError::Corruption { .. }), "{err:?}");
        assert_eq!(seen, [1, 2, 3, 4, 5]);
    }

    #[test]
    fn timestamp_hashes_spread_over_buckets_even_for_aligned_timestamps() {
        // The map takes a bucket from the hash's low bits: timestamps that are all multiples
        // of 2^20 (or consecutive) must still land in many buckets.
        let hasher = BuildHasherDefault::<TimestampHasher>::default();
        for step in [1i64, 1 << 20] {
            let buckets: std::collections::HashSet<u64> = (1..=1024i64)
                .map(|i| hasher.hash_one(i * step) & 1023)
                .collect();
            assert!(
                buckets.len() > 600,
                "step {step}: {} buckets",
                buckets.len()
            );
        }
        let mut statuses = Statuses::default();
        for ts in [-5, 0, 1, 1 << 40, i64::MAX] {
            statuses.insert(ts, TxnStatus::Aborted);
        }
        assert_eq!(statuses.len(), 5);
        assert_eq!(statuses.get(&(1 << 40)), Some(&TxnStatus::Aborted));
    }

    #[test]
    fn the_lock_free_front_never_answers_another_transactions_outcome() {
        // Writers keep replacing slots with other start timestamps mapped to them; every
        // answer a reader gets must be the outcome of the timestamp it asked for.
        let hot = HotStatuses::new();
        let outcome = |ts: Timestamp| {
            if ts % 3 == 0 {
                TxnStatus::Aborted
            } else {
                TxnStatus::Committed(ts * 2 + 1)
            }
        };
        let slots = HOT_SLOTS as i64;
        let answers = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            for w in 0..3i64 {
                let hot = &hot;
                s.spawn(move || {
                    for round in 0..300i64 {
                        for slot in 0..16i64 {
                            let ts = 1 + slot + slots * (round * 3 + w);
                            hot.put(ts, Some(outcome(ts)), false);
                        }
                    }
                });
            }
            for _ in 0..3 {
                s.spawn(|| {
                    for round in 0..900i64 {
                        for slot in 0..16i64 {
                            let ts = 1 + slot + slots * round;
                            if let Some(found) = hot.get(ts) {
                                assert_eq!(found, outcome(ts), "timestamp {ts}");
                                answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                        }
                    }
                });
            }
        });
        hot.put(7, Some(TxnStatus::Committed(9)), true);
        assert_eq!(hot.get(7), Some(TxnStatus::Committed(9)));
        assert_eq!(
            hot.get(7 + slots),
            None,
            "another timestamp of the same slot"
        );
        hot.clear();
        assert_eq!(hot.get(7), None);
        assert_eq!(hot.get(HOT_SLOTS as i64), None, "a slot never written");
    }

    #[test]
    fn a_cleared_cache_forgets_every_outcome_in_both_of_its_layers() {
        // Cleaning the transactions table clears the cache: an outcome answered after that
        // from either layer could make a deleted transaction's writes visible.
        let cache = StatusCache::new(1000);
        let starts: Vec<Timestamp> = (1..=100).collect();
        for &ts in &starts {
            cache.insert(ts, TxnStatus::Committed(ts + 1));
        }
        for &ts in &starts {
            assert_eq!(cache.get(ts), Some(TxnStatus::Committed(ts + 1)));
        }
        cache.clear();
        for &ts in &starts {
            assert_eq!(cache.get(ts), None, "timestamp {ts} after clear");
        }
    }
}
