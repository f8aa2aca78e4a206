//! Raw snapshots: the engine-level copy of a store that a backup holds (a RocksDB checkpoint,
//! a PostgreSQL COPY of every table, an etcd snapshot, per-node Cassandra snapshots). Each
//! backend implements these traits in its own `snapshot.rs`; the backup layer above them is
//! engine-neutral and never names a backend.
//!
//! A raw snapshot need not be consistent on its own (Cassandra's nodes snapshot at different
//! moments): the backup runbook around it (backup lock, backup and fast-forward timestamps,
//! cleaning the transactions table on restore) is what makes the restored store consistent.

use std::path::Path;
use std::sync::Arc;

use crate::error::{KvsError, KvsResult};
use crate::service::KeyValueService;
use crate::types::{Cell, TableRef, Value, ATOMIC_TS};

/// Progress of a long snapshot step: (units done, units in total), usually bytes.
pub type SnapshotProgress<'a> = &'a (dyn Fn(u64, u64) + Sync);

/// What a snapshot holds beyond its files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// For a store of several nodes: (directory prefix of the snapshot, node it came from).
    /// Empty for a single-node store.
    pub origins: Vec<(String, String)>,
}

/// Takes raw snapshots of a live, open store.
pub trait SnapshotSource: Send + Sync {
    /// The store kind recorded in backup manifests (`rocksdb`, `postgres`, ...).
    fn store_kind(&self) -> &'static str;
    /// Writes a raw snapshot of the live store into `dir`, which must not exist (its parent
    /// is created). Writers may keep writing meanwhile.
    fn take(&self, dir: &Path, progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo>;

    /// For a store of several nodes: snapshots node `node` (1-based) alone into `dir` (which
    /// may hold other nodes' snapshots), so an operator can follow the seed runbook node by
    /// node. Stores of one node have nothing to pick.
    fn take_node(
        &self,
        dir: &Path,
        node: usize,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<SnapshotInfo> {
        let _ = (dir, node, progress);
        Err(KvsError::Unsupported {
            operation: "snapshots of single nodes (the store is not a cluster of nodes)",
            backend: self.store_kind(),
        })
    }
}

/// What a restore target holds now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetState {
    /// Nothing: a restore may go ahead.
    Empty,
    /// A restore began and did not finish: running it again finishes it (the same snapshot,
    /// see [`restore_note`]) or starts over (another one).
    UnfinishedRestore,
    /// A store with data: a restore would replace it.
    HasData,
}

/// What a [`RestoreTarget::load`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Loaded {
    /// Bytes an interrupted load of the same snapshot had already put in place, kept.
    pub reused_bytes: u64,
}

/// A configured store that a snapshot can be restored into (offline).
pub trait RestoreTarget: Send + Sync {
    fn store_kind(&self) -> &'static str;
    /// Where the target is, for messages (a directory, a server and schema, ...).
    fn describe(&self) -> String;
    fn state(&self) -> KvsResult<TargetState>;
    /// Replaces whatever the target holds with the snapshot in `dir`, which `snapshot_id`
    /// names (the same id always means the same files). When it returns, the store is complete
    /// and carries the restore marker ([`mark_restore_in_progress`]) with `snapshot_id` as its
    /// note, so nothing uses it before the restore has finished; a crash midway leaves either
    /// the old state or a marked store, never an unmarked partial one. A backend may keep the
    /// work of an interrupted load of the same `snapshot_id` (and says how much in [`Loaded`]).
    fn load(
        &self,
        dir: &Path,
        snapshot_id: &str,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<Loaded>;
    /// Opens the target for the rest of the restore, despite the marker.
    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>>;
    /// Called once the restore's steps have run on the store [`Self::open_restoring`] gave and
    /// its marker is gone ([`finish_restore`]): a target that restored into a staging store
    /// puts it in place (etcd's rebuild of a new cluster). Default: nothing to do.
    fn complete(&self) -> KvsResult<()> {
        Ok(())
    }
}

/// Reads snapshots of one store kind without a server (deep verification of a backup).
pub trait SnapshotFormat: Send + Sync {
    fn store_kind(&self) -> &'static str;
    /// Reads every entry of the snapshot, checking checksums and structure as the format
    /// allows; returns how many entries it read.
    fn verify(&self, dir: &Path) -> KvsResult<u64>;
    /// Visits every version of `table` in the snapshot.
    fn scan_table(
        &self,
        dir: &Path,
        table: &TableRef,
        visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()>;
}

/// The system table whose presence marks a store as being restored.
pub const RESTORE_MARKER_TABLE: &str = "_restore_in_progress";

fn marker_table() -> KvsResult<TableRef> {
    TableRef::system(RESTORE_MARKER_TABLE)
}

/// Marks `kvs` as being restored (idempotent); `note` says from where.
pub fn mark_restore_in_progress(kvs: &dyn KeyValueService, note: &str) -> KvsResult<()> {
    let table = marker_table()?;
    kvs.create_table(&table, note.as_bytes())?;
    let cell = Cell::new("restore", "from")?;
    match kvs.put_unless_exists(&table, &[(cell, note.as_bytes().to_vec())]) {
        Ok(()) | Err(KvsError::KeyAlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `kvs` carries the restore marker.
pub fn restore_in_progress(kvs: &dyn KeyValueService) -> KvsResult<bool> {
    Ok(kvs.list_tables()?.contains(&marker_table()?))
}

/// Fails with `UnfinishedRestore` (naming `store`) if `kvs` carries the restore marker.
pub fn ensure_no_unfinished_restore(kvs: &dyn KeyValueService, store: &str) -> KvsResult<()> {
    if restore_in_progress(kvs)? {
        return Err(KvsError::UnfinishedRestore {
            store: store.to_owned(),
        });
    }
    Ok(())
}

/// Records on the marker that the snapshot `snapshot_id` is completely loaded, so a re-run of
/// an interrupted restore of the same snapshot need not load it again.
pub fn mark_loaded(kvs: &dyn KeyValueService, snapshot_id: &str) -> KvsResult<()> {
    let table = marker_table()?;
    let cell = Cell::new("restore", "loaded")?;
    // Timestamp 1: an ordinary version, not the atomic slot the marker's note uses.
    kvs.put(&table, &[(cell, snapshot_id.as_bytes().to_vec())], 1)
}

/// The snapshot a marked store was completely loaded from ([`mark_loaded`]), if any.
pub fn loaded_snapshot(kvs: &dyn KeyValueService) -> KvsResult<Option<String>> {
    let table = marker_table()?;
    if !kvs.list_tables()?.contains(&table) {
        return Ok(None);
    }
    let cell = Cell::new("restore", "loaded")?;
    Ok(kvs
        .get(&table, &[(cell.clone(), 2)])?
        .remove(&cell)
        .map(|v| String::from_utf8_lossy(&v.contents).into_owned()))
}

/// Removes the restore marker: the last step of a restore.
pub fn finish_restore(kvs: &dyn KeyValueService) -> KvsResult<()> {
    kvs.drop_table(&marker_table()?)
}

/// The marker's note, if any (which backup the unfinished restore came from).
pub fn restore_note(kvs: &dyn KeyValueService) -> KvsResult<Option<String>> {
    let table = marker_table()?;
    if !kvs.list_tables()?.contains(&table) {
        return Ok(None);
    }
    let cell = Cell::new("restore", "from")?;
    Ok(kvs
        .get(&table, &[(cell.clone(), ATOMIC_TS + 1)])?
        .remove(&cell)
        .map(|v| String::from_utf8_lossy(&v.contents).into_owned()))
}

/// Bytes as lowercase hex (snapshot catalogues are JSON).
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hex back to bytes; `None` if it is not hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect()
}

/// Runs `task` on every item on as many threads as there are cores, items taken in order as
/// threads free up: for per-file work on snapshots (copies, checksums) that one core or one
/// outstanding I/O at a time would leave slow. Stops handing out items after the first
/// failure and returns it; a panic in a task goes on in the caller's thread.
pub fn for_each_in_parallel<T: Sync, E: Send>(
    items: &[T],
    task: impl Fn(&T) -> Result<(), E> + Sync,
) -> Result<(), E> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || -> Result<(), E> {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return Ok(());
            };
            if let Err(e) = task(item) {
                next.store(items.len(), std::sync::atomic::Ordering::Relaxed);
                return Err(e);
            }
        }
    };
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads).map(|_| scope.spawn(worker)).collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    })
}

/// Work done so far by tasks running in parallel (bytes checksummed, files copied), reported
/// in order: each addition and its report happen under one lock, so the reports a caller sees
/// never go backwards and the last one is the final count. (With a bare atomic counter, the
/// thread that adds last can report before a slower one reports an earlier count, and a
/// progress display would end short of its total.)
#[derive(Debug, Default)]
pub struct ProgressCount(std::sync::Mutex<u64>);

impl ProgressCount {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `n` and passes the new count to `report` before any other addition can happen.
    pub fn add(&self, n: u64, report: impl FnOnce(u64)) {
        let mut done = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *done = done.saturating_add(n);
        report(*done);
    }
}

#[cfg(test)]
mod parallel_tests {
    #![allow(clippy::unwrap_used)]
    use super::{for_each_in_parallel, ProgressCount};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    #[test]
    fn parallel_progress_reports_never_go_backwards_and_end_at_the_total() {
        for _ in 0..20 {
            let count = ProgressCount::new();
            let seen = Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for _ in 0..8 {
                    scope.spawn(|| {
                        for _ in 0..50 {
                            count.add(3, |now| {
                                // A slow receiver widens the window a bare counter leaves open.
                                std::thread::yield_now();
                                seen.lock().unwrap().push(now);
                            });
                        }
                    });
                }
            });
            let seen = seen.into_inner().unwrap();
            assert!(
                seen.windows(2).all(|w| w[0] < w[1]),
                "out of order: {seen:?}"
            );
            assert_eq!(seen.last(), Some(&(8 * 50 * 3)));
        }
    }

    #[test]
    fn every_item_is_done_once_and_the_first_failure_is_returned() {
        let items: Vec<usize> = (0..100).collect();
        let seen = AtomicUsize::new(0);
        let sum = AtomicUsize::new(0);
        let ok: Result<(), String> = for_each_in_parallel(&items, |i| {
            seen.fetch_add(1, Ordering::Relaxed);
            sum.fetch_add(*i, Ordering::Relaxed);
            Ok(())
        });
        assert_eq!(ok, Ok(()));
        assert_eq!(seen.into_inner(), 100);
        assert_eq!(sum.into_inner(), (0..100).sum::<usize>());
        let tried = AtomicUsize::new(0);
        let failed = for_each_in_parallel(&items, |i| {
            tried.fetch_add(1, Ordering::Relaxed);
            if *i == 10 {
                Err(format!("item {i} failed"))
            } else {
                std::thread::sleep(std::time::Duration::from_millis(2));
                Ok(())
            }
        });
        assert_eq!(failed, Err("item 10 failed".to_owned()));
        assert!(tried.into_inner() < 100, "no new items after the failure");
    }

    #[test]
    #[should_panic(expected = "task panicked")]
    fn a_panicking_task_panics_the_caller() {
        let _ = for_each_in_parallel(&[1, 2, 3], |_| -> Result<(), ()> {
            panic!("task panicked")
        });
    }
}
