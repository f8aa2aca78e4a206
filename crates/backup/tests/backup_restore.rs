//! One-shot backup and restore through the backends registry: round trip, damaged backups,
//! occupied targets, crashed restores, as-of, cancellation, compression, progress, rate limits.
//! The scenario functions take an [`Env`] so every backend runs the same ones (`mod rocksdb`
//! below; networked backends run them from their own crates' tests).
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ortelius_backends::StoreConfig;
use ortelius_backup::{
    backup, backup_cancellable, restore_with, verify, verify_deep, BackupError, BackupOptions,
    Compression, DirectOwner, OwnerError, RestoreOptions, SnapshotTaken, StoreOwner, SweepSummary,
    MANIFEST, STARTED_MARKER,
};
use ortelius_kvs::{Cell, KvsError, TableRef, Timestamp};
use ortelius_txn::{
    BackupLock, BackupLockHolder, BackupLockStatus, SystemWallClock, TableMetadata,
    TransactionConfig, TransactionManager,
};

/// Where a backend's stores live for one test.
trait Env {
    /// A distinct (initially empty) store per name.
    fn config(&self, name: &str) -> StoreConfig;
    /// A local directory for backups.
    fn root(&self) -> &Path;
}

fn manager(env: &dyn Env, name: &str) -> (TransactionManager, DirectOwner, TableRef) {
    let config = env.config(name);
    let backend = ortelius_backends::open(&config).unwrap();
    let m = TransactionManager::embedded(backend.kvs, TransactionConfig::default()).unwrap();
    let t = TableRef::new("app", "t").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    let owner = DirectOwner::new(m.clone(), backend.snapshots, config.describe()).unwrap();
    (m, owner, t)
}

fn put(m: &TransactionManager, t: &TableRef, row: &str) -> Timestamp {
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

fn restore_into(
    env: &dyn Env,
    dir: &Path,
    name: &str,
    options: &RestoreOptions,
) -> Result<ortelius_backup::RestoreReport, BackupError> {
    let target = ortelius_backends::restore_target(&env.config(name)).unwrap();
    restore_with(dir, &*target, options, &ortelius_backup::no_progress)
}

fn lock_held(m: &TransactionManager) -> Option<BackupLockHolder> {
    BackupLock::new(m.kvs().clone(), Arc::new(SystemWallClock))
        .unwrap()
        .status()
        .unwrap()
        .held
}

/// A store with "before" committed, a backup, then "after" committed.
fn backed_up(env: &dyn Env) -> std::path::PathBuf {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "before");
    let dir = env.root().join("backup");
    let manifest = backup(&owner, &dir).unwrap();
    assert!(manifest.backup_ts < manifest.fast_forward_ts && !manifest.files.is_empty());
    assert_eq!(manifest.store_kind, env.config("live").kind());
    put(&m, &t, "after");
    dir
}

fn a_backup_restores_from_scratch_to_exactly_the_state_at_b(env: &dyn Env) {
    let dir = backed_up(env);
    assert!(dir.join(STARTED_MARKER).exists() && dir.join(MANIFEST).exists());
    let report = restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap();
    assert!(report.bytes_loaded > 0);
    let (m, _, t) = manager(env, "restored");
    assert!(present(&m, &t, "before") && !present(&m, &t, "after"));
    assert!(m.fresh_timestamp().unwrap() > report.manifest.fast_forward_ts);
    assert_eq!(lock_held(&m), None, "the persisted lock was released");
}

fn damaged_backups_fail_verification_and_are_not_restored(env: &dyn Env) {
    let dir = backed_up(env);
    let manifest = verify(&dir).unwrap();
    let largest = manifest
        .files
        .iter()
        .max_by_key(|f| f.size)
        .unwrap()
        .path
        .clone();
    let victim = dir.join("store").join(&largest);
    let original = std::fs::read(&victim).unwrap();
    let mut flipped = original.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x01;
    std::fs::write(&victim, &flipped).unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Corrupt { .. })));
    assert!(matches!(
        restore_into(env, &dir, "r1", &RestoreOptions::default()),
        Err(BackupError::Corrupt { .. })
    ));
    let target = ortelius_backends::restore_target(&env.config("r1")).unwrap();
    assert_eq!(
        target.state().unwrap(),
        ortelius_kvs::snapshot::TargetState::Empty,
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
    std::fs::write(
        dir.join(MANIFEST),
        text.replace("\"fast_forward_ts\"", "\"fast_forward\""),
    )
    .unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Corrupt { .. })));
    std::fs::remove_file(dir.join(MANIFEST)).unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    assert!(matches!(
        verify(env.root()),
        Err(BackupError::NotABackup(_))
    ));
}

fn occupied_targets_and_backup_directories_are_refused_unless_forced(env: &dyn Env) {
    let dir = backed_up(env);
    let (other, other_owner, _) = manager(env, "other");
    assert!(matches!(
        backup(&other_owner, &dir),
        Err(BackupError::NotEmpty { .. })
    ));
    drop((other, other_owner));
    let (m, _, t) = manager(env, "occupied");
    put(&m, &t, "precious");
    drop(m);
    let err = restore_into(env, &dir, "occupied", &RestoreOptions::default()).unwrap_err();
    assert!(
        matches!(&err, BackupError::TargetInUse { .. }) && err.to_string().contains("--force"),
        "{err}"
    );
    let (m, _, t) = manager(env, "occupied");
    assert!(present(&m, &t, "precious"), "nothing touched");
    drop(m);
    let forced = RestoreOptions {
        force: true,
        ..RestoreOptions::default()
    };
    restore_into(env, &dir, "occupied", &forced).unwrap();
    let (m, _, t) = manager(env, "occupied");
    assert!(present(&m, &t, "before") && !present(&m, &t, "precious"));
}

fn a_store_whose_restore_did_not_finish_refuses_to_open_and_a_rerun_finishes_it(env: &dyn Env) {
    let dir = backed_up(env);
    // What a restore killed after loading leaves: a complete store carrying the marker.
    {
        let backend = ortelius_backends::open(&env.config("restored")).unwrap();
        ortelius_kvs::snapshot::mark_restore_in_progress(&*backend.kvs, "test").unwrap();
    }
    match ortelius_backends::open(&env.config("restored")) {
        Err(err @ KvsError::UnfinishedRestore { .. }) => {
            assert!(err.to_string().contains("run the restore again"), "{err}")
        }
        Err(other) => panic!("expected UnfinishedRestore, got {other}"),
        Ok(_) => panic!("opened a half-restored store"),
    }
    restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap();
    let (m, _, t) = manager(env, "restored");
    assert!(present(&m, &t, "before"));
}

fn restoring_as_of_an_earlier_timestamp_shows_exactly_the_commits_before_it(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "first");
    let as_of = m.fresh_timestamp().unwrap();
    put(&m, &t, "second");
    let dir = env.root().join("backup");
    let manifest = backup(&owner, &dir).unwrap();
    let at = |ts| RestoreOptions {
        as_of: Some(ts),
        ..RestoreOptions::default()
    };
    restore_into(env, &dir, "restored", &at(as_of)).unwrap();
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "first") && !present(&r, &rt, "second"));
    let err = restore_into(env, &dir, "r2", &at(manifest.backup_ts + 1)).unwrap_err();
    assert!(matches!(err, BackupError::AsOfOutOfRange { .. }), "{err}");
}

fn a_backup_that_crashed_midway_is_recognised_and_a_rerun_succeeds(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    let dir = env.root().join("backup");
    // What a backup killed after its snapshot leaves: the marker and files, no manifest.
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(dir.join(STARTED_MARKER), b"started\n").unwrap();
    std::fs::write(dir.join("store").join("leftover-from-the-crash"), b"half").unwrap();
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    assert!(matches!(
        restore_into(env, &dir, "r", &RestoreOptions::default()),
        Err(BackupError::Incomplete(_))
    ));
    backup(&owner, &dir).unwrap();
    verify(&dir).unwrap();
    assert!(
        !dir.join("store").join("leftover-from-the-crash").exists(),
        "the leftovers were cleared"
    );
    assert_eq!(lock_held(&m), None, "the re-run released its lock");
}

/// Sets the cancel flag while the snapshot runs (as Ctrl-C would).
struct CancelDuringSnapshot<'a> {
    inner: DirectOwner,
    cancel: &'a AtomicBool,
}

impl StoreOwner for CancelDuringSnapshot<'_> {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn fresh_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.inner.fresh_timestamp()
    }
    fn immutable_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.inner.immutable_timestamp()
    }
    fn sweep_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.inner.sweep_timestamp()
    }
    fn acquire_backup_lock(
        &self,
        holder: &str,
        reason: &str,
        lease: Option<Duration>,
    ) -> Result<BackupLockHolder, OwnerError> {
        self.inner.acquire_backup_lock(holder, reason, lease)
    }
    fn release_backup_lock(&self, holder: Option<&str>) -> Result<BackupLockHolder, OwnerError> {
        self.inner.release_backup_lock(holder)
    }
    fn backup_lock_status(&self) -> Result<BackupLockStatus, OwnerError> {
        self.inner.backup_lock_status()
    }
    fn snapshot(&self, dir: &Path, node: Option<usize>) -> Result<SnapshotTaken, OwnerError> {
        self.cancel.store(true, Ordering::SeqCst);
        self.inner.snapshot(dir, node)
    }
    fn sweep(&self, table: Option<&str>, dry_run: bool) -> Result<Vec<SweepSummary>, OwnerError> {
        self.inner.sweep(table, dry_run)
    }
    fn tables(&self) -> Result<Vec<ortelius_backup::TableInfo>, OwnerError> {
        self.inner.tables()
    }
    fn scan(
        &self,
        request: &ortelius_backup::ScanRequest,
    ) -> Result<ortelius_backup::ScanAnswer, OwnerError> {
        self.inner.scan(request)
    }
    fn metrics(&self) -> Result<String, OwnerError> {
        self.inner.metrics()
    }
}

fn a_cancelled_backup_releases_the_lock_and_leaves_an_incomplete_backup(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    let dir = env.root().join("backup");
    let cancel = AtomicBool::new(false);
    let cancelling = CancelDuringSnapshot {
        inner: owner.clone(),
        cancel: &cancel,
    };
    let err = backup_cancellable(
        &cancelling,
        &dir,
        BackupOptions::default(),
        &cancel,
        &ortelius_backup::no_progress,
    )
    .unwrap_err();
    assert!(matches!(err, BackupError::Cancelled), "{err}");
    assert_eq!(lock_held(&m), None, "released at once, not after the lease");
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    backup(&owner, &dir).unwrap();
}

fn deep_verification_reads_everything_without_changing_the_backup(env: &dyn Env) {
    let dir = backed_up(env);
    let report = verify_deep(&dir).unwrap();
    assert!(report.entries > 0 && report.transactions.unwrap_or(1) >= 1);
    verify(&dir).unwrap(); // every checksum still matches: the deep check wrote nothing
}

fn deep_verification_catches_a_commit_record_after_f(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    // A record no real backup can contain: committed long after any F this backup will get.
    m.transactions_table()
        .put_unless_exists(5, ortelius_txn::TxnStatus::Committed(i64::MAX - 2))
        .unwrap();
    let dir = env.root().join("backup");
    backup(&owner, &dir).unwrap();
    verify(&dir).unwrap(); // the files are intact...
    let err = verify_deep(&dir).unwrap_err();
    assert!(
        matches!(&err, BackupError::Corrupt { detail, .. } if detail.contains("not before F")),
        "{err}"
    );
}

fn long_steps_report_progress_up_to_their_total(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    let seen = std::sync::Mutex::new(Vec::new());
    let record = |step: &str, done: u64, total: u64| {
        seen.lock().unwrap().push((step.to_owned(), done, total))
    };
    let dir = env.root().join("backup");
    let cancel = AtomicBool::new(false);
    backup_cancellable(&owner, &dir, BackupOptions::default(), &cancel, &record).unwrap();
    let target = ortelius_backends::restore_target(&env.config("restored")).unwrap();
    restore_with(&dir, &*target, &RestoreOptions::default(), &record).unwrap();
    let seen = seen.into_inner().unwrap();
    for step in ["storing", "verifying", "loading"] {
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

fn a_rate_limit_slows_the_checksum_pass_to_the_given_rate(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    // About 512 KiB of incompressible data.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    m.run(|txn| {
        for i in 0..128 {
            let value = ortelius_kvs::testing::noise(&mut state, 512);
            txn.put(&t, &Cell::new(format!("r{i}"), "v").unwrap(), value)?;
        }
        Ok(())
    })
    .unwrap();
    const RATE: u64 = 512 << 10;
    let limit = ortelius_backup::RateLimit::new(RATE);
    let pace = |step: &str, done: u64, _total: u64| limit.pace(step, done);
    let dir = env.root().join("backup");
    let cancel = AtomicBool::new(false);
    let started = std::time::Instant::now();
    let manifest = backup_cancellable(&owner, &dir, BackupOptions::default(), &cancel, &pace)
        .unwrap()
        .manifest;
    let bytes = manifest.total_size();
    assert!(bytes > 400 << 10, "too little data to measure: {bytes}");
    let floor = Duration::from_secs_f64(bytes as f64 / RATE as f64);
    assert!(
        started.elapsed() >= floor.mul_f64(0.9),
        "{bytes} bytes at 512 KiB/s took only {:?}",
        started.elapsed()
    );
}

fn a_compressed_backup_verifies_deeply_and_restores(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "before");
    let dir = env.root().join("backup");
    let cancel = AtomicBool::new(false);
    let manifest = backup_cancellable(
        &owner,
        &dir,
        BackupOptions {
            compress: true,
            ..BackupOptions::default()
        },
        &cancel,
        &ortelius_backup::no_progress,
    )
    .unwrap()
    .manifest;
    assert!(
        manifest.compression == Compression::Zstd
            && manifest.files.iter().all(|f| f.path.ends_with(".zst"))
    );
    put(&m, &t, "after");
    verify(&dir).unwrap();
    assert!(verify_deep(&dir).unwrap().entries > 0);
    restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap();
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "before") && !present(&r, &rt, "after"));
}

fn an_incremental_backup_shares_unchanged_files_and_restores_through_its_chain(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "first");
    let full = env.root().join("full");
    let cancel = AtomicBool::new(false);
    let take = |dir: &Path, options: BackupOptions| {
        backup_cancellable(&owner, dir, options, &cancel, &ortelius_backup::no_progress)
    };
    take(&full, BackupOptions::default()).unwrap();
    put(&m, &t, "second");
    let incremental = env.root().join("incremental");
    let manifest = take(
        &incremental,
        BackupOptions {
            incremental_from: Some(full.clone()),
            ..BackupOptions::default()
        },
    )
    .unwrap()
    .manifest;
    assert_eq!(manifest.parent.as_ref().unwrap().dir, "../full");
    if env.config("x").kind() == "rocksdb" {
        // The first checkpoint's SST file is immutable and still live: stored once.
        assert!(
            manifest.files.iter().any(|f| f.in_parent)
                && manifest.stored_size() < manifest.total_size(),
            "{manifest:?}"
        );
    }
    put(&m, &t, "third");
    let third = env.root().join("third");
    take(
        &third,
        BackupOptions {
            incremental_from: Some(incremental.clone()),
            ..BackupOptions::default()
        },
    )
    .unwrap();
    assert!(verify_deep(&third).unwrap().entries > 0);
    restore_into(env, &incremental, "restored", &RestoreOptions::default()).unwrap();
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "first") && present(&r, &rt, "second"));
    assert!(!present(&r, &rt, "third"));
    // Without its grandparent the third backup is refused by name, and nothing restored.
    std::fs::rename(&full, env.root().join("moved")).unwrap();
    let err = verify(&third).unwrap_err();
    assert!(err.to_string().contains("it is incremental on"), "{err}");
    assert!(restore_into(env, &third, "restored2", &RestoreOptions::default()).is_err());
}

fn a_backup_restores_only_into_a_store_of_its_kind(env: &dyn Env) {
    let dir = backed_up(env);
    let mut text = std::fs::read_to_string(dir.join(MANIFEST)).unwrap();
    let kind = env.config("x").kind();
    text = text.replace(
        &format!("\"store_kind\": \"{kind}\""),
        "\"store_kind\": \"othersort\"",
    );
    std::fs::write(dir.join(MANIFEST), text).unwrap();
    let err = restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap_err();
    assert!(matches!(err, BackupError::WrongStoreKind { .. }), "{err}");
    let err = verify_deep(&dir).unwrap_err();
    assert!(matches!(err, BackupError::UnknownStoreKind { .. }), "{err}");
}

/// Some data in several transactions (a snapshot is then several files: the engine's data and
/// its metadata).
fn several_files(m: &TransactionManager, t: &TableRef) {
    for batch in 0..4 {
        m.run(|txn| {
            for i in 0..50 {
                let value = format!("{batch}-{i}-").repeat(200).into_bytes();
                txn.put(t, &Cell::new(format!("b{batch}r{i}"), "v").unwrap(), value)?;
            }
            Ok(())
        })
        .unwrap();
    }
}

fn options_with(key: &Path) -> BackupOptions {
    BackupOptions {
        compress: true,
        encrypt: Some(ortelius_backup::BackupKey::from_file(key).unwrap()),
        ..BackupOptions::default()
    }
}

fn an_interrupted_backup_resumes_from_its_snapshot_and_stores_only_the_rest(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    several_files(&m, &t);
    let key = env.root().join("key");
    std::fs::write(&key, [9u8; 32]).unwrap();
    let dir = env.root().join("backup");
    // Interrupted (as by Ctrl-C) once some bytes are stored.
    let cancel = AtomicBool::new(false);
    let stop_after_one = |_: &str, done: u64, _: u64| {
        if done > 0 {
            cancel.store(true, Ordering::SeqCst)
        }
    };
    let err =
        backup_cancellable(&owner, &dir, options_with(&key), &cancel, &stop_after_one).unwrap_err();
    assert!(matches!(err, BackupError::Cancelled), "{err}");
    assert_eq!(lock_held(&m), None);
    assert!(matches!(verify(&dir), Err(BackupError::Incomplete(_))));
    let record: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(ortelius_backup::SNAPSHOT_RECORD)).unwrap())
            .unwrap();
    put(&m, &t, "after the snapshot");
    // Other options would mix two ways of storing the files: refused, nothing changed.
    let err = backup_cancellable(
        &owner,
        &dir,
        BackupOptions::default(),
        &AtomicBool::new(false),
        &ortelius_backup::no_progress,
    )
    .unwrap_err();
    assert!(err.to_string().contains("same options"), "{err}");
    assert!(dir.join(ortelius_backup::SNAPSHOT_RECORD).exists());
    let report = backup_cancellable(
        &owner,
        &dir,
        options_with(&key),
        &AtomicBool::new(false),
        &ortelius_backup::no_progress,
    )
    .unwrap();
    let stored = report.manifest.total_size();
    assert!(
        report.resumed_bytes > 0 && report.manifest.files.len() > 1,
        "{report:?}"
    );
    assert_eq!(
        Some(report.manifest.backup_ts),
        record["backup_ts"].as_i64(),
        "the resumed backup is the snapshot the first run took: {stored} bytes"
    );
    assert!(!dir.join(ortelius_backup::SNAPSHOT_RECORD).exists());
    assert!(!dir.join(ortelius_backup::STORE_JOURNAL).exists());
    let options = RestoreOptions {
        key: Some(ortelius_backup::BackupKey::from_file(&key).unwrap()),
        ..RestoreOptions::default()
    };
    ortelius_backup::verify_deep_with(&dir, options.key.as_ref()).unwrap();
    restore_into(env, &dir, "restored", &options).unwrap();
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "b3r49") && !present(&r, &rt, "after the snapshot"));
}

fn a_backup_interrupted_before_its_snapshot_was_complete_takes_a_new_one(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    let dir = env.root().join("backup");
    // A run killed while its snapshot was being taken: the lock still held under its name.
    std::fs::create_dir_all(dir.join("store")).unwrap();
    std::fs::write(
        dir.join(STARTED_MARKER),
        br#"{"note": "started", "lock_holder": "ortelius backup (pid 4000001)"}"#,
    )
    .unwrap();
    std::fs::write(dir.join("store").join("half-copied.sst"), b"half").unwrap();
    let lock = BackupLock::new(m.kvs().clone(), Arc::new(SystemWallClock)).unwrap();
    lock.acquire(
        "ortelius backup (pid 4000001)",
        "ortelius backup",
        Some(Duration::from_secs(3600)),
        Duration::from_secs(1),
    )
    .unwrap();
    let report = backup_cancellable(
        &owner,
        &dir,
        BackupOptions::default(),
        &AtomicBool::new(false),
        &ortelius_backup::no_progress,
    )
    .unwrap();
    assert_eq!(report.resumed_bytes, 0);
    assert!(!dir.join("store").join("half-copied.sst").exists());
    assert!(report
        .manifest
        .files
        .iter()
        .all(|f| f.path != "half-copied.sst"));
    assert_eq!(
        lock_held(&m),
        None,
        "the interrupted run's lock was taken over"
    );
    verify(&dir).unwrap();
    // A lock someone else holds is never taken over.
    let other = env.root().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(
        other.join(STARTED_MARKER),
        br#"{"note": "started", "lock_holder": "ortelius backup (pid 4000002)"}"#,
    )
    .unwrap();
    lock.acquire("an operator", "manual backup", None, Duration::from_secs(1))
        .unwrap();
    assert!(backup(&owner, &other).is_err());
    assert_eq!(lock_held(&m).unwrap().holder, "an operator");
}

fn a_second_backup_into_a_directory_being_written_is_refused(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    put(&m, &t, "row");
    let dir = env.root().join("backup");
    std::fs::create_dir_all(&dir).unwrap();
    // The first backup holds its directory's lock for as long as it runs.
    let first = std::fs::File::create(dir.join(STARTED_MARKER)).unwrap();
    first.lock().unwrap();
    let err = backup(&owner, &dir).unwrap_err();
    assert!(matches!(err, BackupError::Busy { .. }), "{err}");
    assert!(
        dir.join(STARTED_MARKER).exists(),
        "nothing of the first backup removed"
    );
    drop(first);
    backup(&owner, &dir).unwrap();
}

fn an_interrupted_restore_keeps_what_it_assembled_and_loaded(env: &dyn Env) {
    let (m, owner, t) = manager(env, "live");
    several_files(&m, &t);
    let dir = env.root().join("backup");
    let cancel = AtomicBool::new(false);
    let compressed = BackupOptions {
        compress: true,
        ..BackupOptions::default()
    };
    backup_cancellable(
        &owner,
        &dir,
        compressed,
        &cancel,
        &ortelius_backup::no_progress,
    )
    .unwrap();
    // Two interruptions (a panic stands in for a kill: nothing is cleaned up): in the middle
    // of assembling, then in the middle of loading.
    for step in ["assembling", "loading"] {
        let calls = std::sync::atomic::AtomicU32::new(0);
        let die = |s: &str, _: u64, _: u64| {
            if s == step && calls.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("interrupted while {step}");
            }
        };
        let target = ortelius_backends::restore_target(&env.config("restored")).unwrap();
        let died = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            restore_with(&dir, &*target, &RestoreOptions::default(), &die)
        }));
        assert!(died.is_err(), "the restore was interrupted while {step}");
    }
    let report = restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap();
    assert!(report.resumed_bytes > 0, "{report:?}");
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "b3r49"));
}

/// A timestamp authority that is down: the restore fails after its load.
struct Unreachable;

impl ortelius_timelock::TimestampService for Unreachable {
    fn fresh_timestamps(
        &self,
        _: u32,
    ) -> Result<ortelius_timelock::TimestampRange, ortelius_timelock::TimestampError> {
        Err(ortelius_timelock::TimestampError::InvalidRequest(
            "down".into(),
        ))
    }
    fn fast_forward(
        &self,
        _: Timestamp,
    ) -> Result<ortelius_timelock::FastForward, ortelius_timelock::TimestampError> {
        Err(ortelius_timelock::TimestampError::InvalidRequest(
            "down".into(),
        ))
    }
}

fn a_restore_interrupted_after_its_load_finishes_without_loading_again(env: &dyn Env) {
    let dir = backed_up(env);
    let failing = RestoreOptions {
        timestamps: Some(Arc::new(Unreachable)),
        ..RestoreOptions::default()
    };
    assert!(restore_into(env, &dir, "restored", &failing).is_err());
    let target = ortelius_backends::restore_target(&env.config("restored")).unwrap();
    assert_eq!(
        target.state().unwrap(),
        ortelius_kvs::snapshot::TargetState::UnfinishedRestore
    );
    // As of another timestamp the load is redone (the first run cleaned from B already).
    let report = restore_into(env, &dir, "restored", &RestoreOptions::default()).unwrap();
    assert!(
        report.resumed_after_load && report.bytes_loaded == 0,
        "{report:?}"
    );
    let (r, _, rt) = manager(env, "restored");
    assert!(present(&r, &rt, "before") && !present(&r, &rt, "after"));
    assert!(r.fresh_timestamp().unwrap() > report.manifest.fast_forward_ts);
}

macro_rules! backup_scenarios {
    ($env:expr) => {
        backup_scenarios!(@each $env;
            a_backup_restores_from_scratch_to_exactly_the_state_at_b,
            damaged_backups_fail_verification_and_are_not_restored,
            occupied_targets_and_backup_directories_are_refused_unless_forced,
            a_store_whose_restore_did_not_finish_refuses_to_open_and_a_rerun_finishes_it,
            restoring_as_of_an_earlier_timestamp_shows_exactly_the_commits_before_it,
            a_backup_that_crashed_midway_is_recognised_and_a_rerun_succeeds,
            a_cancelled_backup_releases_the_lock_and_leaves_an_incomplete_backup,
            deep_verification_reads_everything_without_changing_the_backup,
            deep_verification_catches_a_commit_record_after_f,
            long_steps_report_progress_up_to_their_total,
            a_rate_limit_slows_the_checksum_pass_to_the_given_rate,
            a_compressed_backup_verifies_deeply_and_restores,
            an_incremental_backup_shares_unchanged_files_and_restores_through_its_chain,
            a_backup_restores_only_into_a_store_of_its_kind,
            an_interrupted_backup_resumes_from_its_snapshot_and_stores_only_the_rest,
            a_backup_interrupted_before_its_snapshot_was_complete_takes_a_new_one,
            a_second_backup_into_a_directory_being_written_is_refused,
            an_interrupted_restore_keeps_what_it_assembled_and_loaded,
            a_restore_interrupted_after_its_load_finishes_without_loading_again,
        );
    };
    (@each $env:expr; $($name:ident),* $(,)?) => {
        $( #[test] fn $name() { let env = $env; super::$name(&env); } )*
    };
}

mod rocksdb {
    use super::*;

    pub struct RocksEnv(tempfile::TempDir);

    impl Env for RocksEnv {
        fn config(&self, name: &str) -> StoreConfig {
            StoreConfig::Rocksdb {
                data_dir: self.0.path().join(name),
            }
        }
        fn root(&self) -> &Path {
            self.0.path()
        }
    }

    fn env() -> RocksEnv {
        RocksEnv(tempfile::tempdir().unwrap())
    }

    backup_scenarios!(env());

    #[test]
    fn a_restore_that_links_files_shares_nothing_mutable_with_the_backup() {
        let env = env();
        let dir = backed_up(&env);
        restore_into(&env, &dir, "restored", &RestoreOptions::default()).unwrap();
        let linked = std::fs::read_dir(env.root().join("restored"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
            .any(|e| {
                use std::os::unix::fs::MetadataExt;
                e.metadata().unwrap().nlink() > 1
            });
        assert!(linked, "same filesystem: SSTs are hard-linked");
        {
            let kvs = Arc::new(
                ortelius_kvs_rocksdb::RocksDbKvs::open(
                    env.root().join("restored"),
                    &Default::default(),
                )
                .unwrap(),
            );
            let m =
                TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
            let t = TableRef::new("app", "t").unwrap();
            for i in 0..200 {
                put(&m, &t, &format!("new{i}"));
            }
            kvs.compact(); // rewrites and unlinks the restored store's files
        }
        verify(&dir).unwrap(); // the backup is untouched
        std::fs::remove_dir_all(&dir).unwrap();
        let (m, _, t) = manager(&env, "restored"); // and the restored store does not depend on it
        assert!(present(&m, &t, "before") && present(&m, &t, "new199"));
    }
}
