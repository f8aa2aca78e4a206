//! Verifying a backup: shallow (manifest and checksums) and deep (read every entry of the raw
//! snapshot and check the transactions table against F).

use std::path::{Path, PathBuf};

use ortelius_kvs::snapshot::{for_each_in_parallel, ProgressCount};
use ortelius_kvs::TableRef;
use ortelius_txn::{TransactionsTable, TxnStatus, TRANSACTIONS_TABLE};

use crate::crypt::{self, BackupKey};
use crate::error::{io, BackupError, Result};
use crate::files::link_or_copy;
use crate::files::{decompress, sha256_file};
use crate::manifest::{Chain, Compression, FileEntry, Manifest};
use crate::progress::{no_progress, Progress};
use crate::resume::{lock_file, remove_if_present, Journal};

/// Checks a backup: manifest present and readable, every file present with its size and
/// checksum — for an incremental backup, in whichever backup of its chain stores it. An
/// encrypted backup needs its key ([`verify_with`]).
pub fn verify(dir: &Path) -> Result<Manifest> {
    verify_with(dir, None, &no_progress)
}

/// [`verify`], reporting the checksum pass to `progress`.
pub fn verify_with_progress(dir: &Path, progress: Progress<'_>) -> Result<Manifest> {
    verify_with(dir, None, progress)
}

/// [`verify`] with the key of an encrypted backup: every file must also decrypt and
/// authenticate, chunk by chunk.
pub fn verify_with(
    dir: &Path,
    key: Option<&BackupKey>,
    progress: Progress<'_>,
) -> Result<Manifest> {
    verify_files(dir, key, progress, &|_| false)
}

/// [`verify_with`], except for the files `skip` names (already checked, e.g. by an
/// interrupted restore).
pub(crate) fn verify_files(
    dir: &Path,
    key: Option<&BackupKey>,
    progress: Progress<'_>,
    skip: &dyn Fn(&FileEntry) -> bool,
) -> Result<Manifest> {
    let chain = Chain::load(dir)?;
    let manifest = chain.manifest().clone();
    manifest.check_key(dir, key)?;
    let corrupt = |detail: String| BackupError::Corrupt {
        dir: dir.to_path_buf(),
        detail,
    };
    let total = manifest
        .files
        .iter()
        .filter(|f| !skip(f))
        .map(|f| f.size)
        .sum();
    // Paths and presence first, in manifest order; then the checksums, on every core.
    let mut work = Vec::new();
    for file in &manifest.files {
        if Path::new(&file.path)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(corrupt(format!(
                "{} is not a path inside the backup",
                file.path
            )));
        }
        if skip(file) {
            continue;
        }
        let path = chain.locate(file)?;
        if !path.exists() {
            return Err(corrupt(format!("{} is missing", file.path)));
        }
        work.push((file, path));
    }
    let done = ProgressCount::new();
    let check = |(file, path): &(&FileEntry, PathBuf)| -> Result<()> {
        let (size, sha256) = sha256_file(path, &mut |n| {
            done.add(n, |now| progress("verifying", now, total))
        })?;
        if size != file.size || sha256 != file.sha256 {
            return Err(corrupt(format!(
                "{} does not match its checksum",
                file.path
            )));
        }
        if let (Some(_), Some(key)) = (&manifest.encryption, key) {
            crypt::decrypt(path, key, None).map_err(|e| corrupt(format!("{}: {e}", file.path)))?;
        }
        Ok(())
    };
    for_each_in_parallel(&work, check)?;
    Ok(manifest)
}

/// Whether a backup's files must be assembled (from its chain, decrypted, decompressed)
/// before a backend can read them as a raw snapshot.
pub(crate) fn needs_assembly(manifest: &Manifest) -> bool {
    manifest.parent.is_some()
        || manifest.compression != Compression::None
        || manifest.encryption.is_some()
}

/// A backup's raw snapshot as plain files in a scratch directory (`files/`), with a journal of
/// the files already there (`ASSEMBLED.journal`) so an interrupted restore keeps them, and a
/// lock so two restores of one backup do not assemble into the same place.
pub(crate) struct Assembly {
    root: PathBuf,
    _lock: std::fs::File,
    journal: Journal<String>,
}

impl Assembly {
    pub(crate) fn open(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root.join("files")).map_err(io("cannot create", root))?;
        let lock = lock_file(&root.join("LOCK"), || BackupError::RestoreBusy {
            dir: root.to_path_buf(),
        })?;
        let journal = Journal::open(&root.join("ASSEMBLED.journal"), Clone::clone)?;
        Ok(Self {
            root: root.to_path_buf(),
            _lock: lock,
            journal,
        })
    }

    /// Whether `file` is already assembled (and was verified when it was).
    pub(crate) fn has(&self, file: &FileEntry) -> bool {
        self.journal.get(&file.path).is_some()
    }

    /// Assembles every file of the verified backup `dir` not yet assembled: files of an
    /// incremental backup's chain hard-linked where possible, encrypted ones decrypted,
    /// compressed ones decompressed. Returns the raw snapshot's directory and the bytes (as
    /// stored) an interrupted run had already assembled.
    pub(crate) fn fill(
        &mut self,
        dir: &Path,
        manifest: &Manifest,
        key: Option<&BackupKey>,
        progress: Progress<'_>,
    ) -> Result<(PathBuf, u64)> {
        manifest.check_key(dir, key)?;
        let chain = Chain::load(dir)?;
        let corrupt = |detail: String| BackupError::Corrupt {
            dir: dir.to_path_buf(),
            detail,
        };
        let files = self.root.join("files");
        let reused: u64 = manifest
            .files
            .iter()
            .filter(|f| self.has(f))
            .map(|f| f.size)
            .sum();
        let total = manifest.total_size().saturating_sub(reused);
        let mut done = 0;
        for file in &manifest.files {
            if self.has(file) {
                continue;
            }
            let mut from = chain.locate(file)?;
            let mut name = file.path.as_str();
            if let (Some(_), Some(key)) = (&manifest.encryption, key) {
                name = name.trim_end_matches(".enc");
                // Decrypted outside `files/` when it still needs decompressing.
                let to = if manifest.compression == Compression::Zstd {
                    self.root.join("decrypting")
                } else {
                    files.join(name)
                };
                create_parent(&to)?;
                let mut out = std::fs::File::create(&to).map_err(io("cannot write", &to))?;
                crypt::decrypt(&from, key, Some(&mut out))
                    .map_err(|e| corrupt(format!("{}: {e}", file.path)))?;
                out.sync_all().map_err(io("cannot sync", &to))?;
                from = to;
            }
            match manifest.compression {
                Compression::Zstd => {
                    let to = files.join(name.trim_end_matches(".zst"));
                    decompress(&from, &to)
                        .map_err(|e| corrupt(format!("{} does not decompress: {e}", file.path)))?;
                }
                Compression::None if manifest.encryption.is_none() => {
                    let to = files.join(name);
                    remove_if_present(&to)?;
                    link_or_copy(&from, &to)?;
                }
                Compression::None => {}
            }
            self.journal.record(file.path.clone(), file.path.clone())?;
            done += file.size;
            progress("assembling", done, total);
        }
        remove_if_present(&self.root.join("decrypting"))?;
        Ok((files, reused))
    }
}

fn create_parent(path: &Path) -> Result<()> {
    match path.parent() {
        Some(parent) => std::fs::create_dir_all(parent).map_err(io("cannot create", parent)),
        None => Ok(()),
    }
}

/// A scratch directory for a decompressed copy.
pub(crate) fn scratch_dir() -> Result<tempfile::TempDir> {
    tempfile::tempdir().map_err(io(
        "cannot create a scratch directory in",
        &std::env::temp_dir(),
    ))
}

/// What a deep verification read.
#[derive(Clone, Debug)]
pub struct DeepReport {
    pub manifest: Manifest,
    /// Entries of the raw snapshot read back.
    pub entries: u64,
    /// Commit records in the transactions table; `None` when the snapshot format cannot be read
    /// without a server (Cassandra's SSTables).
    pub transactions: Option<u64>,
}

/// [`verify`], then reads the raw snapshot without changing the backup (every entry, with the
/// checks its format allows: RocksDB block checksums and key layout, ...) and checks the
/// transactions table: every entry well-formed, and no commit at or after F (every commit in
/// the snapshot happened before F was fetched).
pub fn verify_deep(dir: &Path) -> Result<DeepReport> {
    verify_deep_with(dir, None)
}

/// [`verify_deep`] with the key of an encrypted backup.
pub fn verify_deep_with(dir: &Path, key: Option<&BackupKey>) -> Result<DeepReport> {
    let manifest = verify_with(dir, key, &no_progress)?;
    let corrupt = |detail: String| BackupError::Corrupt {
        dir: dir.to_path_buf(),
        detail,
    };
    let format = ortelius_backends::snapshot_format(&manifest.store_kind).ok_or_else(|| {
        BackupError::UnknownStoreKind {
            kind: manifest.store_kind.clone(),
        }
    })?;
    let scratch = scratch_dir()?;
    let raw = if needs_assembly(&manifest) {
        Assembly::open(scratch.path())?
            .fill(dir, &manifest, key, &no_progress)?
            .0
    } else {
        dir.join(crate::manifest::STORE_DIR)
    };
    let entries = format.verify(&raw).map_err(|e| corrupt(e.to_string()))?;
    let table = TableRef::system(TRANSACTIONS_TABLE).map_err(|e| corrupt(e.to_string()))?;
    let mut transactions = 0u64;
    let mut late = None;
    let scanned = format
        .scan_table(&raw, &table, &mut |cell, value| {
            let (start, status) = TransactionsTable::decode_entry(&cell, &value.contents)?;
            transactions += 1;
            if let TxnStatus::Committed(commit) = status {
                if commit >= manifest.fast_forward_ts && late.is_none() {
                    late = Some((start, commit));
                }
            }
            Ok(())
        })
        .map(|()| Some(transactions));
    let transactions = match scanned {
        Ok(count) => count,
        Err(ortelius_kvs::KvsError::Unsupported { .. }) => None,
        Err(ortelius_kvs::KvsError::TableNotFound { .. }) => {
            return Err(corrupt("the store has no transactions table".to_owned()))
        }
        Err(other) => return Err(corrupt(other.to_string())),
    };
    if let Some((start, commit)) = late {
        return Err(corrupt(format!(
            "transaction {start} is recorded as committed at {commit}, not before F = {}: the store is not the snapshot this manifest describes",
            manifest.fast_forward_ts
        )));
    }
    Ok(DeepReport {
        manifest,
        entries,
        transactions,
    })
}
