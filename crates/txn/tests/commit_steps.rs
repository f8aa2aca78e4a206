//! The commit sequence, step by step: the exact order of store, lock and timestamp calls of a
//! commit (so removing or reordering any step fails here), and the failure path of each step.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::testing::{CallLog, FaultTiming, RecordingKvs};
use ortelius_kvs::{KeyValueService, TableRef, Timestamp};
use ortelius_timelock::{
    FastForward, InProcessLockService, LockDescriptor, LockError, LockService, LockToken,
    ManualClock, PersistentTimestampService, TimestampError, TimestampRange, TimestampService,
};
use ortelius_txn::suite::common::{cell, config};
use ortelius_txn::{
    ConflictHandler, Isolation, RetryClass, TableMetadata, TransactionManager, TxnError, TxnStatus,
};

struct RecordingLocks {
    inner: InProcessLockService,
    log: CallLog,
}

impl RecordingLocks {
    fn note(&self, op: &'static str) {
        self.log.lock().unwrap().push((op, String::new()));
    }
}

impl LockService for RecordingLocks {
    fn lock(&self, d: &[LockDescriptor], timeout: Duration) -> Result<LockToken, LockError> {
        self.note("locks.lock");
        self.inner.lock(d, timeout)
    }
    fn refresh(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        self.note("locks.refresh");
        self.inner.refresh(tokens)
    }
    fn unlock(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        self.note("locks.unlock");
        self.inner.unlock(tokens)
    }
    fn wait_for_locks(&self, d: &[LockDescriptor], timeout: Duration) -> Result<(), LockError> {
        self.note("locks.wait_for_locks");
        self.inner.wait_for_locks(d, timeout)
    }
    fn lock_immutable_timestamp(&self, ts: Timestamp) -> Result<LockToken, LockError> {
        self.note("locks.lock_immutable_timestamp");
        self.inner.lock_immutable_timestamp(ts)
    }
    fn min_locked_timestamp(&self) -> Result<Option<Timestamp>, LockError> {
        self.note("locks.min_locked_timestamp");
        self.inner.min_locked_timestamp()
    }
}

struct RecordingTimestamps {
    inner: PersistentTimestampService,
    log: CallLog,
}

impl TimestampService for RecordingTimestamps {
    fn fresh_timestamps(&self, count: u32) -> Result<TimestampRange, TimestampError> {
        self.log
            .lock()
            .unwrap()
            .push(("timestamps.fresh", String::new()));
        self.inner.fresh_timestamps(count)
    }
    fn fast_forward(&self, to: Timestamp) -> Result<FastForward, TimestampError> {
        self.inner.fast_forward(to)
    }
}

struct Setup {
    manager: TransactionManager,
    kvs: Arc<RecordingKvs>,
    log: CallLog,
    clock: ManualClock,
    table: TableRef,
}

fn setup(handler: ConflictHandler) -> Setup {
    let log = CallLog::default();
    let kvs = Arc::new(RecordingKvs::with_log(
        Arc::new(MemoryKvs::new()),
        log.clone(),
    ));
    let clock = ManualClock::new();
    let locks = RecordingLocks {
        inner: InProcessLockService::new(Arc::new(clock.clone()), Duration::from_secs(20)),
        log: log.clone(),
    };
    let timestamps = RecordingTimestamps {
        inner: PersistentTimestampService::new(kvs.clone()).unwrap(),
        log: log.clone(),
    };
    let manager =
        TransactionManager::new(kvs.clone(), Arc::new(timestamps), Arc::new(locks), config())
            .unwrap();
    let table = TableRef::new("test", "t").unwrap();
    manager
        .create_table(
            &table,
            TableMetadata {
                conflict_handler: handler,
                ..Default::default()
            },
        )
        .unwrap();
    Setup {
        manager,
        kvs,
        log,
        clock,
        table,
    }
}

fn trace(log: &CallLog) -> Vec<String> {
    log.lock()
        .unwrap()
        .iter()
        .filter(|(op, _)| *op != "table_metadata")
        .map(|(op, table)| {
            if table.is_empty() {
                op.to_string()
            } else {
                format!("{op} {table}")
            }
        })
        .collect()
}

#[test]
fn begin_locks_the_immutable_timestamp_before_taking_the_start_timestamp() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    s.manager.fresh_timestamp().unwrap(); // the first one also persists the timestamp bound
    s.log.lock().unwrap().clear();
    let _txn = s.manager.begin(Isolation::Snapshot).unwrap();
    assert_eq!(
        trace(&s.log),
        [
            "timestamps.fresh",
            "locks.lock_immutable_timestamp",
            "timestamps.fresh"
        ]
    );
}

#[test]
fn commit_runs_its_steps_in_protocol_order() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    s.log.lock().unwrap().clear();
    txn.commit().unwrap();
    assert_eq!(
        trace(&s.log),
        [
            "locks.lock",                      // 1. commit locks (row + own entry)
            "locks.refresh",                   // 3. locks still held
            "multi_put_reading_latest test.t", // 4. data at start ts, and 2's read
            "timestamps.fresh",                // 5. commit ts, after the data
            "locks.refresh",                   // 7. locks still held, just before...
            "put_unless_exists _transactions", // 8. ...the commit point
            "locks.unlock",                    // 9. release commit locks
            "locks.unlock",                    //    and the immutable-timestamp guard
        ]
    );
}

#[test]
fn serializable_commit_validates_reads_after_taking_the_commit_timestamp() {
    let s = setup(ConflictHandler::Serializable);
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.get_one(&s.table, &cell("r", "other")).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    s.log.lock().unwrap().clear();
    txn.commit().unwrap();
    let t = trace(&s.log);
    let at = |op: &str| {
        t.iter()
            .position(|x| x == op)
            .unwrap_or_else(|| panic!("{op} missing from {t:?}"))
    };
    let fresh = at("timestamps.fresh");
    let validation_read = t.iter().rposition(|x| x == "get test.t").unwrap();
    assert!(
        at("multi_put_reading_latest test.t") < fresh && fresh < validation_read,
        "{t:?}"
    );
    assert!(
        validation_read < at("put_unless_exists _transactions"),
        "{t:?}"
    );
}

#[test]
fn commit_locks_are_released_when_a_step_fails() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    s.kvs
        .inject("multi_put_reading_latest", None, FaultTiming::Before, 1);
    assert!(matches!(txn.commit(), Err(TxnError::Store(_))));
    // The row is free again: another transaction commits to it at once.
    let other = s.manager.begin(Isolation::Snapshot).unwrap();
    other.put(&s.table, &cell("r", "c"), b"w".to_vec()).unwrap();
    other.commit().unwrap();
}

#[test]
fn expired_locks_fail_the_commit_before_the_commit_point() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    s.clock.advance(Duration::from_secs(30)); // the immutable-timestamp guard's lease runs out
    let err = txn.commit().unwrap_err();
    assert!(matches!(err, TxnError::LocksExpired { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Retriable);
    let calls = trace(&s.log);
    assert!(
        !calls
            .iter()
            .any(|c| c == "put_unless_exists _transactions" || c.starts_with("multi_put")),
        "{calls:?}"
    );
    assert_eq!(
        s.manager
            .begin_read_only()
            .unwrap()
            .get_one(&s.table, &cell("r", "c"))
            .unwrap(),
        None
    );
}

#[test]
fn a_lost_reply_to_the_commit_record_is_commit_outcome_unknown_but_committed() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txns = TableRef::system("_transactions").unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    s.kvs
        .inject("put_unless_exists", Some(&txns), FaultTiming::After, 1);
    let err = txn.commit().unwrap_err();
    assert!(
        matches!(err, TxnError::CommitOutcomeUnknown { .. }),
        "{err}"
    );
    assert_eq!(err.retry_class(), RetryClass::CommitOutcomeUnknown);
    // The write landed: the transaction is committed, and readers see it.
    assert_eq!(
        s.manager
            .begin_read_only()
            .unwrap()
            .get_one(&s.table, &cell("r", "c"))
            .unwrap(),
        Some(b"v".to_vec())
    );
    // `run` does not retry an unknown outcome.
    s.kvs
        .inject("put_unless_exists", Some(&txns), FaultTiming::After, 1);
    let mut attempts = 0;
    let err = s
        .manager
        .run(|t| {
            attempts += 1;
            t.put(&s.table, &cell("r", "d"), b"x".to_vec())
        })
        .unwrap_err();
    assert_eq!(
        (attempts, err.retry_class()),
        (1, RetryClass::CommitOutcomeUnknown)
    );
}

#[test]
fn a_failed_commit_record_write_is_outcome_unknown_and_readers_later_roll_it_back() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txns = TableRef::system("_transactions").unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    // A failure of unknown cause: it may or may not have been applied.
    s.kvs
        .inject("put_unless_exists", Some(&txns), FaultTiming::Broken, 1);
    let err = txn.commit().unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::CommitOutcomeUnknown);
    // Its locks are gone, so the next reader decides: aborted.
    assert_eq!(
        s.manager
            .begin_read_only()
            .unwrap()
            .get_one(&s.table, &cell("r", "c"))
            .unwrap(),
        None
    );
    let status = s
        .manager
        .transactions_table()
        .load_uncached(&[txn.start_ts()])
        .unwrap();
    assert_eq!(status.get(&txn.start_ts()), Some(&TxnStatus::Aborted));
}

#[test]
fn a_commit_record_that_never_reached_the_store_is_retriable_and_aborts_itself() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txns = TableRef::system("_transactions").unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"v".to_vec()).unwrap();
    // The store says the write was not applied (e.g. the connection broke before sending).
    s.kvs
        .inject("put_unless_exists", Some(&txns), FaultTiming::Before, 1);
    let err = txn.commit().unwrap_err();
    assert_eq!(err.retry_class(), RetryClass::Retriable, "{err}");
    // It recorded its own abort at once: readers need not wait for its locks.
    let status = s
        .manager
        .transactions_table()
        .load_uncached(&[txn.start_ts()])
        .unwrap();
    assert_eq!(status.get(&txn.start_ts()), Some(&TxnStatus::Aborted));
    // And `run` retries it to success.
    s.kvs
        .inject("put_unless_exists", Some(&txns), FaultTiming::Before, 1);
    let mut attempts = 0;
    s.manager
        .run(|t| {
            attempts += 1;
            t.put(&s.table, &cell("r", "d"), b"x".to_vec())
        })
        .unwrap();
    assert_eq!(attempts, 2);
}

#[test]
fn a_conflict_after_writing_data_records_the_abort_itself() {
    let s = setup(ConflictHandler::Serializable);
    s.manager
        .run(|t| t.put(&s.table, &cell("r", "a"), b"1".to_vec()))
        .unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.get_one(&s.table, &cell("r", "a")).unwrap();
    txn.put(&s.table, &cell("r", "b"), b"2".to_vec()).unwrap();
    s.manager
        .run(|t| t.put(&s.table, &cell("r", "a"), b"changed".to_vec()))
        .unwrap();
    assert!(matches!(
        txn.commit(),
        Err(TxnError::SerializableConflict { .. })
    ));
    let status = s
        .manager
        .transactions_table()
        .load_uncached(&[txn.start_ts()])
        .unwrap();
    assert_eq!(
        status.get(&txn.start_ts()),
        Some(&TxnStatus::Aborted),
        "decided at once, no waiting for readers"
    );
}

#[test]
fn reads_never_take_locks() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    s.manager
        .run(|t| t.put(&s.table, &cell("r", "c"), b"v".to_vec()))
        .unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    s.log.lock().unwrap().clear();
    txn.get_one(&s.table, &cell("r", "c")).unwrap();
    assert!(
        !trace(&s.log).iter().any(|c| c == "locks.lock"),
        "{:?}",
        trace(&s.log)
    );
    let _ = s.kvs.calls();
}

#[test]
fn open_transactions_outlive_one_lease_because_their_guard_is_refreshed() {
    let log = CallLog::default();
    let kvs = Arc::new(RecordingKvs::with_log(Arc::new(MemoryKvs::new()), log));
    let clock = ManualClock::new();
    let locks = InProcessLockService::new(Arc::new(clock.clone()), Duration::from_secs(20));
    let timestamps = PersistentTimestampService::new(kvs.clone()).unwrap();
    let cfg = ortelius_txn::TransactionConfig {
        lease_refresh_interval: Duration::from_millis(10),
        ..config()
    };
    let manager = TransactionManager::new(kvs, Arc::new(timestamps), Arc::new(locks), cfg).unwrap();
    let table = TableRef::new("test", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    let txn = manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&table, &cell("r", "c"), b"v".to_vec()).unwrap();
    for _ in 0..4 {
        clock.advance(Duration::from_secs(15)); // 60 s in all: three leases
        std::thread::sleep(Duration::from_millis(100)); // the refresher runs meanwhile
    }
    txn.commit().unwrap();
}

#[test]
fn a_write_write_conflict_found_after_writing_data_records_the_abort_itself() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &cell("r", "c"), b"loser".to_vec())
        .unwrap();
    s.manager
        .run(|t| t.put(&s.table, &cell("r", "c"), b"winner".to_vec()))
        .unwrap();
    let err = txn.commit().unwrap_err();
    assert!(matches!(err, TxnError::WriteWriteConflict { .. }), "{err}");
    // The conflict is found in the read done with the data write, so the data is there: the
    // transaction marks itself aborted at once rather than leave readers to wait for its locks.
    let status = s
        .manager
        .transactions_table()
        .load_uncached(&[txn.start_ts()])
        .unwrap();
    assert_eq!(status.get(&txn.start_ts()), Some(&TxnStatus::Aborted));
    let ro = s.manager.begin_read_only().unwrap();
    assert_eq!(
        ro.get_one(&s.table, &cell("r", "c")).unwrap(),
        Some(b"winner".to_vec())
    );
}

#[test]
fn the_conflict_check_passes_over_its_own_data_below_a_newer_aborted_version() {
    let s = setup(ConflictHandler::RetryOnWriteWrite);
    let c = cell("r", "c");
    s.manager
        .run(|t| t.put(&s.table, &c, b"before".to_vec()))
        .unwrap();
    let txn = s.manager.begin(Isolation::Snapshot).unwrap();
    txn.put(&s.table, &c, b"ours".to_vec()).unwrap();
    // A later transaction wrote the cell and was aborted: the check looks below its version,
    // where it meets our own data (written just before), which must not count as another
    // writer to roll back.
    let later = s.manager.fresh_timestamp().unwrap();
    s.kvs
        .put(&s.table, &[(c.clone(), b"aborted".to_vec())], later)
        .unwrap();
    s.manager
        .transactions_table()
        .put_unless_exists(later, TxnStatus::Aborted)
        .unwrap();
    txn.commit().unwrap();
    let ro = s.manager.begin_read_only().unwrap();
    assert_eq!(ro.get_one(&s.table, &c).unwrap(), Some(b"ours".to_vec()));
}
