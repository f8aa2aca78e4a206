//! Restoring a backup (offline) into an empty store.

use std::path::Path;
use std::sync::Arc;

use ortelius_kvs::snapshot::{finish_restore, RestoreTarget, TargetState};
use ortelius_kvs::Timestamp;
use ortelius_timelock::{AllocatorOptions, PersistentTimestampService, TimestampService};
use ortelius_txn::{BackupLock, BackupLockError, SystemWallClock, TransactionsTable};

use crate::error::{store, BackupError, Result};
use crate::manifest::Manifest;
use crate::progress::{no_progress, Progress};
use crate::verify::{raw_snapshot, scratch_dir, verify_with};

/// Choices for a restore.
#[derive(Clone, Default)]
pub struct RestoreOptions {
    /// Replace a target that holds data.
    pub force: bool,
    /// Restore the state as of this timestamp (within the backup's complete range) instead of B.
    pub as_of: Option<Timestamp>,
    /// The timestamp authority to fast-forward (a shared timelock server); `None`: the store's
    /// own persisted bound, as in embedded mode.
    pub timestamps: Option<Arc<dyn TimestampService>>,
    /// The key of an encrypted backup.
    pub key: Option<crate::crypt::BackupKey>,
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub as_of: Timestamp,
    pub transactions_removed: u64,
    /// Bytes of the raw snapshot loaded into the target.
    pub bytes_loaded: u64,
}

/// Restores `backup_dir` into `target` (offline), with [`RestoreOptions`] defaults.
pub fn restore(backup_dir: &Path, target: &dyn RestoreTarget) -> Result<RestoreReport> {
    restore_with(backup_dir, target, &RestoreOptions::default(), &no_progress)
}

/// Restores `backup_dir` into `target` (offline): verify the backup → refuse a target holding
/// data unless `force` (an unfinished restore is started over) → load the raw snapshot (the
/// target then carries the restore marker and refuses normal use) → delete transactions
/// committed at or after B (or `as_of`), scanning the whole table → fast-forward the timestamp
/// authority to F → release the persisted backup lock → remove the marker.
pub fn restore_with(
    backup_dir: &Path,
    target: &dyn RestoreTarget,
    options: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreReport> {
    let manifest = verify_with(backup_dir, options.key.as_ref(), progress)?;
    if manifest.store_kind != target.store_kind() {
        return Err(BackupError::WrongStoreKind {
            dir: backup_dir.to_path_buf(),
            backup_kind: manifest.store_kind.clone(),
            target_kind: target.store_kind().to_owned(),
        });
    }
    let as_of = options.as_of.unwrap_or(manifest.backup_ts);
    if as_of < manifest.oldest_complete_ts || as_of > manifest.backup_ts {
        return Err(BackupError::AsOfOutOfRange {
            as_of,
            oldest: manifest.oldest_complete_ts,
            backup_ts: manifest.backup_ts,
        });
    }
    if target.state().map_err(store)? == TargetState::HasData && !options.force {
        return Err(BackupError::TargetInUse {
            target: target.describe(),
        });
    }
    tracing::info!(backup = %backup_dir.display(), target = %target.describe(), as_of, "restore: backup verified; loading");
    let scratch = scratch_dir()?;
    let raw = raw_snapshot(
        backup_dir,
        &manifest,
        options.key.as_ref(),
        scratch.path(),
        progress,
    )?;
    let bytes_loaded = std::sync::atomic::AtomicU64::new(0);
    target
        .load(&raw, &|done, total| {
            bytes_loaded.store(done, std::sync::atomic::Ordering::Relaxed);
            progress("loading", done, total);
        })
        .map_err(store)?;
    drop(scratch);

    let kvs = target.open_restoring().map_err(store)?;
    let cleaned = TransactionsTable::new(kvs.clone(), 1024)
        .and_then(|t| t.clean_from(as_of, |_| {}))
        .map_err(store)?;
    tracing::info!(
        deleted = cleaned.deleted,
        scanned = cleaned.scanned,
        as_of,
        "restore: removed transactions committed at or after the backup timestamp"
    );
    match &options.timestamps {
        Some(timestamps) => timestamps.fast_forward(manifest.fast_forward_ts),
        None => {
            // The restored store still carries the allocator lease of the process it was
            // copied from; nothing else uses it now, so take the lease over at once.
            let own = AllocatorOptions {
                take_over: true,
                ..AllocatorOptions::for_store(&*kvs)
            };
            PersistentTimestampService::with_options(kvs.clone(), own)
                .and_then(|t| t.fast_forward(manifest.fast_forward_ts))
        }
    }
    .map_err(store)?;
    tracing::info!(
        past = manifest.fast_forward_ts,
        "restore: timestamps fast-forwarded"
    );
    match BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).and_then(|l| l.release()) {
        Ok(_) | Err(BackupLockError::NotHeld) => {}
        Err(e) => return Err(store(e)),
    }
    finish_restore(&*kvs).map_err(store)?;
    tracing::info!(target = %target.describe(), "restore finished");
    Ok(RestoreReport {
        manifest,
        as_of,
        transactions_removed: cleaned.deleted,
        bytes_loaded: bytes_loaded.into_inner(),
    })
}
