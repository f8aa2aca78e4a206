//! The manifest: written last, it is what makes a backup directory a backup.
//!
//! ```json
//! {"format_version": 1, "store_kind": "rocksdb", "tool_version": "0.1.0",
//!  "backup_ts": 2001, "fast_forward_ts": 2045, "oldest_complete_ts": 1500,
//!  "compression": "none",
//!  "files": [{"path": "000012.sst", "size": 1024, "sha256": "…", "node": "node1"?,
//!             "in_parent": true?}],
//!  "parent": {"dir": "../monday", "backup_ts": 1800}?}
//! ```
//!
//! An incremental backup names its parent; its files marked `in_parent` are stored in the
//! parent (or further up the chain), identical by path, size and checksum.

use std::path::{Path, PathBuf};

use ortelius_kvs::Timestamp;
use serde::{Deserialize, Serialize};

use crate::error::{io, BackupError, Result};
use crate::files::write_synced;

pub const FORMAT_VERSION: u64 = 1;
pub const MANIFEST: &str = "manifest.json";
/// Written first: a directory with it and no manifest is an incomplete backup.
pub const STARTED_MARKER: &str = "BACKUP-STARTED";
/// Written once the raw snapshot is complete (B, F, its files); removed with the journal once
/// the manifest is written. A backup interrupted after it resumes from it.
pub const SNAPSHOT_RECORD: &str = "SNAPSHOT-TAKEN.json";
/// The files stored so far, one line each, while a backup stores its snapshot's files.
pub const STORE_JOURNAL: &str = "STORED-FILES.journal";
/// The subdirectory holding the raw snapshot's files.
pub const STORE_DIR: &str = "store";

/// How the snapshot's files are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    /// Each file zstd-compressed as `<name>.zst`.
    Zstd,
}

/// One stored file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to `store/`, as stored (with `.zst` when compressed).
    pub path: String,
    pub size: u64,
    pub sha256: String,
    /// The node the file came from, for stores of several nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Stored in the parent backup (or further up the chain), not in this one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub in_parent: bool,
}

/// How the stored files are encrypted (never the key).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub algorithm: String,
    /// The key's fingerprint, to tell a wrong key from a damaged file.
    pub key_fingerprint: String,
}

/// The backup an incremental backup builds on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Parent {
    /// Its directory: relative to this backup's directory, or absolute.
    pub dir: String,
    /// Its B, to tell it from another backup put in its place.
    pub backup_ts: Timestamp,
}

/// A backup's manifest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u64,
    /// The backend that took the snapshot (`rocksdb`, `postgres`, ...).
    pub store_kind: String,
    pub tool_version: String,
    /// B: the backup's logical point in time.
    pub backup_ts: Timestamp,
    /// F: above every timestamp used while the snapshot was taken.
    pub fast_forward_ts: Timestamp,
    /// Every version at or above this timestamp is in the backup: a restore may go back to any
    /// timestamp in `oldest_complete_ts..=backup_ts`.
    pub oldest_complete_ts: Timestamp,
    pub compression: Compression,
    pub files: Vec<FileEntry>,
    /// Set on an incremental backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<Parent>,
    /// Set when the files are encrypted (`<name>.enc`, after compression).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
}

impl Manifest {
    /// Checks that `key` is the one the files were encrypted with (and that there is one).
    pub fn check_key(&self, dir: &Path, key: Option<&crate::crypt::BackupKey>) -> Result<()> {
        let refused = |detail: String| BackupError::Key {
            dir: dir.to_path_buf(),
            detail,
        };
        match (&self.encryption, key) {
            (None, _) => Ok(()),
            (Some(e), None) => Err(refused(format!(
                "it is encrypted (key fingerprint {}); give its key file with --encrypt-key-file",
                e.key_fingerprint
            ))),
            (Some(e), Some(k)) if k.fingerprint() != e.key_fingerprint => Err(refused(format!(
                "the key given (fingerprint {}) is not the one it was encrypted with (fingerprint {})",
                k.fingerprint(),
                e.key_fingerprint
            ))),
            (Some(e), Some(_)) if e.algorithm != crate::crypt::ALGORITHM => Err(refused(format!(
                "it is encrypted with {}, which this build cannot read",
                e.algorithm
            ))),
            (Some(_), Some(_)) => Ok(()),
        }
    }
}

impl Manifest {
    /// Bytes of all the snapshot's files (wherever in the chain they are stored).
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Bytes of the files stored in this backup itself (less than the total when incremental).
    pub fn stored_size(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| !f.in_parent)
            .map(|f| f.size)
            .sum()
    }

    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        let text =
            serde_json::to_string_pretty(self).map_err(|e| BackupError::Store(e.to_string()))?;
        write_synced(&dir.join(MANIFEST), text.as_bytes())
    }

    /// Reads the manifest of `dir`, telling an incomplete backup and a non-backup apart.
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(MANIFEST);
        if !path.exists() {
            return Err(if dir.join(STARTED_MARKER).exists() {
                BackupError::Incomplete(dir.to_path_buf())
            } else {
                BackupError::NotABackup(dir.to_path_buf())
            });
        }
        let corrupt = |detail: String| BackupError::Corrupt {
            dir: dir.to_path_buf(),
            detail,
        };
        let text = std::fs::read_to_string(&path).map_err(io("cannot read", &path))?;
        let value: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| corrupt(format!("{MANIFEST} is unreadable: {e}")))?;
        if value
            .get("format_version")
            .and_then(serde_json::Value::as_u64)
            != Some(FORMAT_VERSION)
        {
            return Err(corrupt(format!(
                "unknown manifest format version (this build reads version {FORMAT_VERSION})"
            )));
        }
        let manifest: Self = serde_json::from_value(value)
            .map_err(|e| corrupt(format!("{MANIFEST} is malformed: {e}")))?;
        if manifest.backup_ts >= manifest.fast_forward_ts
            || manifest.oldest_complete_ts > manifest.backup_ts
        {
            return Err(corrupt(format!(
                "{MANIFEST} has inconsistent timestamps (need oldest <= B < F)"
            )));
        }
        Ok(manifest)
    }
}

/// The longest chain of incremental backups followed (a guard against a cycle of parents).
const MAX_CHAIN: usize = 1000;

/// A backup and the ancestors its files are stored in, manifests loaded.
pub struct Chain {
    /// `(directory, manifest)`, the backup itself first.
    levels: Vec<(PathBuf, Manifest)>,
}

impl Chain {
    /// Loads `dir`'s manifest and those of its ancestors; a missing or replaced parent is an
    /// error naming it.
    pub fn load(dir: &Path) -> Result<Self> {
        let mut levels = vec![(dir.to_path_buf(), Manifest::read(dir)?)];
        while let Some((child_dir, child)) = levels.last() {
            let Some(parent) = &child.parent else {
                break;
            };
            let corrupt = |detail: String| BackupError::Corrupt {
                dir: dir.to_path_buf(),
                detail,
            };
            if levels.len() >= MAX_CHAIN {
                return Err(corrupt(format!(
                    "its chain of parent backups is longer than {MAX_CHAIN} (a cycle?)"
                )));
            }
            let parent_dir = child_dir.join(&parent.dir);
            let manifest = Manifest::read(&parent_dir).map_err(|e| {
                corrupt(format!(
                    "it is incremental on {}, which it needs and which cannot be read: {e}",
                    parent_dir.display()
                ))
            })?;
            if manifest.backup_ts != parent.backup_ts {
                return Err(corrupt(format!(
                    "its parent {} is another backup (B = {}, expected {})",
                    parent_dir.display(),
                    manifest.backup_ts,
                    parent.backup_ts
                )));
            }
            levels.push((parent_dir, manifest));
        }
        Ok(Self { levels })
    }

    /// The backup's own manifest (the chain is never empty).
    pub fn manifest(&self) -> &Manifest {
        &self.levels[0].1
    }

    /// Where one of the backup's files is stored.
    pub fn locate(&self, file: &FileEntry) -> Result<PathBuf> {
        let mut entry = file;
        for (i, (dir, _)) in self.levels.iter().enumerate() {
            if !entry.in_parent {
                return Ok(dir.join(STORE_DIR).join(&entry.path));
            }
            let Some((_, parent)) = self.levels.get(i + 1) else {
                break;
            };
            entry = parent
                .files
                .iter()
                .find(|p| p.path == entry.path && p.sha256 == entry.sha256 && p.size == entry.size)
                .ok_or_else(|| BackupError::Corrupt {
                    dir: dir.clone(),
                    detail: format!(
                        "{} is marked as stored in the parent backup, which does not hold it",
                        entry.path
                    ),
                })?;
        }
        Err(BackupError::Corrupt {
            dir: self
                .levels
                .first()
                .map(|(d, _)| d.clone())
                .unwrap_or_default(),
            detail: format!(
                "{} is marked as stored in a parent, but there is none",
                file.path
            ),
        })
    }
}
