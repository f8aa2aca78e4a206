//! The backup runbook under fire: writers keep a hot table busy and sweep runs continuously
//! while a backup loop takes live checkpoints, in both orders (lock then B, as recommended; and
//! the seed runbook's B then lock, protected by the read-timeout grace period). Every checkpoint,
//! restored per the runbook (clean transactions >= B, fast-forward to F, release the persisted
//! lock), must contain exactly what was readable at B.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::{KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::suite::common::cell;
use ortelius_txn::{
    BackupLock, ConflictHandler, SweepConfig, SweepStrategy, Sweeper, SystemWallClock,
    TableMetadata, TransactionConfig, TransactionManager,
};

const KEYS: u64 = 5;
const CYCLES: usize = 8;

fn snapshot(
    m: &TransactionManager,
    t: &TableRef,
    txn: &ortelius_txn::Transaction,
) -> BTreeMap<u64, Option<u64>> {
    let _ = m;
    (0..KEYS)
        .map(|k| {
            let v = ortelius_txn::suite::common::read_u64(txn, t, &cell(&format!("k{k}"), "v"))
                .unwrap_or_else(|e| panic!("reading k{k} at the backup timestamp: {e}"));
            (k, v)
        })
        .collect()
}

/// A checkpoint that takes longer than the read timeout: by the time it runs, sweep's timestamp
/// is past B, and only the backup lock (taken before B) keeps B's versions in the checkpoint.
#[test]
fn lock_then_b_is_safe_even_when_the_checkpoint_outlasts_the_read_timeout() {
    race(Duration::from_millis(50), true, Duration::from_millis(200));
}

/// The seed runbook fetches B before taking the lock; the read-timeout grace period keeps
/// sweep below any timestamp fetched that recently.
#[test]
fn b_then_lock_is_safe_within_the_read_timeout() {
    race(Duration::from_millis(1000), false, Duration::ZERO);
}

/// Stops the workers however the backup loop ends (a panic included), so the scope can join.
struct StopOnDrop<'a>(&'a AtomicBool);
impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

fn race(read_timeout: Duration, always_lock_first: bool, slow_checkpoint: Duration) {
    let dir = tempfile::tempdir().unwrap();
    let rocks =
        Arc::new(RocksDbKvs::open(dir.path().join("live"), &RocksDbConfig::default()).unwrap());
    let kvs: Arc<dyn KeyValueService> = rocks.clone();
    let config = TransactionConfig {
        read_timeout,
        ..ortelius_txn::suite::common::config()
    };
    let m = TransactionManager::embedded(kvs.clone(), config.clone()).unwrap();
    let t = TableRef::new("race", "hot").unwrap();
    m.create_table(
        &t,
        TableMetadata {
            conflict_handler: ConflictHandler::RetryOnWriteWrite,
            sweep_strategy: SweepStrategy::Conservative,
        },
    )
    .unwrap();
    let lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(
        m.clone(),
        lock.clone(),
        SweepConfig {
            batch_size: 50,
            ..SweepConfig::default()
        },
    )
    .unwrap();
    let stop = AtomicBool::new(false);
    let mut backups = Vec::new();
    let mut swept = 0u64;
    std::thread::scope(|s| {
        for w in 0..2u64 {
            let (m, t, stop) = (&m, &t, &stop);
            s.spawn(move || {
                let mut n = w;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    m.run(|txn| {
                        let c = cell(&format!("k{}", n % KEYS), "v");
                        let v = ortelius_txn::suite::common::read_u64(txn, t, &c)?.unwrap_or(0);
                        txn.put(t, &c, (v + 1).to_be_bytes())
                    })
                    .unwrap();
                }
            });
        }
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                m.punch().unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let sweeping = s.spawn(|| {
            let mut deleted = 0;
            while !stop.load(Ordering::SeqCst) {
                deleted += sweeper.sweep_table(&t, false).unwrap().versions_deleted;
            }
            deleted
        });
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(read_timeout + Duration::from_millis(200)); // let punches age
        for cycle in 0..CYCLES {
            let lock_first = always_lock_first || cycle % 2 == 0;
            let backup_ts = if lock_first {
                lock.acquire("backup", "race test", None, Duration::from_secs(10))
                    .unwrap();
                m.fresh_timestamp().unwrap()
            } else {
                let b = m.fresh_timestamp().unwrap();
                // The operator runs the next runbook command a moment later.
                std::thread::sleep(Duration::from_millis(150));
                lock.acquire("backup", "race test", None, Duration::from_secs(10))
                    .unwrap();
                b
            };
            let expected = snapshot(&m, &t, &m.begin_read_only_at(backup_ts).unwrap());
            let checkpoint = dir.path().join(format!("checkpoint{cycle}"));
            std::thread::sleep(slow_checkpoint);
            rocks.checkpoint(&checkpoint).unwrap();
            let fast_forward_ts = m.fresh_timestamp().unwrap();
            lock.release().unwrap();
            backups.push((checkpoint, backup_ts, fast_forward_ts, expected));
            std::thread::sleep(Duration::from_millis(150));
        }
        stop.store(true, Ordering::SeqCst);
        swept = sweeping.join().unwrap();
    });
    assert!(
        swept > 0,
        "sweep never deleted anything: the race was not exercised"
    );
    drop(sweeper);
    drop(m);
    drop(lock);
    drop((kvs, rocks));
    for (checkpoint, backup_ts, fast_forward_ts, expected) in backups {
        let kvs: Arc<dyn KeyValueService> =
            Arc::new(RocksDbKvs::open(&checkpoint, &RocksDbConfig::default()).unwrap());
        let restored = TransactionManager::embedded(kvs.clone(), config.clone()).unwrap();
        restored
            .transactions_table()
            .clean_from(backup_ts, |_| {})
            .unwrap();
        restored.timestamps().fast_forward(fast_forward_ts).unwrap();
        let restored_lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).unwrap();
        assert!(
            restored_lock.status().unwrap().held.is_some(),
            "the lock was held when the checkpoint was taken"
        );
        restored_lock.release().unwrap();
        assert!(restored.fresh_timestamp().unwrap() > fast_forward_ts);
        let txn = restored.begin(ortelius_txn::Isolation::Snapshot).unwrap();
        let got: BTreeMap<u64, Option<u64>> = (0..KEYS)
            .map(|k| {
                match ortelius_txn::suite::common::read_u64(&txn, &t, &cell(&format!("k{k}"), "v"))
                {
                    Ok(v) => (k, v),
                    Err(e) => panic!("{} (B = {backup_ts}): k{k}: {e}", checkpoint.display()),
                }
            })
            .collect();
        assert_eq!(got, expected, "{} (B = {backup_ts})", checkpoint.display());
    }
}
