//! One-shot backup and restore: the AtlasDB-compatible runbook in one command each way.
//!
//! A backup directory holds `BACKUP-STARTED` (written first), `store/` (a RocksDB checkpoint)
//! and `manifest.json` (written last, atomically). A directory with the marker but no manifest
//! is an incomplete backup, and is never restored.
//!
//! Backup: acquire the backup lock (with a lease, so a killed backup cannot stop sweep for
//! good; released on every error path) → note the sweep timestamp (the oldest timestamp whose
//! versions the backup holds completely) → fetch B → checkpoint into `store/` → fetch F →
//! release → checksum every file → write the manifest.
//!
//! Restore (offline, into an empty directory): verify the backup → write the restore marker
//! into the target → copy the files (hard-linking the immutable SSTs when the backup is on the
//! same filesystem) → delete transactions committed at or after B (or an
//! earlier `as_of`) → fast-forward to F → release the persisted lock → remove the marker. A
//! store whose restore did not finish refuses to open (`UnfinishedRestore`); running the
//! restore again starts over.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::{KeyValueService, Timestamp};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs, RESTORE_MARKER};
use ortelius_txn::{
    BackupLock, BackupLockError, SystemWallClock, TransactionConfig, TransactionManager,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const FORMAT_VERSION: u64 = 1;
pub const STARTED_MARKER: &str = "BACKUP-STARTED";
pub const MANIFEST: &str = "manifest.json";
const STORE_DIR: &str = "store";

/// Receives progress of the long steps: (step, bytes done, bytes in total).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

/// A [`Progress`] that ignores everything.
pub fn no_progress(_step: &str, _done: u64, _total: u64) {}

/// Throttles a step to `bytes_per_sec`: call [`RateLimit::pace`] with the bytes done so far
/// (e.g. from a [`Progress`] callback) and it sleeps while the step is ahead of the rate.
pub struct RateLimit {
    bytes_per_sec: u64,
    started: std::sync::Mutex<Option<(String, std::time::Instant)>>,
}

impl RateLimit {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec: bytes_per_sec.max(1),
            started: std::sync::Mutex::new(None),
        }
    }

    /// Sleeps until `done` bytes of `step` are within the rate since the step began.
    pub fn pace(&self, step: &str, done: u64) {
        let since = {
            let Ok(mut started) = self.started.lock() else {
                return;
            };
            match started.as_ref() {
                Some((s, t)) if s == step => *t,
                _ => {
                    let now = std::time::Instant::now();
                    *started = Some((step.to_owned(), now));
                    now
                }
            }
        };
        let allowed = Duration::from_secs_f64(done as f64 / self.bytes_per_sec as f64);
        let elapsed = since.elapsed();
        if allowed > elapsed {
            std::thread::sleep(allowed - elapsed);
        }
    }
}

/// How long a backup's lock lasts if the backup process dies before releasing it.
pub const BACKUP_LOCK_LEASE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is not empty; choose a new directory{hint}", .path.display())]
    NotEmpty { path: PathBuf, hint: &'static str },
    #[error("{} is an incomplete backup (started, never finished): it cannot be restored; take a new backup", .0.display())]
    Incomplete(PathBuf),
    #[error("{} is not a backup (no {MANIFEST})", .0.display())]
    NotABackup(PathBuf),
    #[error("backup {} is damaged: {detail}", .dir.display())]
    Corrupt { dir: PathBuf, detail: String },
    #[error("cannot restore as of {as_of}: this backup holds every version only in {oldest}..={backup_ts}")]
    AsOfOutOfRange {
        as_of: Timestamp,
        oldest: Timestamp,
        backup_ts: Timestamp,
    },
    #[error("cancelled; the backup lock was released and {MANIFEST} not written (run the backup again to start over)")]
    Cancelled,
    #[error("{0}")]
    Source(String),
}

type Result<T> = std::result::Result<T, BackupError>;

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// What a backup needs from the store's owner: the live process's management API, or the store
/// opened directly.
pub trait BackupSource {
    fn acquire_lock(&self, reason: &str, lease: Duration) -> std::result::Result<(), String>;
    fn release_lock(&self) -> std::result::Result<(), String>;
    fn fresh_timestamp(&self) -> std::result::Result<Timestamp, String>;
    /// The current sweep timestamp: versions at or above it are all still there.
    fn sweep_timestamp(&self) -> std::result::Result<Timestamp, String>;
    fn checkpoint(&self, dir: &Path) -> std::result::Result<(), String>;
}

/// A backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Manifest {
    pub backup_ts: Timestamp,
    pub fast_forward_ts: Timestamp,
    pub oldest_complete_ts: Timestamp,
    /// (path relative to `store/`, size, sha256 hex) of the files as stored in the backup.
    pub files: Vec<(String, u64, String)>,
    /// Whether the files are zstd-compressed (`<name>.zst`).
    pub compressed: bool,
}

impl Manifest {
    fn to_json(&self) -> Value {
        json!({
            "format_version": FORMAT_VERSION,
            "store_kind": "rocksdb",
            "tool_version": env!("CARGO_PKG_VERSION"),
            "backup_ts": self.backup_ts,
            "fast_forward_ts": self.fast_forward_ts,
            "oldest_complete_ts": self.oldest_complete_ts,
            "compression": if self.compressed { "zstd" } else { "none" },
            "files": self.files.iter().map(|(p, size, sha)| json!({"path": p, "size": size, "sha256": sha})).collect::<Vec<_>>(),
        })
    }

    fn from_json(dir: &Path, v: &Value) -> Result<Self> {
        let corrupt = |detail: &str| BackupError::Corrupt {
            dir: dir.to_path_buf(),
            detail: detail.to_owned(),
        };
        if v["format_version"].as_u64() != Some(FORMAT_VERSION) {
            return Err(corrupt("unknown manifest format version"));
        }
        if v["store_kind"].as_str() != Some("rocksdb") {
            return Err(corrupt("unknown store kind"));
        }
        let compressed = match v["compression"].as_str() {
            Some("none") => false,
            Some("zstd") => true,
            _ => return Err(corrupt("unknown compression")),
        };
        let ts = |k: &str| {
            v[k].as_i64()
                .ok_or_else(|| corrupt(&format!("manifest lacks {k}")))
        };
        let files = v["files"]
            .as_array()
            .ok_or_else(|| corrupt("manifest lacks files"))?
            .iter()
            .map(
                |f| match (f["path"].as_str(), f["size"].as_u64(), f["sha256"].as_str()) {
                    (Some(p), Some(s), Some(h)) => Ok((p.to_owned(), s, h.to_owned())),
                    _ => Err(corrupt("malformed file entry")),
                },
            )
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            backup_ts: ts("backup_ts")?,
            fast_forward_ts: ts("fast_forward_ts")?,
            oldest_complete_ts: ts("oldest_complete_ts")?,
            files,
            compressed,
        })
    }
}

fn sha256_file(path: &Path, on_bytes: &mut dyn FnMut(u64)) -> Result<(u64, String)> {
    let mut file = std::fs::File::open(path).map_err(io("cannot read", path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io("cannot read", path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        on_bytes(n as u64);
        size += n as u64;
    }
    let digest = hasher.finalize();
    Ok((size, digest.iter().map(|b| format!("{b:02x}")).collect()))
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(io("cannot list", dir))? {
        let entry = entry.map_err(io("cannot list", dir))?;
        let path = entry.path();
        if entry
            .file_type()
            .map_err(io("cannot inspect", &path))?
            .is_dir()
        {
            list_files(root, &path, out)?;
        } else {
            out.push(
                path.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or(path),
            );
        }
    }
    Ok(())
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(BackupError::Io {
            what: "cannot inspect",
            path: dir.to_path_buf(),
            source: e,
        }),
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(io("cannot write", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("cannot write", path))
}

/// Takes a live, consistent backup into `dir` (new, empty, or holding an incomplete backup,
/// which is started over).
pub fn backup(source: &dyn BackupSource, dir: &Path) -> Result<Manifest> {
    backup_cancellable(source, dir, false, &AtomicBool::new(false), &no_progress)
}

/// [`backup`], stopping at the next step once `cancel` is set (Ctrl-C): the lock is released
/// and no manifest is written, so the directory is an incomplete backup that a re-run restarts.
/// With `compress`, every file is stored zstd-compressed as `<name>.zst`. Compressing and
/// checksumming report to `progress`.
pub fn backup_cancellable(
    source: &dyn BackupSource,
    dir: &Path,
    compress: bool,
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
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    write_synced(
        &dir.join(STARTED_MARKER),
        b"a backup was started here; it is complete once manifest.json exists\n",
    )?;
    source
        .acquire_lock("ortelius backup", BACKUP_LOCK_LEASE)
        .map_err(BackupError::Source)?;
    let taken = (|| -> Result<_> {
        check()?;
        let oldest = source.sweep_timestamp().map_err(BackupError::Source)?;
        let backup_ts = source.fresh_timestamp().map_err(BackupError::Source)?;
        check()?;
        source
            .checkpoint(&dir.join(STORE_DIR))
            .map_err(BackupError::Source)?;
        check()?;
        let fast_forward_ts = source.fresh_timestamp().map_err(BackupError::Source)?;
        Ok((oldest, backup_ts, fast_forward_ts))
    })();
    let released = source.release_lock().map_err(BackupError::Source);
    let (oldest_complete_ts, backup_ts, fast_forward_ts) = taken?;
    released?;
    let store = dir.join(STORE_DIR);
    let mut paths = Vec::new();
    list_files(&store, &store, &mut paths)?;
    paths.sort();
    if compress {
        let total: u64 = paths
            .iter()
            .filter_map(|p| std::fs::metadata(store.join(p)).ok())
            .map(|m| m.len())
            .sum();
        let mut done = 0;
        for rel in &mut paths {
            check()?;
            let (plain, packed) = (
                store.join(&*rel),
                store.join(format!("{}.zst", rel.display())),
            );
            let reader = std::fs::File::open(&plain).map_err(io("cannot read", &plain))?;
            let writer = std::fs::File::create(&packed).map_err(io("cannot write", &packed))?;
            zstd::stream::copy_encode(reader, writer, 3).map_err(io("cannot compress", &plain))?;
            done += std::fs::metadata(&plain).map(|m| m.len()).unwrap_or(0);
            std::fs::remove_file(&plain).map_err(io("cannot remove", &plain))?;
            *rel = PathBuf::from(format!("{}.zst", rel.display()));
            progress("compressing", done, total);
        }
    }
    let mut files = Vec::new();
    let total: u64 = paths
        .iter()
        .filter_map(|p| std::fs::metadata(store.join(p)).ok())
        .map(|m| m.len())
        .sum();
    let mut done = 0u64;
    for rel in paths {
        check()?;
        let (size, sha) = sha256_file(&store.join(&rel), &mut |n| {
            done += n;
            progress("checksumming", done, total);
        })?;
        files.push((rel.to_string_lossy().into_owned(), size, sha));
    }
    let manifest = Manifest {
        backup_ts,
        fast_forward_ts,
        oldest_complete_ts: oldest_complete_ts.min(backup_ts),
        files,
        compressed: compress,
    };
    write_synced(
        &dir.join(MANIFEST),
        manifest.to_json().to_string().as_bytes(),
    )?;
    Ok(manifest)
}

/// Checks a backup: manifest present and readable, every file present with its size and
/// checksum.
pub fn verify(dir: &Path) -> Result<Manifest> {
    verify_with_progress(dir, &no_progress)
}

/// [`verify`], reporting the checksum pass to `progress`.
pub fn verify_with_progress(dir: &Path, progress: Progress<'_>) -> Result<Manifest> {
    let manifest_path = dir.join(MANIFEST);
    if !manifest_path.exists() {
        return Err(if dir.join(STARTED_MARKER).exists() {
            BackupError::Incomplete(dir.to_path_buf())
        } else {
            BackupError::NotABackup(dir.to_path_buf())
        });
    }
    let text =
        std::fs::read_to_string(&manifest_path).map_err(io("cannot read", &manifest_path))?;
    let value: Value = serde_json::from_str(&text).map_err(|e| BackupError::Corrupt {
        dir: dir.to_path_buf(),
        detail: format!("manifest.json is unreadable: {e}"),
    })?;
    let manifest = Manifest::from_json(dir, &value)?;
    let total: u64 = manifest.files.iter().map(|f| f.1).sum();
    let mut done = 0u64;
    for (rel, size, sha) in &manifest.files {
        let path = dir.join(STORE_DIR).join(rel);
        if !path.exists() {
            return Err(BackupError::Corrupt {
                dir: dir.to_path_buf(),
                detail: format!("{rel} is missing"),
            });
        }
        let (actual_size, actual_sha) = sha256_file(&path, &mut |n| {
            done += n;
            progress("verifying", done, total);
        })?;
        if actual_size != *size || actual_sha != *sha {
            return Err(BackupError::Corrupt {
                dir: dir.to_path_buf(),
                detail: format!("{rel} does not match its checksum"),
            });
        }
    }
    Ok(manifest)
}

/// What a deep verification read.
#[derive(Clone, Debug)]
pub struct DeepReport {
    pub manifest: Manifest,
    pub keys: u64,
    pub transactions: u64,
}

/// [`verify`], then opens the backup's store read-only (nothing in the backup changes), reads
/// every key and value (RocksDB checks block checksums; every version key must decode), and
/// checks the transactions table: every entry well-formed, and no commit at or after F (every
/// commit in the snapshot happened before F was fetched).
pub fn verify_deep(dir: &Path) -> Result<DeepReport> {
    let manifest = verify(dir)?;
    let corrupt = |detail: String| BackupError::Corrupt {
        dir: dir.to_path_buf(),
        detail,
    };
    // A compressed backup is checked in a decompressed scratch copy.
    let scratch = tempfile::tempdir().map_err(io(
        "cannot create a scratch directory in",
        &std::env::temp_dir(),
    ))?;
    let store_dir = if manifest.compressed {
        for (rel, _, _) in &manifest.files {
            let from = dir.join(STORE_DIR).join(rel);
            let to = scratch.path().join(rel.trim_end_matches(".zst"));
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
            }
            let reader = std::fs::File::open(&from).map_err(io("cannot read", &from))?;
            let writer = std::fs::File::create(&to).map_err(io("cannot write", &to))?;
            zstd::stream::copy_decode(reader, writer)
                .map_err(|e| corrupt(format!("{rel} does not decompress: {e}")))?;
        }
        scratch.path().to_path_buf()
    } else {
        dir.join(STORE_DIR)
    };
    let kvs = RocksDbKvs::open_read_only(&store_dir, &RocksDbConfig::default())
        .map_err(|e| corrupt(e.to_string()))?;
    let keys = kvs.verify_integrity().map_err(|e| corrupt(e.to_string()))?;
    let kvs: Arc<dyn KeyValueService> = Arc::new(kvs);
    let table = ortelius_kvs::TableRef::system(ortelius_txn::TRANSACTIONS_TABLE)
        .map_err(|e| corrupt(e.to_string()))?;
    if !kvs
        .list_tables()
        .map_err(|e| corrupt(e.to_string()))?
        .contains(&table)
    {
        return Err(corrupt("the store has no transactions table".to_owned()));
    }
    let txns =
        ortelius_txn::TransactionsTable::new(kvs, 1024).map_err(|e| corrupt(e.to_string()))?;
    let mut late = None;
    let transactions = txns
        .scan(|start, status| {
            if let ortelius_txn::TxnStatus::Committed(commit) = status {
                if commit >= manifest.fast_forward_ts && late.is_none() {
                    late = Some((start, commit));
                }
            }
            Ok(())
        })
        .map_err(|e| corrupt(e.to_string()))?;
    if let Some((start, commit)) = late {
        return Err(corrupt(format!(
            "transaction {start} is recorded as committed at {commit}, not before F = {}: the store is not the snapshot this manifest describes",
            manifest.fast_forward_ts
        )));
    }
    Ok(DeepReport {
        manifest,
        keys,
        transactions,
    })
}

/// What a restore did.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    pub manifest: Manifest,
    pub as_of: Timestamp,
    pub transactions_removed: u64,
    pub bytes_copied: u64,
    /// Bytes of SST files hard-linked instead of copied (backup on the same filesystem).
    pub bytes_linked: u64,
}

/// Restores `backup_dir` into `target` (offline). Refuses a non-empty target unless `force`
/// or the target holds an unfinished restore (which is started over).
pub fn restore(
    backup_dir: &Path,
    target: &Path,
    force: bool,
    as_of: Option<Timestamp>,
) -> Result<RestoreReport> {
    restore_with_progress(backup_dir, target, force, as_of, &no_progress)
}

/// [`restore`], reporting verification and copying to `progress`.
pub fn restore_with_progress(
    backup_dir: &Path,
    target: &Path,
    force: bool,
    as_of: Option<Timestamp>,
    progress: Progress<'_>,
) -> Result<RestoreReport> {
    let manifest = verify_with_progress(backup_dir, progress)?;
    let as_of = as_of.unwrap_or(manifest.backup_ts);
    if as_of < manifest.oldest_complete_ts || as_of > manifest.backup_ts {
        return Err(BackupError::AsOfOutOfRange {
            as_of,
            oldest: manifest.oldest_complete_ts,
            backup_ts: manifest.backup_ts,
        });
    }
    if !is_empty_dir(target)? {
        if !force && !target.join(RESTORE_MARKER).exists() {
            return Err(BackupError::NotEmpty {
                path: target.to_path_buf(),
                hint: ", or pass --force to replace its contents",
            });
        }
        std::fs::remove_dir_all(target).map_err(io("cannot clear", target))?;
    }
    std::fs::create_dir_all(target).map_err(io("cannot create", target))?;
    write_synced(
        &target.join(RESTORE_MARKER),
        format!("restoring {}\n", backup_dir.display()).as_bytes(),
    )?;
    let (mut bytes_copied, mut bytes_linked) = (0, 0);
    let total: u64 = manifest.files.iter().map(|f| f.1).sum();
    for (rel, size, _) in &manifest.files {
        let (from, to) = (backup_dir.join(STORE_DIR).join(rel), target.join(rel));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(io("cannot create", parent))?;
        }
        // SST files are immutable (RocksDB only ever unlinks them), so on the same filesystem
        // a hard link restores them without reading them again; everything else is copied.
        if manifest.compressed {
            let to = target.join(rel.trim_end_matches(".zst"));
            let reader = std::fs::File::open(&from).map_err(io("cannot read", &from))?;
            let mut writer = std::fs::File::create(&to).map_err(io("cannot write", &to))?;
            zstd::stream::copy_decode(reader, &mut writer)
                .map_err(io("cannot decompress", &from))?;
            bytes_copied += std::fs::metadata(&to).map(|m| m.len()).unwrap_or(0);
        } else if rel.ends_with(".sst") && std::fs::hard_link(&from, &to).is_ok() {
            bytes_linked += size;
        } else {
            bytes_copied += std::fs::copy(&from, &to).map_err(io("cannot copy", &from))?;
        }
        progress("restoring", bytes_copied + bytes_linked, total);
    }
    let store = |e: ortelius_kvs::KvsError| BackupError::Source(e.to_string());
    let transactions_removed = {
        let kvs: Arc<dyn KeyValueService> =
            Arc::new(RocksDbKvs::open_restoring(target, &RocksDbConfig::default()).map_err(store)?);
        let m = TransactionManager::embedded(kvs.clone(), TransactionConfig::default())
            .map_err(|e| BackupError::Source(e.to_string()))?;
        let cleaned = m
            .transactions_table()
            .clean_from(as_of, |_| {})
            .map_err(store)?;
        m.timestamps()
            .fast_forward(manifest.fast_forward_ts)
            .map_err(|e| BackupError::Source(e.to_string()))?;
        match BackupLock::new(kvs, Arc::new(SystemWallClock)).and_then(|l| l.release()) {
            Ok(_) | Err(BackupLockError::NotHeld) => {}
            Err(e) => return Err(BackupError::Source(e.to_string())),
        }
        cleaned.deleted
    };
    std::fs::remove_file(target.join(RESTORE_MARKER))
        .map_err(io("cannot finish the restore in", target))?;
    Ok(RestoreReport {
        manifest,
        as_of,
        transactions_removed,
        bytes_copied,
        bytes_linked,
    })
}

/// A backup source that owns the store in this process (offline use, the demo, tests).
pub struct DirectSource {
    pub manager: TransactionManager,
    pub lock: BackupLock,
    pub sweeper: ortelius_txn::Sweeper,
}

impl DirectSource {
    pub fn new(manager: TransactionManager) -> std::result::Result<Self, String> {
        let lock = BackupLock::new(manager.kvs().clone(), Arc::new(SystemWallClock))
            .map_err(|e| e.to_string())?;
        let sweeper = ortelius_txn::Sweeper::new(
            manager.clone(),
            lock.clone(),
            ortelius_txn::SweepConfig::default(),
        )
        .map_err(|e| e.to_string())?;
        Ok(Self {
            manager,
            lock,
            sweeper,
        })
    }
}

impl BackupSource for DirectSource {
    fn acquire_lock(&self, reason: &str, lease: Duration) -> std::result::Result<(), String> {
        let holder = format!("ortelius backup (pid {})", std::process::id());
        self.lock
            .acquire(&holder, reason, Some(lease), Duration::from_secs(120))
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn release_lock(&self) -> std::result::Result<(), String> {
        self.lock.release().map(drop).map_err(|e| e.to_string())
    }
    fn fresh_timestamp(&self) -> std::result::Result<Timestamp, String> {
        self.manager.fresh_timestamp().map_err(|e| e.to_string())
    }
    fn sweep_timestamp(&self) -> std::result::Result<Timestamp, String> {
        self.sweeper.sweep_timestamp().map_err(|e| e.to_string())
    }
    fn checkpoint(&self, dir: &Path) -> std::result::Result<(), String> {
        self.manager
            .kvs()
            .checkpoint(dir)
            .map_err(|e| e.to_string())
    }
}
