//! One-shot backup and restore: round trip, damaged backups, targets, crashed restores, as-of.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;

use ortelius_backup::{
    backup, restore, verify, BackupError, DirectSource, MANIFEST, STARTED_MARKER,
};
use ortelius_kvs::{Cell, KeyValueService, KvsError, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs, RESTORE_MARKER};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

fn manager(dir: &Path) -> (TransactionManager, TableRef) {
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(dir, &RocksDbConfig::default()).unwrap());
    let m = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let t = TableRef::new("app", "t").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    (m, t)
}

fn put(m: &TransactionManager, t: &TableRef, row: &str) -> i64 {
    m.run(|txn| {
        txn.put(t, &Cell::new(row, "v").unwrap(), b"1".to_vec())?;
        Ok(txn.start_ts())
    })
    .unwrap()
}

fn present(m: &TransactionManager, t: &TableRef, row: &str) -> bool {
    m.begin_read_only()
        .unwrap()
        .get_one(t, &Cell::new(row, "v").unwrap())
        .unwrap()
        .is_some()
}

/// A store with "before" committed, a backup, then "after" committed.
fn backed_up(root: &Path) -> std::path::PathBuf {
    let (m, t) = manager(&root.join("live"));
    put(&m, &t, "before");
    let dir = root.join("backup");
    let manifest = backup(&DirectSource::new(m.clone()).unwrap(), &dir).unwrap();
    assert!(manifest.backup_ts < manifest.fast_forward_ts && !manifest.files.is_empty());
    put(&m, &t, "after");
    dir
}

#[test]
fn a_backup_restores_from_scratch_to_exactly_the_state_at_b() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    assert!(dir.join(STARTED_MARKER).exists() && dir.join(MANIFEST).exists());
    let target = root.path().join("restored");
    let report = restore(&dir, &target, false, None).unwrap();
    assert!(report.bytes_copied > 0);
    let (m, t) = manager(&target);
    assert!(present(&m, &t, "before") && !present(&m, &t, "after"));
    assert!(m.fresh_timestamp().unwrap() > report.manifest.fast_forward_ts);
    let lock =
        ortelius_txn::BackupLock::new(m.kvs().clone(), Arc::new(ortelius_txn::SystemWallClock))
            .unwrap();
    assert_eq!(
        lock.status().unwrap().held,
        None,
        "the persisted lock was released"
    );
}

#[test]
fn damaged_backups_fail_verification_and_are_not_restored() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    let manifest = verify(&dir).unwrap();
    let largest = manifest.files.iter().max_by_key(|f| f.1).unwrap().0.clone();
    let victim = dir.join("store").join(&largest);
    let original = std::fs::read(&victim).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&victim, &flipped).unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Corrupt { .. })));
    assert!(matches!(
        restore(&dir, &root.path().join("r1"), false, None),
        Err(BackupError::Corrupt { .. })
    ));
    assert!(
        !root.path().join("r1").exists(),
        "nothing written for a refused restore"
    );
    std::fs::remove_file(&victim).unwrap();
    assert!(
        matches!(verify(&dir), Err(BackupError::Corrupt { detail, .. }) if detail.contains("missing"))
    );
    std::fs::write(&victim, &original).unwrap();
    verify(&dir).unwrap();
    let text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
    std::fs::write(dir.join(MANIFEST), &text[..text.len() / 2]).unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Corrupt { .. })));
    std::fs::remove_file(dir.join(MANIFEST)).unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    assert!(matches!(
        verify(root.path()),
        Err(BackupError::NotABackup(_))
    ));
}

#[test]
fn targets_and_backup_directories_must_be_empty_unless_forced() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    let (m, _) = manager(&root.path().join("other"));
    assert!(matches!(
        backup(&DirectSource::new(m).unwrap(), &dir),
        Err(BackupError::NotEmpty { .. })
    ));
    let target = root.path().join("occupied");
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join("precious"), b"data").unwrap();
    assert!(matches!(
        restore(&dir, &target, false, None),
        Err(BackupError::NotEmpty { .. })
    ));
    assert!(target.join("precious").exists(), "nothing touched");
    restore(&dir, &target, true, None).unwrap();
    assert!(!target.join("precious").exists());
    let (m, t) = manager(&target);
    assert!(present(&m, &t, "before"));
}

#[test]
fn a_crashed_restore_refuses_to_open_and_a_rerun_finishes_it() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    let target = root.path().join("restored");
    // What a restore killed midway leaves: the marker and some files.
    std::fs::create_dir_all(&target).unwrap();
    std::fs::write(target.join(RESTORE_MARKER), b"restoring\n").unwrap();
    std::fs::write(target.join("000001.sst"), b"partial").unwrap();
    match RocksDbKvs::open(&target, &RocksDbConfig::default()) {
        Err(err @ KvsError::UnfinishedRestore { .. }) => {
            assert!(err.to_string().contains("run the restore again"))
        }
        Err(other) => panic!("expected UnfinishedRestore, got {other}"),
        Ok(_) => panic!("opened a half-restored store"),
    }
    restore(&dir, &target, false, None).unwrap();
    let (m, t) = manager(&target);
    assert!(present(&m, &t, "before"));
}

#[test]
fn restoring_as_of_an_earlier_timestamp_shows_exactly_the_commits_before_it() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "first");
    let as_of = m.fresh_timestamp().unwrap();
    put(&m, &t, "second");
    let dir = root.path().join("backup");
    let manifest = backup(&DirectSource::new(m.clone()).unwrap(), &dir).unwrap();
    let target = root.path().join("restored");
    restore(&dir, &target, false, Some(as_of)).unwrap();
    let (r, rt) = manager(&target);
    assert!(present(&r, &rt, "first") && !present(&r, &rt, "second"));
    let err = restore(
        &dir,
        &root.path().join("r2"),
        false,
        Some(manifest.backup_ts + 1),
    )
    .unwrap_err();
    assert!(matches!(err, BackupError::AsOfOutOfRange { .. }), "{err}");
}

#[test]
fn a_backup_that_crashed_midway_is_recognised_and_a_rerun_succeeds() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "row");
    let dir = root.path().join("backup");
    // What a backup killed after its checkpoint leaves: the marker and files, no manifest.
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join(STARTED_MARKER), b"started\n").unwrap();
    std::fs::write(dir.join("store").join("leftover-from-the-crash"), b"half").unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    assert!(matches!(
        restore(&dir, &root.path().join("r"), false, None),
        Err(BackupError::Incomplete(_))
    ));
    backup(&DirectSource::new(m.clone()).unwrap(), &dir).unwrap();
    verify(&dir).unwrap();
    assert!(
        !dir.join("store").join("leftover-from-the-crash").exists(),
        "the leftovers were cleared"
    );
    let lock =
        ortelius_txn::BackupLock::new(m.kvs().clone(), Arc::new(ortelius_txn::SystemWallClock))
            .unwrap();
    assert_eq!(
        lock.status().unwrap().held,
        None,
        "the re-run released its lock"
    );
}

/// Sets the cancel flag while the checkpoint runs (as Ctrl-C would).
struct CancelDuringCheckpoint<'a> {
    inner: DirectSource,
    cancel: &'a std::sync::atomic::AtomicBool,
}

impl ortelius_backup::BackupSource for CancelDuringCheckpoint<'_> {
    fn acquire_lock(&self, reason: &str, lease: std::time::Duration) -> Result<(), String> {
        self.inner.acquire_lock(reason, lease)
    }
    fn release_lock(&self) -> Result<(), String> {
        self.inner.release_lock()
    }
    fn fresh_timestamp(&self) -> Result<i64, String> {
        self.inner.fresh_timestamp()
    }
    fn sweep_timestamp(&self) -> Result<i64, String> {
        self.inner.sweep_timestamp()
    }
    fn checkpoint(&self, dir: &Path) -> Result<(), String> {
        self.cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.checkpoint(dir)
    }
}

#[test]
fn a_cancelled_backup_releases_the_lock_and_leaves_an_incomplete_backup() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "row");
    let dir = root.path().join("backup");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let source = CancelDuringCheckpoint {
        inner: DirectSource::new(m.clone()).unwrap(),
        cancel: &cancel,
    };
    let err = ortelius_backup::backup_cancellable(
        &source,
        &dir,
        false,
        &cancel,
        &ortelius_backup::no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, BackupError::Cancelled), "{err}");
    let lock =
        ortelius_txn::BackupLock::new(m.kvs().clone(), Arc::new(ortelius_txn::SystemWallClock))
            .unwrap();
    assert_eq!(
        lock.status().unwrap().held,
        None,
        "released at once, not after the lease"
    );
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    backup(&DirectSource::new(m).unwrap(), &dir).unwrap();
}

#[test]
fn deep_verification_reads_everything_without_changing_the_backup() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    let report = ortelius_backup::verify_deep(&dir).unwrap();
    assert!(report.keys > 0 && report.transactions >= 1);
    verify(&dir).unwrap(); // every checksum still matches: the read-only open wrote nothing
}

#[test]
fn deep_verification_catches_a_commit_record_after_f() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "row");
    // A record no real backup can contain: committed long after any F this backup will get.
    m.transactions_table()
        .put_unless_exists(5, ortelius_txn::TxnStatus::Committed(i64::MAX - 2))
        .unwrap();
    let dir = root.path().join("backup");
    backup(&DirectSource::new(m).unwrap(), &dir).unwrap();
    verify(&dir).unwrap(); // the files are intact...
    let err = ortelius_backup::verify_deep(&dir).unwrap_err();
    assert!(
        matches!(&err, BackupError::Corrupt { detail, .. } if detail.contains("not before F")),
        "{err}"
    );
}

#[test]
fn a_restore_that_links_files_shares_nothing_mutable_with_the_backup() {
    let root = tempfile::tempdir().unwrap();
    let dir = backed_up(root.path());
    let target = root.path().join("restored");
    let report = restore(&dir, &target, false, None).unwrap();
    assert!(
        report.bytes_linked > 0,
        "same filesystem: SSTs are hard-linked"
    );
    {
        let kvs = Arc::new(RocksDbKvs::open(&target, &RocksDbConfig::default()).unwrap());
        let dynkvs: Arc<dyn KeyValueService> = kvs.clone();
        let m = TransactionManager::embedded(dynkvs, TransactionConfig::default()).unwrap();
        let t = TableRef::new("app", "t").unwrap();
        for i in 0..200 {
            put(&m, &t, &format!("new{i}"));
        }
        kvs.compact(); // rewrites and unlinks the restored store's files
    }
    verify(&dir).unwrap(); // the backup is untouched
    std::fs::remove_dir_all(&dir).unwrap();
    let (m, t) = manager(&target); // and the restored store does not depend on it
    assert!(present(&m, &t, "before") && present(&m, &t, "new199"));
}

#[test]
fn long_steps_report_progress_up_to_their_total() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "row");
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |step: &str, done: u64, total: u64| {
        seen.lock().unwrap().push((step.to_owned(), done, total))
    };
    let dir = root.path().join("backup");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    ortelius_backup::backup_cancellable(
        &DirectSource::new(m).unwrap(),
        &dir,
        false,
        &cancel,
        &record,
    )
    .unwrap();
    ortelius_backup::restore_with_progress(
        &dir,
        &root.path().join("restored"),
        false,
        None,
        &record,
    )
    .unwrap();
    let seen = seen.into_inner().unwrap();
    for step in ["checksumming", "verifying", "restoring"] {
        let last = seen
            .iter()
            .rev()
            .find(|(s, _, _)| s == step)
            .unwrap_or_else(|| panic!("no {step} progress"));
        assert!(
            last.2 > 0 && last.1 == last.2,
            "{step} ends at its total: {last:?}"
        );
    }
}

#[test]
fn a_rate_limit_slows_the_checksum_pass_to_the_given_rate() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    // About 512 KiB of incompressible data.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    m.run(|txn| {
        for i in 0..128 {
            let value: Vec<u8> = (0..512)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state.to_le_bytes()
                })
                .collect();
            txn.put(&t, &Cell::new(format!("r{i}"), "v").unwrap(), value)?;
        }
        Ok(())
    })
    .unwrap();
    const RATE: u64 = 512 << 10;
    let limit = ortelius_backup::RateLimit::new(RATE);
    let pace = |step: &str, done: u64, _total: u64| limit.pace(step, done);
    let dir = root.path().join("backup");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let manifest = ortelius_backup::backup_cancellable(
        &DirectSource::new(m).unwrap(),
        &dir,
        false,
        &cancel,
        &pace,
    )
    .unwrap();
    let bytes: u64 = manifest.files.iter().map(|f| f.1).sum();
    assert!(bytes > 400 << 10, "too little data to measure: {bytes}");
    let floor = std::time::Duration::from_secs_f64(bytes as f64 / RATE as f64);
    assert!(
        started.elapsed() >= floor.mul_f64(0.9),
        "{bytes} bytes at 512 KiB/s took only {:?}",
        started.elapsed()
    );
}

#[test]
fn a_compressed_backup_verifies_deeply_and_restores() {
    let root = tempfile::tempdir().unwrap();
    let (m, t) = manager(&root.path().join("live"));
    put(&m, &t, "before");
    let dir = root.path().join("backup");
    let cancel = std::sync::atomic::AtomicBool::new(false);
    let manifest = ortelius_backup::backup_cancellable(
        &DirectSource::new(m.clone()).unwrap(),
        &dir,
        true,
        &cancel,
        &ortelius_backup::no_progress,
    )
    .unwrap();
    assert!(manifest.compressed && manifest.files.iter().all(|f| f.0.ends_with(".zst")));
    put(&m, &t, "after");
    verify(&dir).unwrap();
    let deep = ortelius_backup::verify_deep(&dir).unwrap();
    assert!(deep.keys > 0);
    let target = root.path().join("restored");
    restore(&dir, &target, false, None).unwrap();
    let (r, rt) = manager(&target);
    assert!(present(&r, &rt, "before") && !present(&r, &rt, "after"));
}
