//! Taking a backup: the live runbook in one step.

use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ortelius_kvs::snapshot::{for_each_in_parallel, ProgressCount};
use ortelius_kvs::Timestamp;
use serde::{Deserialize, Serialize};

use crate::crypt::{encrypt_file, BackupKey};
use crate::error::{io, BackupError, Result};
use crate::files::{compress_file, is_empty_dir, list_files, sha256_file, write_synced};
use crate::manifest::{
    Chain, Compression, Encryption, FileEntry, Manifest, Parent, FORMAT_VERSION, MANIFEST,
    SNAPSHOT_RECORD, STARTED_MARKER, STORE_DIR, STORE_JOURNAL,
};
use crate::owner::{OwnerError, StoreOwner};
use crate::progress::{no_progress, Progress};
use crate::resume::{lock_file, remove_if_present, rewrite, Journal};

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

/// What [`backup_cancellable`] did.
#[derive(Clone, Debug)]
pub struct BackupReport {
    pub manifest: Manifest,
    /// Bytes of the snapshot an interrupted run of this backup had already stored, kept
    /// rather than stored again (0 for a backup that ran in one go).
    pub resumed_bytes: u64,
}

/// Takes a live, consistent backup into `dir` (new, empty, or holding an interrupted backup,
/// which is resumed or started over; see [`backup_cancellable`]).
pub fn backup(owner: &dyn StoreOwner, dir: &Path) -> Result<Manifest> {
    backup_cancellable(
        owner,
        dir,
        BackupOptions::default(),
        &AtomicBool::new(false),
        &no_progress,
    )
    .map(|r| r.manifest)
}

/// What `BACKUP-STARTED` holds: which lock holder the run used, so that a re-run can take over
/// a lock the interrupted run left behind.
#[derive(Serialize, Deserialize)]
struct StartedMarker {
    note: String,
    lock_holder: String,
}

/// A raw snapshot's file, as taken.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct RawFile {
    path: String,
    size: u64,
}

/// Written once the raw snapshot is complete and the lock released: from then on the backup
/// only stores the snapshot's files, and an interrupted run resumes from here.
#[derive(Serialize, Deserialize)]
struct SnapshotRecord {
    store_kind: String,
    backup_ts: Timestamp,
    fast_forward_ts: Timestamp,
    oldest_complete_ts: Timestamp,
    origins: Vec<(String, String)>,
    files: Vec<RawFile>,
    /// The options the files are being stored with; a resumed run must use the same.
    compress: bool,
    key_fingerprint: Option<String>,
    parent: Option<Parent>,
}

/// A stored file in the journal: the raw file it came from and its manifest entry.
#[derive(Serialize, Deserialize)]
struct Stored {
    raw: String,
    entry: FileEntry,
}

/// Takes a live, consistent backup into `dir`, stopping at the next file once `cancel` is set
/// (Ctrl-C). The lock is released and no manifest written; running the same backup again
/// resumes it.
///
/// Steps: lock `dir` against other backups → write `BACKUP-STARTED` → acquire the backup lock
/// (with a lease, so a killed backup cannot stop sweep for good; released on every error path)
/// → note the sweep timestamp (the oldest timestamp whose versions the backup holds
/// completely) → fetch B → raw snapshot into `store/` → fetch F → release → record the
/// snapshot (`SNAPSHOT-TAKEN.json`) → store each file (compress, encrypt, checksum; journaled
/// one by one) → write the manifest, last.
///
/// Resuming: a run interrupted after the snapshot record keeps that snapshot and its B and F,
/// and stores only the files the journal does not list. A run interrupted before it discards
/// the partial snapshot and takes a new one, with new B and F, taking over the backup lock the
/// interrupted run left: files from two snapshots are never mixed.
pub fn backup_cancellable(
    owner: &dyn StoreOwner,
    dir: &Path,
    options: BackupOptions,
    cancel: &AtomicBool,
    progress: Progress<'_>,
) -> Result<BackupReport> {
    let check = || {
        if cancel.load(Ordering::SeqCst) {
            Err(BackupError::Cancelled)
        } else {
            Ok(())
        }
    };
    if !is_empty_dir(dir)? && (dir.join(MANIFEST).exists() || !dir.join(STARTED_MARKER).exists()) {
        return Err(BackupError::NotEmpty {
            path: dir.to_path_buf(),
            hint: "",
        });
    }
    let parent = parent_of(dir, &options)?;
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let marker_path = dir.join(STARTED_MARKER);
    let mut marker = lock_file(&marker_path, || BackupError::Busy {
        dir: dir.to_path_buf(),
    })?;
    // Another backup may have finished here between the check above and taking the lock.
    if dir.join(MANIFEST).exists() {
        return Err(BackupError::NotEmpty {
            path: dir.to_path_buf(),
            hint: "",
        });
    }
    let record = match read_record(dir)? {
        Some(record) => {
            record.check_options(dir, &options, parent.as_ref().map(|(p, _)| p))?;
            tracing::info!(dir = %dir.display(), backup_ts = record.backup_ts, "backup: resuming an interrupted backup after its snapshot");
            record
        }
        None => {
            let interrupted = std::fs::read(&marker_path)
                .ok()
                .and_then(|b| serde_json::from_slice::<StartedMarker>(&b).ok());
            clear_all_but(dir, STARTED_MARKER)?;
            let holder = format!("ortelius backup (pid {})", std::process::id());
            let text = serde_json::to_vec_pretty(&StartedMarker {
                note: "a backup was started here; it is complete once manifest.json exists"
                    .to_owned(),
                lock_holder: holder.clone(),
            })
            .map_err(|e| BackupError::Store(e.to_string()))?;
            rewrite(&mut marker, &marker_path, &text)?;
            if let Some(interrupted) = interrupted {
                take_over_lock(owner, &interrupted.lock_holder)?;
            }
            let record = take_snapshot(owner, dir, &holder, &options, parent.as_ref(), &check)?;
            write_synced(
                &dir.join(SNAPSHOT_RECORD),
                &serde_json::to_vec_pretty(&record)
                    .map_err(|e| BackupError::Store(e.to_string()))?,
            )?;
            record
        }
    };
    let (files, resumed_bytes) =
        store_files(dir, &record, &options, parent.as_ref(), &check, progress)?;
    let manifest = Manifest {
        format_version: FORMAT_VERSION,
        store_kind: record.store_kind,
        tool_version: env!("CARGO_PKG_VERSION").to_owned(),
        backup_ts: record.backup_ts,
        fast_forward_ts: record.fast_forward_ts,
        oldest_complete_ts: record.oldest_complete_ts.min(record.backup_ts),
        compression: if record.compress {
            Compression::Zstd
        } else {
            Compression::None
        },
        files,
        parent: record.parent,
        encryption: options.encrypt.as_ref().map(|k| Encryption {
            algorithm: crate::crypt::ALGORITHM.to_owned(),
            key_fingerprint: k.fingerprint().to_owned(),
        }),
    };
    manifest.write(dir)?;
    remove_if_present(&dir.join(SNAPSHOT_RECORD))?;
    remove_if_present(&dir.join(STORE_JOURNAL))?;
    tracing::info!(dir = %dir.display(), files = manifest.files.len(), bytes = manifest.total_size(), resumed_bytes, "backup complete");
    Ok(BackupReport {
        manifest,
        resumed_bytes,
    })
}

impl SnapshotRecord {
    /// A resumed backup must store the rest of the files as the interrupted run stored the
    /// first ones.
    fn check_options(
        &self,
        dir: &Path,
        options: &BackupOptions,
        parent: Option<&Parent>,
    ) -> Result<()> {
        let fingerprint = options.encrypt.as_ref().map(|k| k.fingerprint().to_owned());
        let differs = if self.compress != options.compress {
            Some(format!(
                "--compress {}",
                if self.compress { "on" } else { "off" }
            ))
        } else if self.key_fingerprint != fingerprint {
            Some(
                self.key_fingerprint
                    .as_ref()
                    .map_or("no --encrypt-key-file".to_owned(), |f| {
                        format!("--encrypt-key-file with the key of fingerprint {f}")
                    }),
            )
        } else if self.parent.as_ref() != parent {
            Some(
                self.parent
                    .as_ref()
                    .map_or("no --incremental-from".to_owned(), |p| {
                        format!("--incremental-from {}", p.dir)
                    }),
            )
        } else {
            None
        };
        match differs {
            None => Ok(()),
            Some(was) => Err(BackupError::Store(format!(
                "{} holds an interrupted backup taken with {was}; run it again with the same options to resume it, or remove the directory to start over",
                dir.display()
            ))),
        }
    }
}

fn read_record(dir: &Path) -> Result<Option<SnapshotRecord>> {
    let path = dir.join(SNAPSHOT_RECORD);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| BackupError::Corrupt {
                dir: dir.to_path_buf(),
                detail: format!(
                    "{SNAPSHOT_RECORD} is unreadable ({e}); remove the directory to start over"
                ),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io("cannot read", &path)(e)),
    }
}

/// Removes everything in `dir` but `keep`: what an interrupted run left before its snapshot
/// was complete.
fn clear_all_but(dir: &Path, keep: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let entry = entry.map_err(io("cannot list", dir))?;
        if entry.file_name() == keep {
            continue;
        }
        let path = entry.path();
        let removed = if entry.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        removed.map_err(io("cannot clear the interrupted backup's", &path))?;
    }
    Ok(())
}

/// Releases the backup lock if the interrupted run (now dead: its directory lock is ours)
/// still holds it, so the re-run need not wait for the lease to run out. A lock anyone else
/// holds is left alone (the release is conditional on the holder, in one step).
fn take_over_lock(owner: &dyn StoreOwner, interrupted_holder: &str) -> Result<()> {
    match owner.release_backup_lock(Some(interrupted_holder)) {
        Ok(held) => {
            tracing::warn!(holder = %held.holder, "backup: released the backup lock left by the interrupted run of this backup");
            Ok(())
        }
        Err(OwnerError::LockNotHeld | OwnerError::LockHeld(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The locked steps: sweep timestamp, B, raw snapshot, F; the lock is released on every path.
fn take_snapshot(
    owner: &dyn StoreOwner,
    dir: &Path,
    holder: &str,
    options: &BackupOptions,
    parent: Option<&(Parent, Manifest)>,
    check: &dyn Fn() -> Result<()>,
) -> Result<SnapshotRecord> {
    owner.acquire_backup_lock(holder, "ortelius backup", Some(BACKUP_LOCK_LEASE))?;
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
    // Only our own lock: if it lapsed and someone else took it, theirs is not ours to release.
    let released = owner.release_backup_lock(Some(holder));
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
    let files = list_files(&store)?
        .into_iter()
        .map(|rel| {
            let size = std::fs::metadata(store.join(&rel))
                .map_err(io("cannot inspect", &store.join(&rel)))?
                .len();
            Ok(RawFile {
                path: rel.to_string_lossy().into_owned(),
                size,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SnapshotRecord {
        store_kind: snapshot.store_kind,
        backup_ts,
        fast_forward_ts,
        oldest_complete_ts,
        origins: snapshot.origins,
        files,
        compress: options.compress,
        key_fingerprint: options.encrypt.as_ref().map(|k| k.fingerprint().to_owned()),
        parent: parent.map(|(p, _)| p.clone()),
    })
}

/// Stores each raw file as it is kept (compressed, then encrypted), checksums it and journals
/// it; the raw file is removed only after its journal line. Returns the manifest's entries and
/// the bytes an interrupted run had already stored.
///
/// Crash safety: outputs are written as `<name>.part` and renamed once synced, so a file not in
/// the journal is redone from its raw file, which is still there.
fn store_files(
    dir: &Path,
    record: &SnapshotRecord,
    options: &BackupOptions,
    parent: Option<&(Parent, Manifest)>,
    check: &(dyn Fn() -> Result<()> + Sync),
    progress: Progress<'_>,
) -> Result<(Vec<FileEntry>, u64)> {
    let store = dir.join(STORE_DIR);
    let journal = Journal::<Stored>::open(&dir.join(STORE_JOURNAL), |s| s.raw.clone())?;
    let resumed_bytes: u64 = record
        .files
        .iter()
        .filter(|f| journal.get(&f.path).is_some())
        .map(|f| f.size)
        .sum();
    let total = record
        .files
        .iter()
        .map(|f| f.size)
        .sum::<u64>()
        .saturating_sub(resumed_bytes);
    // Files already journaled by an interrupted run: only the raw file's removal may be
    // missing.
    for raw in &record.files {
        if let Some(stored) = journal.get(&raw.path) {
            if stored.entry.path != raw.path {
                remove_if_present(&store.join(&raw.path))?;
            }
            if stored.entry.in_parent {
                remove_if_present(&store.join(&stored.entry.path))?;
            }
        }
    }
    // The others on every core, each journaled as soon as it is stored: a file stored as it
    // is is checksummed; one compressed or encrypted is transformed into its stored name. The
    // raw file is removed only after its journal line, so an interrupted run redoes exactly
    // the files not journaled, from their raw files.
    let todo: Vec<&RawFile> = record
        .files
        .iter()
        .filter(|f| journal.get(&f.path).is_none())
        .collect();
    let journal = Mutex::new(journal);
    let read = ProgressCount::new();
    for_each_in_parallel(&todo, |raw| -> Result<()> {
        check()?;
        // Progress counts the raw file's bytes, as the first step reads them.
        let mut on_bytes = |n: u64| read.add(n, |now| progress("storing", now, total));
        let (name, (size, sha256)) = store_file(&store, &raw.path, options, &mut on_bytes)?;
        let in_parent = parent.is_some_and(|(_, p)| {
            p.files
                .iter()
                .any(|f| f.path == name && f.size == size && f.sha256 == sha256)
        });
        let node = record
            .origins
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix.as_str()))
            .map(|(_, node)| node.clone());
        let entry = FileEntry {
            path: name.clone(),
            size,
            sha256,
            node,
            in_parent,
        };
        journal.lock().map_err(|_| poisoned(dir))?.record(
            raw.path.clone(),
            Stored {
                raw: raw.path.clone(),
                entry,
            },
        )?;
        if name != raw.path {
            remove_if_present(&store.join(&raw.path))?;
        }
        if in_parent {
            remove_if_present(&store.join(&name))?;
        }
        Ok(())
    })?;
    let journal = journal.into_inner().map_err(|_| poisoned(dir))?;
    let entries = record
        .files
        .iter()
        .map(|raw| {
            journal
                .get(&raw.path)
                .map(|stored| stored.entry.clone())
                .ok_or_else(|| BackupError::Corrupt {
                    dir: dir.to_path_buf(),
                    detail: format!("{} was not journaled", raw.path),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((entries, resumed_bytes))
}

fn poisoned(dir: &Path) -> BackupError {
    BackupError::Store(format!(
        "backup {}: a panic while storing a file poisoned the journal's lock; run the backup again to resume it",
        dir.display()
    ))
}

/// Stores one raw file of `store` as the options say: its stored name (the raw name, with
/// `.zst` when compressed and `.enc` when encrypted) and that file's size and SHA-256. A
/// transformed file is written beside the raw one, synced, and renamed into place; the raw
/// file is left for the caller to remove once the file is journaled.
fn store_file(
    store: &Path,
    raw: &str,
    options: &BackupOptions,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(String, (u64, String))> {
    let source = store.join(raw);
    let mut name = raw.to_owned();
    let compressed = if options.compress {
        name.push_str(".zst");
        let out = store.join(format!("{name}.part"));
        // Synced only if it is what gets stored.
        let last = options.encrypt.is_none();
        let digest = compress_file(&source, &out, last, on_bytes)?;
        Some((out, digest))
    } else {
        None
    };
    let (written, digest) = match (&options.encrypt, compressed) {
        (None, None) => return Ok((name, sha256_file(&source, on_bytes)?)),
        (None, Some(compressed)) => compressed,
        (Some(key), compressed) => {
            name.push_str(".enc");
            let out = store.join(format!("{name}.part"));
            let digest = match &compressed {
                Some((zst, _)) => encrypt_file(zst, &out, key, &mut |_| {})?,
                None => encrypt_file(&source, &out, key, on_bytes)?,
            };
            if let Some((zst, _)) = compressed {
                remove_if_present(&zst)?;
            }
            (out, digest)
        }
    };
    let stored = store.join(&name);
    std::fs::rename(&written, &stored).map_err(io("cannot write", &stored))?;
    Ok((name, digest))
}
