//! Restoring a backup (offline) into an empty store.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ortelius_kvs::snapshot::{
    finish_restore, loaded_snapshot, mark_loaded, RestoreTarget, TargetState,
};
use ortelius_kvs::Timestamp;
use ortelius_timelock::{AllocatorOptions, PersistentTimestampService, TimestampService};
use ortelius_txn::{BackupLock, BackupLockError, SystemWallClock, TransactionsTable};

use sha2::{Digest, Sha256};

use crate::error::{io, store, BackupError, Result};
use crate::manifest::{Chain, Manifest, MANIFEST, STORE_DIR};
use crate::progress::{no_progress, Progress};
use crate::verify::{needs_assembly, verify_files, Assembly};

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
    /// Bytes an interrupted run of this restore had already assembled or loaded, kept.
    pub resumed_bytes: u64,
    /// An interrupted run had loaded the whole snapshot already: only the steps after the
    /// load ran.
    pub resumed_after_load: bool,
}

/// Restores `backup_dir` into `target` (offline), with [`RestoreOptions`] defaults.
pub fn restore(backup_dir: &Path, target: &dyn RestoreTarget) -> Result<RestoreReport> {
    restore_with(backup_dir, target, &RestoreOptions::default(), &no_progress)
}

/// Restores `backup_dir` into `target` (offline): refuse a target holding data unless `force`
/// → verify the backup → assemble its files when they are not stored plain (journaled) → load
/// the raw snapshot (the target then carries the restore marker and refuses normal use) → note
/// on the marker that the load is complete → delete transactions committed at or after B (or
/// `as_of`), scanning the whole table → fast-forward the timestamp authority to F → release
/// the persisted backup lock → remove the marker.
///
/// Resuming: files already assembled by an interrupted run are kept (in a scratch directory
/// named after the backup, under the system's temporary directory, removed once loaded);
/// backends that can keep a partial load do (RocksDB: its staging directory); a target whose
/// load completed goes straight to the steps after it, which are all idempotent. An unfinished
/// restore of another backup (or as of another timestamp) is started over.
pub fn restore_with(
    backup_dir: &Path,
    target: &dyn RestoreTarget,
    options: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<RestoreReport> {
    let manifest = Chain::load(backup_dir)?.manifest().clone();
    manifest.check_key(backup_dir, options.key.as_ref())?;
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
    let snapshot_id = manifest_identity(backup_dir)?;
    // What the marker says once the load is complete: cleaning for another as-of would be
    // wrong on a store already cleaned from an earlier one, so that starts over.
    let loaded_as = format!("{snapshot_id} as of {as_of}");
    let state = target.state().map_err(store)?;
    if state == TargetState::HasData && !options.force {
        return Err(BackupError::TargetInUse {
            target: target.describe(),
        });
    }
    let resumed_after_load = state == TargetState::UnfinishedRestore && {
        let kvs = target.open_restoring().map_err(store)?;
        loaded_snapshot(&*kvs).map_err(store)?.as_deref() == Some(loaded_as.as_str())
    };
    let (bytes_loaded, resumed_bytes) = if resumed_after_load {
        tracing::info!(backup = %backup_dir.display(), target = %target.describe(), "restore: an interrupted run loaded this backup completely; finishing it");
        (0, 0)
    } else {
        load(
            backup_dir,
            &manifest,
            target,
            &snapshot_id,
            options,
            progress,
        )?
    };

    let kvs = target.open_restoring().map_err(store)?;
    if !resumed_after_load {
        mark_loaded(&*kvs, &loaded_as).map_err(store)?;
    }
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
    target.complete().map_err(store)?;
    tracing::info!(target = %target.describe(), "restore finished");
    Ok(RestoreReport {
        manifest,
        as_of,
        transactions_removed: cleaned.deleted,
        bytes_loaded,
        resumed_bytes,
        resumed_after_load,
    })
}

/// Verifies and loads the backup's raw snapshot; returns the bytes loaded and those an
/// interrupted run had already assembled or loaded.
fn load(
    backup_dir: &Path,
    manifest: &Manifest,
    target: &dyn RestoreTarget,
    snapshot_id: &str,
    options: &RestoreOptions,
    progress: Progress<'_>,
) -> Result<(u64, u64)> {
    let key = options.key.as_ref();
    let scratch = std::env::temp_dir().join(format!("ortelius-restore-{snapshot_id}"));
    let mut assembly = needs_assembly(manifest)
        .then(|| Assembly::open(&scratch))
        .transpose()?;
    verify_files(backup_dir, key, progress, &|f| {
        assembly.as_ref().is_some_and(|a| a.has(f))
    })?;
    tracing::info!(backup = %backup_dir.display(), target = %target.describe(), "restore: backup verified; loading");
    let (raw, assembled_before) = match assembly.as_mut() {
        Some(a) => a.fill(backup_dir, manifest, key, progress)?,
        None => (backup_dir.join(STORE_DIR), 0),
    };
    let bytes_loaded = AtomicU64::new(0);
    let loaded = target
        .load(&raw, snapshot_id, &|done, total| {
            bytes_loaded.store(done, Ordering::Relaxed);
            progress("loading", done, total);
        })
        .map_err(store)?;
    if assembly.take().is_some() {
        std::fs::remove_dir_all(&scratch).map_err(io("cannot remove", &scratch))?;
    }
    Ok((
        bytes_loaded.into_inner(),
        assembled_before.saturating_add(loaded.reused_bytes),
    ))
}

/// Names a backup by its manifest's content: the same id always means the same files.
fn manifest_identity(dir: &Path) -> Result<String> {
    let path = dir.join(MANIFEST);
    let bytes = std::fs::read(&path).map_err(io("cannot read", &path))?;
    let digest = Sha256::digest(&bytes);
    Ok(digest.iter().take(16).map(|b| format!("{b:02x}")).collect())
}
