//! Group commit of the atomic writes (`put_unless_exists`, `check_and_set`), outside RocksDB's
//! write queue.
//!
//! A synced RocksDB write holds the write queue while its group's WAL is fsynced, so a
//! transaction's unsynced data write queues behind whichever commit record is being synced, and
//! each transaction waits for two syncs. Here an atomic write is written unsynced, and the WAL
//! is then synced with `FlushWAL(sync)`, which runs beside the write queue. One caller at a
//! time syncs, covering every write published before it started; the others wait for it and
//! return without a sync of their own if it covered them.
//!
//! RocksDB makes a synced write visible only after the sync; here the write is visible as soon
//! as it is written. So that nobody acts on an atomic write a crash of the machine could still
//! lose, every read of a table is settled ([`WalSync::settle_read`]): if an atomic write to the
//! table may be unsynced, the read returns only after a sync covering everything it could have
//! seen. Tables without atomic writes in flight read without waiting.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};

use ortelius_kvs::{KvsError, KvsResult};
use rocksdb::{WriteBatch, WriteOptions, DB};

use crate::{poisoned, storage};

/// Counters of atomic writes in flight, per table id modulo this (two tables sharing a slot
/// only make some reads wait for a sync they did not need).
const SLOTS: usize = 16;

/// A counter on its own cache line: writers to one table do not slow readers of another.
#[repr(align(64))]
#[derive(Default)]
struct Slot(AtomicUsize);

#[derive(Default)]
struct SyncState {
    /// Every write with a sequence number up to this is synced.
    synced_through: u64,
    /// While a caller syncs: the sequence number its sync covers.
    syncing: Option<u64>,
    /// How many syncs were run. The running one, if any, is sync number `syncs`.
    syncs: u64,
    /// Callers waiting, by the parity of the sync they wait for: the running one if it covers
    /// them, else the one after it. (A wake-up is a system call: only callers that exist are
    /// woken, and only those a sync is for.)
    waiting: [usize; 2],
    /// Callers that woke and had to wait again (for tests: a finished sync should wake only
    /// those it covered and one to run the next).
    rewaits: u64,
}

/// What the tests look at (see [`SyncState`]).
#[cfg(test)]
#[derive(Debug)]
pub(crate) struct Progress {
    pub synced_through: u64,
    pub syncs: u64,
    pub syncing: bool,
    pub waiting: usize,
    pub rewaits: u64,
}

/// See the module documentation.
pub(crate) struct WalSync {
    in_flight: [Slot; SLOTS],
    state: Mutex<SyncState>,
    /// Signalled when a sync of that parity ends (see `SyncState::waiting`).
    synced: [Condvar; 2],
    unsynced: WriteOptions,
    /// Held by each sync while it runs; tests hold it to keep a write unsynced.
    #[cfg(test)]
    pub(crate) gate: Mutex<()>,
}

impl WalSync {
    pub(crate) fn new() -> Self {
        Self {
            in_flight: Default::default(),
            state: Mutex::new(SyncState::default()),
            synced: [Condvar::new(), Condvar::new()],
            unsynced: WriteOptions::default(),
            #[cfg(test)]
            gate: Mutex::new(()),
        }
    }

    fn slot(&self, table_id: u32) -> &AtomicUsize {
        &self.in_flight[table_id as usize % SLOTS].0
    }

    /// Writes `batch`, whose writes are all to the table `table_id`, and returns once it is
    /// synced. If the sync fails the write is in the store but not durable: the error is
    /// `MaybeApplied`, and the write stays counted as in flight, so the table's readers keep
    /// requiring a sync before they answer.
    pub(crate) fn write(&self, db: &DB, table_id: u32, batch: WriteBatch) -> KvsResult<()> {
        let slot = self.slot(table_id);
        // Counted before it can be seen: a reader that finds the counter at zero after its
        // read saw only synced atomic writes.
        slot.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = db.write_opt(batch, &self.unsynced) {
            slot.fetch_sub(1, Ordering::SeqCst);
            return Err(storage(e));
        }
        self.sync_through(db, db.latest_sequence_number())
            .map_err(|e| KvsError::MaybeApplied {
                operation: "an atomic write",
                detail: format!("it was written, but syncing the write-ahead log failed: {e}"),
            })?;
        slot.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }

    /// Called after a read of `table_id` whose view of the store was fixed before the call:
    /// returns once every atomic write the read could have seen is synced.
    pub(crate) fn settle_read(&self, db: &DB, table_id: u32) -> KvsResult<()> {
        if self.slot(table_id).load(Ordering::SeqCst) == 0 {
            return Ok(());
        }
        self.sync_through(db, db.latest_sequence_number())
    }

    /// Returns once every write up to sequence number `target` is synced.
    ///
    /// Callers that arrive during a sync that does not cover them wait for the next one, and
    /// only one of them is woken when the running sync ends, to run it: the others sleep on
    /// until it has covered them, rather than all waking to find themselves not covered.
    fn sync_through(&self, db: &DB, target: u64) -> KvsResult<()> {
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        let mut woken = false;
        loop {
            if state.synced_through >= target {
                return Ok(());
            }
            if let Some(covered) = state.syncing {
                if woken {
                    state.rewaits = state.rewaits.saturating_add(1);
                }
                let awaited = state.syncs.wrapping_add(u64::from(target > covered));
                let parity = (awaited % 2) as usize;
                state.waiting[parity] += 1;
                state = self.synced[parity].wait(state).map_err(|_| poisoned())?;
                state.waiting[parity] -= 1;
                woken = true;
                continue;
            }
            // A write's sequence number is published after its WAL record is written to the
            // file, so this sync covers every write up to `through`.
            let through = db.latest_sequence_number();
            state.syncing = Some(through);
            let parity = (state.syncs % 2) as usize;
            drop(state);
            let result = {
                #[cfg(test)]
                let _gate = self
                    .gate
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                db.flush_wal(true)
            };
            state = self.state.lock().map_err(|_| poisoned())?;
            state.syncing = None;
            state.syncs = state.syncs.saturating_add(1);
            if result.is_ok() {
                state.synced_through = state.synced_through.max(through);
            }
            // Everyone who waited for this sync is covered (or, if it failed, tries again);
            // of those waiting for the next one, one runs it.
            if state.waiting[parity] > 0 {
                self.synced[parity].notify_all();
            }
            if state.waiting[1 - parity] > 0 {
                self.synced[1 - parity].notify_one();
            }
            result.map_err(storage)?;
        }
    }

    /// Sequence number up to which every write is synced, and how many syncs were run.
    #[cfg(test)]
    pub(crate) fn synced(&self) -> (u64, u64) {
        let p = self.progress();
        (p.synced_through, p.syncs)
    }

    #[cfg(test)]
    pub(crate) fn progress(&self) -> Progress {
        let s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Progress {
            synced_through: s.synced_through,
            syncs: s.syncs,
            syncing: s.syncing.is_some(),
            waiting: s.waiting.iter().sum(),
            rewaits: s.rewaits,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::Duration;

    use ortelius_kvs::{
        Cell, CheckAndSetRequest, ColumnRange, ColumnSelection, KeyValueService, KvsError,
        RangeRequest, TableRef, Timestamp, ATOMIC_TS,
    };

    use crate::{RocksDbConfig, RocksDbKvs};

    fn open() -> (tempfile::TempDir, Arc<RocksDbKvs>) {
        let dir = tempfile::tempdir().unwrap();
        let kvs = RocksDbKvs::open(dir.path(), &RocksDbConfig::default()).unwrap();
        (dir, Arc::new(kvs))
    }

    fn wal_sync(kvs: &RocksDbKvs) -> &super::WalSync {
        kvs.wal_sync
            .as_ref()
            .expect("atomic writes are synced by default")
    }

    fn cell(i: u64) -> Cell {
        Cell::new(i.to_be_bytes(), "c").unwrap()
    }

    #[test]
    fn an_atomic_write_returns_once_the_wal_is_synced_through_it() {
        let (_dir, kvs) = open();
        let table = TableRef::new("t", "commits").unwrap();
        kvs.create_table(&table, b"").unwrap();
        for i in 0..20 {
            kvs.put_unless_exists(&table, &[(cell(i), b"v".to_vec())])
                .unwrap();
            let request = CheckAndSetRequest {
                cell: cell(i),
                expected: Some(b"v".to_vec()),
                new_value: b"w".to_vec(),
            };
            kvs.check_and_set(&table, &request).unwrap();
            // Nothing else writes: the last write is this one, and the sync covers it.
            assert_eq!(wal_sync(&kvs).synced().0, kvs.db.latest_sequence_number());
        }
    }

    #[test]
    fn atomic_writes_from_many_threads_share_syncs() {
        let (_dir, kvs) = open();
        let table = TableRef::new("t", "commits").unwrap();
        kvs.create_table(&table, b"").unwrap();
        let (threads, each) = (8u64, 50u64);
        std::thread::scope(|s| {
            for t in 0..threads {
                let (kvs, table) = (&kvs, &table);
                s.spawn(move || {
                    for i in 0..each {
                        let before = kvs.db.latest_sequence_number();
                        kvs.put_unless_exists(table, &[(cell(t * each + i), b"v".to_vec())])
                            .unwrap();
                        assert!(wal_sync(kvs).synced().0 > before);
                    }
                });
            }
        });
        let (synced_through, syncs) = wal_sync(&kvs).synced();
        assert_eq!(synced_through, kvs.db.latest_sequence_number());
        assert!(
            syncs < threads * each,
            "{syncs} syncs for {} atomic writes: none shared",
            threads * each
        );
        let all = (0..threads * each).map(|i| (cell(i), ATOMIC_TS + 1));
        let found = kvs.get(&table, &all.collect::<Vec<_>>()).unwrap();
        assert_eq!(found.len() as u64, threads * each);
    }

    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting until {what}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_finished_sync_wakes_one_caller_to_run_the_next_and_no_other() {
        let (_dir, kvs) = open();
        let table = TableRef::new("t", "commits").unwrap();
        kvs.create_table(&table, b"").unwrap();
        let sync = wal_sync(&kvs);
        // Cells on five different lock stripes: a writer holds its cell's stripe while it syncs.
        let mut stripes = std::collections::HashSet::new();
        let cells: Vec<u64> = (0..)
            .filter(|i| stripes.insert(kvs.stripe(&cell(*i))))
            .take(5)
            .collect();
        let gate = sync.gate.lock().unwrap();
        std::thread::scope(|s| {
            let (kvs, table) = (&kvs, &table);
            let put = move |i: u64| kvs.put_unless_exists(table, &[(cell(i), b"v".to_vec())]);
            let first_cell = cells[0];
            let first = s.spawn(move || put(first_cell));
            wait_until("the first write syncs", || sync.progress().syncing);
            // Written while that sync runs: it does not cover them.
            let later: Vec<_> = cells[1..]
                .iter()
                .map(|&i| s.spawn(move || put(i)))
                .collect();
            wait_until("the later writes wait", || sync.progress().waiting == 4);
            drop(gate);
            first.join().unwrap().unwrap();
            for writer in later {
                writer.join().unwrap().unwrap();
            }
        });
        let progress = sync.progress();
        assert_eq!(
            progress.syncs, 2,
            "the later writes share one sync: {progress:?}"
        );
        assert_eq!(
            progress.rewaits, 0,
            "a caller was woken by a sync that did not cover it, only to wait again: {progress:?}"
        );
    }

    /// A read of a table at a timestamp: whether it found cell 1.
    type Read = fn(&RocksDbKvs, &TableRef, Timestamp) -> bool;

    /// Every way of reading a table at a timestamp, each answering `true` once it has seen cell 1.
    fn reads() -> Vec<(&'static str, Read)> {
        vec![
            ("get", |kvs, t, ts| {
                !kvs.get(t, &[(cell(1), ts)]).unwrap().is_empty()
            }),
            ("get_rows", |kvs, t, ts| {
                let rows = [cell(1).row().to_vec()];
                !kvs.get_rows(t, &rows, &ColumnSelection::All, ts)
                    .unwrap()
                    .is_empty()
            }),
            ("get_range", |kvs, t, ts| {
                let mut rows = kvs.get_range(t, &RangeRequest::all(), ts).unwrap();
                rows.next().is_some()
            }),
            ("scan_range", |kvs, t, ts| {
                let mut seen = false;
                kvs.scan_range(t, &RangeRequest::all(), ts, &mut |_| {
                    seen = true;
                    std::ops::ControlFlow::Break(())
                })
                .unwrap();
                seen
            }),
            ("get_rows_column_range", |kvs, t, ts| {
                let rows = [cell(1).row().to_vec()];
                let range = ColumnRange::default();
                let mut cells = kvs.get_rows_column_range(t, &rows, &range, ts).unwrap();
                cells.next().is_some()
            }),
            ("get_all_timestamps", |kvs, t, ts| {
                !kvs.get_all_timestamps(t, &[cell(1)], ts)
                    .unwrap()
                    .is_empty()
            }),
            ("put_unless_exists", |kvs, t, _| {
                matches!(
                    kvs.put_unless_exists(t, &[(cell(1), b"x".to_vec())]),
                    Err(KvsError::KeyAlreadyExists { .. })
                )
            }),
            ("check_and_set", |kvs, t, _| {
                let request = CheckAndSetRequest {
                    cell: cell(1),
                    expected: None,
                    new_value: b"x".to_vec(),
                };
                matches!(
                    kvs.check_and_set(t, &request),
                    Err(KvsError::CheckAndSetFailed { .. })
                )
            }),
        ]
    }

    #[test]
    fn no_read_answers_with_an_atomic_write_before_it_is_synced() {
        let (_dir, kvs) = open();
        let (commits, data) = (
            TableRef::new("t", "commits").unwrap(),
            TableRef::new("t", "data").unwrap(),
        );
        kvs.create_table(&commits, b"").unwrap();
        kvs.create_table(&data, b"").unwrap();
        kvs.put(&data, &[(cell(1), b"d".to_vec())], 5).unwrap();
        let gate = wal_sync(&kvs).gate.lock().unwrap();
        let before = kvs.db.latest_sequence_number();
        let writer = {
            let (kvs, commits) = (kvs.clone(), commits.clone());
            std::thread::spawn(move || kvs.put_unless_exists(&commits, &[(cell(1), b"v".to_vec())]))
        };
        // The write is in the store (and visible to RocksDB readers) but not synced.
        while kvs.db.latest_sequence_number() == before {
            std::thread::sleep(Duration::from_millis(1));
        }
        let readers: BTreeMap<_, _> = reads()
            .into_iter()
            .map(|(name, read)| {
                let (kvs, commits) = (kvs.clone(), commits.clone());
                (
                    name,
                    std::thread::spawn(move || read(&kvs, &commits, ATOMIC_TS + 1)),
                )
            })
            .collect();
        // A table without atomic writes in flight is read without waiting.
        for (name, read) in reads().into_iter().take(6) {
            assert!(read(&kvs, &data, 6), "{name} of the data table");
        }
        std::thread::sleep(Duration::from_millis(300));
        for (name, reader) in &readers {
            assert!(
                !reader.is_finished(),
                "{name} answered while the atomic write it saw was not synced"
            );
        }
        assert!(!writer.is_finished());
        drop(gate);
        writer.join().unwrap().unwrap();
        for (name, reader) in readers {
            assert!(reader.join().unwrap(), "{name} saw the atomic write");
        }
    }
}
