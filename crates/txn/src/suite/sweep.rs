//! Sweep on every backend (compare AtlasDB's AbstractSweepTest / SweepTaskRunner tests), its
//! interplay with the backup lock, progress persistence, and the timestamps that bound it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::common::*;
use crate::{
    BackupLock, ConflictHandler, SweepConfig, SweepStrategy, Sweeper, SystemWallClock,
    TableMetadata, TransactionManager, TxnError, TxnStatus, WallClock,
};
use ortelius_kvs::{Cell, TableRef, Timestamp, MAX_READ_TS};
use ortelius_timelock::{InProcessLockService, PersistentTimestampService};

fn strategy_table(m: &TransactionManager, name: &str, sweep_strategy: SweepStrategy) -> TableRef {
    let t = TableRef::new("test", name).unwrap();
    m.create_table(
        &t,
        TableMetadata {
            conflict_handler: ConflictHandler::RetryOnWriteWrite,
            sweep_strategy,
        },
    )
    .unwrap();
    t
}

/// Writes `value` at `ts` as a transaction that committed at `ts + 1`.
fn put(m: &TransactionManager, t: &TableRef, row: &str, value: &str, ts: Timestamp) {
    m.kvs()
        .put(t, &[(cell(row, "c"), value.as_bytes().to_vec())], ts)
        .unwrap();
    m.transactions_table()
        .put_unless_exists(ts, TxnStatus::Committed(ts + 1))
        .unwrap();
}

fn left(m: &TransactionManager, t: &TableRef, row: &str) -> Vec<Timestamp> {
    m.kvs()
        .get_all_timestamps(t, &[cell(row, "c")], MAX_READ_TS)
        .unwrap()
        .remove(&cell(row, "c"))
        .unwrap_or_default()
}

fn setup(store: &Store, config: SweepConfig) -> (TransactionManager, Sweeper) {
    let m = manager(store);
    m.timestamps().fast_forward(1_000_000).unwrap(); // fresh timestamps above the hand-written ones
    let lock = BackupLock::new(store.kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(m.clone(), lock, config).unwrap();
    (m, sweeper)
}

pub fn conservative_sweep_keeps_the_newest_committed_version_and_a_sentinel(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    let report = s.sweep_table_at(&t, 175, false).unwrap();
    assert_eq!(
        (
            report.versions_deleted,
            report.sentinels_added,
            report.complete
        ),
        (1, 1, true)
    );
    assert_eq!(left(&m, &t, "r"), vec![-1, 100]);
    // A reader below the kept version now finds the sentinel instead of a wrong "absent".
    let below = m.kvs().get(&t, &[(cell("r", "c"), 75)]).unwrap();
    assert_eq!(below[&cell("r", "c")].timestamp, -1);
}

pub fn the_only_version_is_never_swept(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "only", 50);
    assert_eq!(
        s.sweep_table_at(&t, 175, false).unwrap().versions_deleted,
        0
    );
    assert_eq!(left(&m, &t, "r"), vec![50]);
}

pub fn versions_committed_at_or_after_the_sweep_timestamp_are_untouched(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "visible at 150", 50);
    m.kvs()
        .put(&t, &[(cell("r", "c"), b"commits late".to_vec())], 100)
        .unwrap();
    m.transactions_table()
        .put_unless_exists(100, TxnStatus::Committed(200))
        .unwrap();
    m.kvs()
        .put(&t, &[(cell("r", "c"), b"abandoned".to_vec())], 120)
        .unwrap();
    m.kvs()
        .put(&t, &[(cell("r", "c"), b"in the future".to_vec())], 160)
        .unwrap();
    let report = s.sweep_table_at(&t, 150, false).unwrap();
    assert_eq!(
        (
            report.versions_deleted,
            report.writers_rolled_back,
            report.sentinels_added
        ),
        (1, 1, 0)
    );
    assert_eq!(left(&m, &t, "r"), vec![50, 100, 160]);
    assert_eq!(
        m.transactions_table().load_uncached(&[120]).unwrap()[&120],
        TxnStatus::Aborted
    );
}

pub fn thorough_sweep_keeps_only_the_newest_version_and_no_sentinel(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Thorough);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    s.sweep_table_at(&t, 175, false).unwrap();
    assert_eq!(left(&m, &t, "r"), vec![100]);
}

pub fn a_deleted_cell_vanishes_under_thorough_and_keeps_its_tombstone_under_conservative(
    store: &Store,
) {
    let (m, s) = setup(store, SweepConfig::default());
    for (name, strategy, offset, expected) in [
        ("thorough", SweepStrategy::Thorough, 0, vec![]),
        (
            "conservative",
            SweepStrategy::Conservative,
            1000,
            vec![-1, 1100],
        ),
    ] {
        let t = strategy_table(&m, name, strategy);
        put(&m, &t, "r", "value", offset + 50);
        put(&m, &t, "r", "", offset + 100);
        s.sweep_table_at(&t, offset + 175, false).unwrap();
        assert_eq!(left(&m, &t, "r"), expected, "{name}");
        assert_eq!(
            s.sweep_table_at(&t, offset + 175, false)
                .unwrap()
                .versions_deleted,
            0,
            "{name}: second sweep"
        );
    }
}

pub fn many_versions_of_many_rows_are_swept_across_pages(store: &Store) {
    let (m, s) = setup(
        store,
        SweepConfig {
            batch_size: 7,
            ..SweepConfig::default()
        },
    );
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    for version in 0..10 {
        for row in 0..20 {
            put(
                &m,
                &t,
                &format!("row{row:02}"),
                &format!("v{version}"),
                100 + version * 100 + row,
            );
        }
    }
    let report = s.sweep_table_at(&t, 5_000, false).unwrap();
    assert_eq!(
        (report.versions_deleted, report.cells_examined),
        (20 * 9, 20)
    );
    for row in 0..20 {
        assert_eq!(left(&m, &t, &format!("row{row:02}")), vec![-1, 1000 + row]);
    }
}

pub fn tables_marked_nothing_are_never_swept(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Nothing);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    assert_eq!(
        s.sweep_table_at(&t, 175, false).unwrap().versions_deleted,
        0
    );
    assert_eq!(left(&m, &t, "r"), vec![50, 100]);
    let system = TableRef::system("_transactions").unwrap();
    assert!(matches!(
        s.sweep_table_at(&system, 175, false),
        Err(TxnError::SystemTable { .. })
    ));
}

pub fn sweeping_an_already_swept_table_deletes_nothing(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    s.sweep_table_at(&t, 175, false).unwrap();
    let again = s.sweep_table_at(&t, 175, false).unwrap();
    assert_eq!((again.versions_deleted, again.sentinels_added), (0, 0));
}

pub fn sweep_stops_while_the_backup_lock_is_held_and_resumes_after_release(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    let lock = BackupLock::new(store.kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    lock.acquire("backup", "test", None, Duration::from_secs(5))
        .unwrap();
    let paused = s.sweep_table_at(&t, 175, false).unwrap();
    assert!(paused.paused_by_backup_lock && !paused.complete);
    assert_eq!(
        left(&m, &t, "r"),
        vec![50, 100],
        "nothing deleted, no sentinel written"
    );
    lock.release().unwrap();
    let resumed = s.sweep_table_at(&t, 175, false).unwrap();
    assert!(resumed.complete && resumed.versions_deleted == 1);
}

pub fn progress_is_persisted_so_a_new_sweeper_resumes(store: &Store) {
    let (m, s) = setup(
        store,
        SweepConfig {
            batch_size: 2,
            max_pages_per_run: Some(1),
            ..SweepConfig::default()
        },
    );
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    for row in 0..6 {
        put(&m, &t, &format!("row{row}"), "old", 50 + row);
        put(&m, &t, &format!("row{row}"), "new", 100 + row);
    }
    let first = s.sweep_table_at(&t, 500, false).unwrap();
    assert!(!first.complete && first.versions_deleted == 2);
    assert_eq!(
        s.progress(&t).unwrap(),
        Some(Cell::new("row2", "c").unwrap())
    );
    // A new sweeper (a restarted process) continues where the first stopped.
    let lock = BackupLock::new(store.kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let restarted = Sweeper::new(
        m.clone(),
        lock,
        SweepConfig {
            batch_size: 2,
            ..SweepConfig::default()
        },
    )
    .unwrap();
    let rest = restarted.sweep_table_at(&t, 500, false).unwrap();
    assert!(rest.complete && rest.versions_deleted == 4 && rest.cells_examined == 4);
    assert_eq!(
        restarted.progress(&t).unwrap(),
        None,
        "a finished pass starts over next time"
    );
}

pub fn a_dry_run_reports_without_deleting(store: &Store) {
    let (m, s) = setup(store, SweepConfig::default());
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    put(&m, &t, "r", "old", 50);
    put(&m, &t, "r", "new", 100);
    m.kvs()
        .put(&t, &[(cell("r", "c"), b"abandoned".to_vec())], 120)
        .unwrap();
    let report = s.sweep_table_at(&t, 175, true).unwrap();
    assert_eq!((report.versions_deleted, report.dry_run), (2, true));
    assert_eq!(left(&m, &t, "r"), vec![50, 100, 120]);
    assert!(
        m.transactions_table()
            .load_uncached(&[120])
            .unwrap()
            .is_empty(),
        "a dry run decides nothing"
    );
}

#[derive(Default)]
struct ManualWallClock(AtomicU64);
impl WallClock for ManualWallClock {
    fn now_ms(&self) -> u64 {
        10_000_000 + self.0.load(Ordering::SeqCst)
    }
}

pub fn the_sweep_timestamp_never_exceeds_the_unreadable_timestamp(store: &Store) {
    let clock = Arc::new(ManualWallClock::default());
    let timestamps = Arc::new(PersistentTimestampService::new(store.kvs.clone()).unwrap());
    let m = TransactionManager::with_wall_clock(
        store.kvs.clone(),
        timestamps,
        Arc::new(InProcessLockService::default()),
        config(),
        clock.clone(),
    )
    .unwrap();
    let lock = BackupLock::new(store.kvs.clone(), clock.clone()).unwrap();
    let s = Sweeper::new(m.clone(), lock, SweepConfig::default()).unwrap();
    assert_eq!(
        m.unreadable_timestamp().unwrap(),
        0,
        "no punch an hour old yet"
    );
    assert_eq!(s.sweep_timestamp().unwrap(), 0, "so sweep removes nothing");
    m.punch().unwrap();
    let b = m.fresh_timestamp().unwrap(); // e.g. the runbook's backup timestamp
    clock.0.store(30 * 60 * 1000, Ordering::SeqCst); // half an hour later
    assert!(
        s.sweep_timestamp().unwrap() < b,
        "a timestamp fetched within the read timeout stays readable"
    );
    clock.0.store(61 * 60 * 1000, Ordering::SeqCst);
    let sweep_ts = s.sweep_timestamp().unwrap();
    assert!(
        sweep_ts > 0 && sweep_ts < b,
        "the punch from an hour ago bounds sweep: {sweep_ts} vs {b}"
    );
}

pub fn read_only_transactions_time_out(store: &Store) {
    let cfg = crate::TransactionConfig {
        read_timeout: Duration::from_millis(50),
        ..config()
    };
    let m = TransactionManager::embedded(store.kvs.clone(), cfg).unwrap();
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let ro = m.begin_read_only().unwrap();
    ro.get_one(&t, &cell("r", "c")).unwrap();
    std::thread::sleep(Duration::from_millis(80));
    let err = ro.get_one(&t, &cell("r", "c")).unwrap_err();
    assert!(matches!(err, TxnError::ReadTimeout { .. }), "{err}");
    assert_eq!(err.retry_class(), crate::RetryClass::Retriable);
}

pub fn the_background_sweeper_cleans_a_table(store: &Store) {
    let cfg = crate::TransactionConfig {
        read_timeout: Duration::ZERO,
        ..config()
    };
    let m = TransactionManager::embedded(store.kvs.clone(), cfg).unwrap();
    let t = strategy_table(&m, "t", SweepStrategy::Conservative);
    for v in 0..5u64 {
        put_u64(&m, &t, &cell("r", "c"), v);
    }
    m.punch().unwrap();
    let lock = BackupLock::new(store.kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(m.clone(), lock, SweepConfig::default()).unwrap();
    let background = sweeper.spawn_background(Duration::from_millis(20));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while m
        .kvs()
        .get_all_timestamps(&t, &[cell("r", "c")], MAX_READ_TS)
        .unwrap()[&cell("r", "c")]
        .len()
        != 2
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the background sweeper did not clean up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(background);
    // (A read-only transaction would time out at once with a zero read timeout.)
    let txn = m.begin(crate::Isolation::Snapshot).unwrap();
    assert_eq!(read_u64(&txn, &t, &cell("r", "c")).unwrap(), Some(4));
}
