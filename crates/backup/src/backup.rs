//! Taking a backup: the live runbook in one step.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::crypt::{encrypt_in_place, BackupKey};
use crate::error::{io, BackupError, Result};
use crate::files::{
    compress_in_place, is_empty_dir, list_files, sha256_file, total_size, write_synced,
};
use crate::manifest::{
    Chain, Compression, Encryption, FileEntry, Manifest, Parent, FORMAT_VERSION, MANIFEST,
    STARTED_MARKER, STORE_DIR,
};
use crate::owner::StoreOwner;
use crate::progress::{no_progress, Progress};

/// How long a backup's lock lasts if the backup process dies before releasing it.
pub const BACKUP_LOCK_LEASE: Duration = Duration::from_secs(3600);

/// Choices for a backup.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackupOptions {
    /// Store every file zstd-compressed.
    pub compress: bool,
    /// Incremental on this earlier backup: files identical to one of its files (path, size,
    /// checksum) are not stored again. It must hold the same store kind and compression.
    pub incremental_from: Option<PathBuf>,
    /// Encrypt every stored file (after compressing it) with this key.
    pub encrypt: Option<BackupKey>,
}

/// The earlier backup an incremental one builds on, checked before anything is taken.
fn parent_of(dir: &Path, options: &BackupOptions) -> Result<Option<(Parent, Manifest)>> {
    let Some(from) = &options.incremental_from else {
        return Ok(None);
    };
    let manifest = Chain::load(from)?.manifest().clone();
    let wanted = if options.compress {
        Compression::Zstd
    } else {
        Compression::None
    };
    let fingerprint = |k: &BackupKey| k.fingerprint().to_owned();
    if manifest
        .encryption
        .as_ref()
        .map(|e| e.key_fingerprint.clone())
        != options.encrypt.as_ref().map(fingerprint)
    {
        return Err(BackupError::Store(format!(
            "{} is {}; an incremental backup on it must be encrypted with the same key",
            from.display(),
            manifest
                .encryption
                .as_ref()
                .map_or("not encrypted".to_owned(), |e| format!(
                    "encrypted with the key of fingerprint {}",
                    e.key_fingerprint
                ))
        )));
    }
    if manifest.compression != wanted {
        return Err(BackupError::Store(format!(
            "{} is stored with compression {:?}; an incremental backup on it must use the same (--compress {})",
            from.display(),
            manifest.compression,
            if manifest.compression == Compression::Zstd { "on" } else { "off" }
        )));
    }
    Ok(Some((
        Parent {
            dir: relative_to(dir, from)?,
            backup_ts: manifest.backup_ts,
        },
        manifest,
    )))
}

/// `target` as seen from `dir`: `../name` when both are in the same directory (so a set of
/// backups can be moved together), else absolute.
fn relative_to(dir: &Path, target: &Path) -> Result<String> {
    let absolute = |p: &Path| std::path::absolute(p).map_err(io("cannot resolve", p));
    let (dir, target) = (absolute(dir)?, absolute(target)?);
    let normal = |p: &Path| {
        p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::RootDir))
    };
    match (dir.parent(), target.parent(), target.file_name()) {
        (Some(a), Some(b), Some(name)) if a == b && normal(&dir) && normal(&target) => {
            Ok(Path::new("..").join(name).to_string_lossy().into_owned())
        }
        _ => Ok(target.to_string_lossy().into_owned()),
    }
}

/// Takes a live, consistent backup into `dir` (new, empty, or holding an incomplete backup,
/// which is started over).
pub fn backup(owner: &dyn StoreOwner, dir: &Path) -> Result<Manifest> {
    backup_cancellable(
        owner,
        dir,
        BackupOptions::default(),
        &AtomicBool::new(false),
        &no_progress,
    )
}

/// [`backup`], stopping at the next step once `cancel` is set (Ctrl-C): the lock is released
/// and no manifest is written, so the directory is an incomplete backup that a re-run restarts.
///
/// Steps: write `BACKUP-STARTED` → acquire the backup lock (with a lease, so a killed backup
/// cannot stop sweep for good; released on every error path) → note the sweep timestamp (the
/// oldest timestamp whose versions the backup holds completely) → fetch B → raw snapshot into
/// `store/` → fetch F → release → compress (optional) and checksum every file → write the
/// manifest, last.
pub fn backup_cancellable(
    owner: &dyn StoreOwner,
    dir: &Path,
    options: BackupOptions,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<Manifest> {
    let check = || {
        if cancel.load(Ordering::SeqCst) {
            Err(BackupError::Cancelled)
        } else {
            Ok(())
        }
    };
    if !is_empty_dir(dir)? {
        let incomplete = dir.join(STARTED_MARKER).exists() && !dir.join(MANIFEST).exists();
        if !incomplete {
            return Err(BackupError::NotEmpty {
                path: dir.to_path_buf(),
                hint: "",
            });
        }
        // A backup that crashed midway: start it over.
        std::fs::remove_dir_all(dir).map_err(io("cannot clear the incomplete backup", dir))?;
    }
    let parent = parent_of(dir, &options)?;
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    write_synced(
        &dir.join(STARTED_MARKER),
        b"a backup was started here; it is complete once manifest.json exists\n",
    )?;
    let holder = format!("ortelius backup (pid {})", std::process::id());
    owner.acquire_backup_lock(&holder, "ortelius backup", Some(BACKUP_LOCK_LEASE))?;
    let store = dir.join(STORE_DIR);
    let taken = (|| -> Result<_> {
        check()?;
        let oldest = owner.sweep_timestamp()?;
        let backup_ts = owner.fresh_timestamp()?;
        check()?;
        let snapshot = owner.snapshot(&store, None)?;
        check()?;
        let fast_forward_ts = owner.fresh_timestamp()?;
        Ok((oldest, backup_ts, snapshot, fast_forward_ts))
    })();
    let released = owner.release_backup_lock();
    let (oldest_complete_ts, backup_ts, snapshot, fast_forward_ts) = taken?;
    released?;
    tracing::info!(
        dir = %dir.display(),
        backup_ts,
        fast_forward_ts,
        oldest_complete_ts,
        store_kind = %snapshot.store_kind,
        "backup: snapshot taken under the backup lock; lock released"
    );

    let mut paths = list_files(&store)?;
    // Each file is replaced in place by its transformed form (`<name>.zst`, `<name>.enc`).
    let mut rewrite = |step: &str, transform: &dyn Fn(&Path) -> Result<PathBuf>| -> Result<()> {
        let total = total_size(&store, &paths);
        let mut done = 0;
        for rel in &mut paths {
            check()?;
            done += std::fs::metadata(store.join(&*rel)).map_or(0, |m| m.len());
            *rel = transform(rel)?;
            progress(step, done, total);
        }
        Ok(())
    };
    let compression = if options.compress {
        rewrite("compressing", &|rel| compress_in_place(&store, rel))?;
        Compression::Zstd
    } else {
        Compression::None
    };
    if let Some(key) = &options.encrypt {
        rewrite("encrypting", &|rel| encrypt_in_place(&store, rel, key))?;
    }
    let total = total_size(&store, &paths);
    let mut done = 0u64;
    let mut files = Vec::with_capacity(paths.len());
    for rel in paths {
        check()?;
        let (size, sha256) = sha256_file(&store.join(&rel), &mut |n| {
            done += n;
            progress("checksumming", done, total);
        })?;
        let path = rel.to_string_lossy().into_owned();
        let in_parent = parent.as_ref().is_some_and(|(_, p)| {
            p.files
                .iter()
                .any(|f| f.path == path && f.size == size && f.sha256 == sha256)
        });
        if in_parent {
            let stored = store.join(&rel);
            std::fs::remove_file(&stored).map_err(io("cannot remove", &stored))?;
        }
        let node = snapshot
            .origins
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix.as_str()))
            .map(|(_, node)| node.clone());
        files.push(FileEntry {
            path,
            size,
            sha256,
            node,
            in_parent,
        });
    }
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        store_kind: snapshot.store_kind,
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        backup_ts,
        fast_forward_ts,
        oldest_complete_ts: oldest_complete_ts.min(backup_ts),
        compression,
        files,
        parent: parent.map(|(p, _)| p),
        encryption: options.encrypt.as_ref().map(|k| Encryption {
            algorithm: crate::crypt::ALGORITHM.to_owned(),
            key_fingerprint: k.fingerprint().to_owned(),
        }),
    };
    manifest.write(dir)?;
    tracing::info!(dir = %dir.display(), files = manifest.files.len(), bytes = manifest.total_size(), "backup complete");
    Ok(manifest)
}
