//! Raw snapshots of the RocksDB store: a live checkpoint (RocksDB Checkpoint: hard links to
//! the immutable SST files plus a flushed copy of the rest), a restore that stages the files
//! next to the target and renames them into place only once the store is complete and
//! marked, and read-only inspection of a snapshot for deep verification.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ortelius_kvs::snapshot::{
    for_each_in_parallel, mark_restore_in_progress, restore_in_progress, Loaded, ProgressCount,
    RestoreTarget, SnapshotFormat, SnapshotInfo, SnapshotProgress, SnapshotSource, TargetState,
};
use ortelius_kvs::{Cell, KeyValueService, KvsError, KvsResult, TableRef, Value};

use ortelius_kvs::keycodec as keys;

use crate::{RocksDbConfig, RocksDbKvs};

/// The store kind recorded in manifests.
pub const STORE_KIND: &str = "rocksdb";

fn io_error(what: &str, path: &Path, e: std::io::Error) -> KvsError {
    KvsError::Storage {
        detail: format!("{what} {}: {e}", path.display()),
    }
}

/// Takes checkpoints of an open store.
pub struct RocksDbSnapshots {
    kvs: Arc<RocksDbKvs>,
}

impl RocksDbSnapshots {
    pub fn new(kvs: Arc<RocksDbKvs>) -> Self {
        Self { kvs }
    }
}

impl SnapshotSource for RocksDbSnapshots {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn take(&self, dir: &Path, progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        self.kvs.checkpoint(dir)?;
        progress(1, 1);
        Ok(SnapshotInfo::default())
    }
}

impl RocksDbKvs {
    /// Writes a consistent, openable copy of the live store into `dir` (which must not exist):
    /// RocksDB's Checkpoint, hard links where `dir` is on the same filesystem.
    pub fn checkpoint(&self, dir: &Path) -> KvsResult<()> {
        if dir.exists() {
            return Err(KvsError::Storage {
                detail: format!(
                    "snapshot target {} already exists; choose a new directory",
                    dir.display()
                ),
            });
        }
        if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, e))?;
        }
        rocksdb::checkpoint::Checkpoint::new(&self.db)
            .and_then(|c| c.create_checkpoint(dir))
            .map_err(|e| KvsError::Storage {
                detail: format!("checkpoint into {} failed: {e}", dir.display()),
            })
    }

    /// Visits every stored version of `table` in key order.
    pub fn scan_versions(
        &self,
        table: &TableRef,
        visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let mut opts = crate::iter_pool::read_options(crate::iter_pool::Seeks::Anywhere);
        opts.set_iterate_upper_bound(keys::table_end(id));
        let mut iter = self.db.raw_iterator_opt(opts);
        iter.seek(keys::table_start(id));
        while let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            let key = keys::decode(k)?;
            visit(Cell::new(key.row, key.column)?, Value::new(v, key.ts))?;
            iter.next();
        }
        iter.status().map_err(crate::storage)
    }
}

/// A data directory a snapshot can be restored into.
pub struct RocksDbTarget {
    dir: PathBuf,
    config: RocksDbConfig,
}

impl RocksDbTarget {
    pub fn new(dir: impl Into<PathBuf>, config: RocksDbConfig) -> Self {
        Self {
            dir: dir.into(),
            config,
        }
    }

    /// Where files are gathered before the store is complete: beside the target, so the final
    /// rename stays on one filesystem.
    fn staging(&self) -> PathBuf {
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "store".to_owned());
        self.dir.with_file_name(format!(".{name}.restoring"))
    }

    /// Names the snapshot the staging directory is being filled from.
    fn staging_id(&self) -> PathBuf {
        let mut staging = self.staging().into_os_string();
        staging.push(".id");
        PathBuf::from(staging)
    }
}

fn dir_is_empty(dir: &Path) -> KvsResult<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(io_error("cannot inspect", dir, e)),
    }
}

fn remove_dir_if_present(dir: &Path) -> KvsResult<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", dir, e)),
    }
}

fn remove_file_if_present(path: &Path) -> KvsResult<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error("cannot remove", path, e)),
    }
}

/// Writes a small file atomically (temporary file, fsync, rename).
fn write_synced(path: &Path, bytes: &[u8]) -> KvsResult<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::File::open(&tmp)?.sync_all())
        .map_err(|e| io_error("cannot write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_error("cannot write", path, e))
}

/// Copies `from` to `to` through `to.part`, renamed once synced: `to` is never partial.
fn copy_synced(from: &Path, to: &Path) -> KvsResult<()> {
    let mut tmp = to.as_os_str().to_owned();
    tmp.push(".part");
    let tmp = PathBuf::from(tmp);
    std::fs::copy(from, &tmp).map_err(|e| io_error("cannot copy", from, e))?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(|e| io_error("cannot sync", &tmp, e))?;
    std::fs::rename(&tmp, to).map_err(|e| io_error("cannot write", to, e))
}

/// Files under `dir` (relative paths, sorted) with their sizes.
fn files_of(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> KvsResult<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_error("cannot list", dir, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", dir, e))?;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| io_error("cannot inspect", &path, e))?;
        if meta.is_dir() {
            files_of(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push((rel.to_path_buf(), meta.len()));
        }
    }
    Ok(())
}

impl RestoreTarget for RocksDbTarget {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn describe(&self) -> String {
        self.dir.display().to_string()
    }

    fn state(&self) -> KvsResult<TargetState> {
        if dir_is_empty(&self.dir)? {
            return Ok(TargetState::Empty);
        }
        // Anything that is not an openable store with the marker counts as data to keep.
        match RocksDbKvs::open_read_only(&self.dir, &self.config) {
            Ok(kvs) if restore_in_progress(&kvs)? => Ok(TargetState::UnfinishedRestore),
            _ => Ok(TargetState::HasData),
        }
    }

    fn load(
        &self,
        dir: &Path,
        snapshot_id: &str,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<Loaded> {
        let staging = self.staging();
        let id_file = self.staging_id();
        // Files gathered by an interrupted load of the same snapshot are kept.
        let resuming =
            staging.is_dir() && std::fs::read_to_string(&id_file).is_ok_and(|id| id == snapshot_id);
        if !resuming {
            remove_dir_if_present(&staging)?;
            std::fs::create_dir_all(&staging)
                .map_err(|e| io_error("cannot create", &staging, e))?;
            write_synced(&id_file, snapshot_id.as_bytes())?;
        }
        let mut files = Vec::new();
        files_of(dir, dir, &mut files)?;
        files.sort();
        let total: u64 = files.iter().map(|(_, size)| size).sum();
        let (done, reused_bytes) = (ProgressCount::new(), AtomicU64::new(0));
        // Files are copied on every core: one copy at a time leaves the disks idle while each
        // file is synced.
        let place = |(rel, size): &(PathBuf, u64)| -> KvsResult<()> {
            let (from, to) = (dir.join(rel), staging.join(rel));
            let report = || done.add(*size, |now| progress(now, total));
            // A file is only ever in place whole (copies are renamed once synced).
            if resuming && std::fs::metadata(&to).is_ok_and(|m| m.len() == *size) {
                reused_bytes.fetch_add(*size, Ordering::Relaxed);
                report();
                return Ok(());
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error("cannot create", parent, e))?;
            }
            remove_file_if_present(&to)?;
            let mut part = to.clone().into_os_string();
            part.push(".part");
            remove_file_if_present(Path::new(&part))?;
            // SST files are immutable (RocksDB only ever unlinks them), so on one filesystem a
            // hard link restores them without reading them; everything else is copied.
            let is_sst = rel.extension().is_some_and(|e| e == "sst");
            if !(is_sst && std::fs::hard_link(&from, &to).is_ok()) {
                copy_synced(&from, &to)?;
            }
            report();
            Ok(())
        };
        for_each_in_parallel(&files, place)?;
        let reused_bytes = reused_bytes.into_inner();
        // Opening the staged store changes its files: from here an interruption starts over.
        remove_file_if_present(&id_file)?;
        {
            let kvs = RocksDbKvs::open(&staging, &self.config)?;
            mark_restore_in_progress(&kvs, &dir.display().to_string())?;
        }
        remove_dir_if_present(&self.dir)?;
        if let Some(parent) = self.dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, e))?;
        }
        std::fs::rename(&staging, &self.dir)
            .map_err(|e| io_error("cannot move the restored store into", &self.dir, e))?;
        Ok(Loaded { reused_bytes })
    }

    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>> {
        Ok(Arc::new(RocksDbKvs::open(&self.dir, &self.config)?))
    }
}

/// Reads RocksDB snapshots (checkpoints) read-only.
pub struct RocksDbFormat;

impl SnapshotFormat for RocksDbFormat {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn verify(&self, dir: &Path) -> KvsResult<u64> {
        RocksDbKvs::open_read_only(dir, &RocksDbConfig::default())?.verify_integrity()
    }

    fn scan_table(
        &self,
        dir: &Path,
        table: &TableRef,
        visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()> {
        RocksDbKvs::open_read_only(dir, &RocksDbConfig::default())?.scan_versions(table, visit)
    }
}
