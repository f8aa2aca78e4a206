//! Errors of backup, verification and restore.

use std::path::{Path, PathBuf};

use ortelius_kvs::Timestamp;

use crate::manifest::MANIFEST;

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
    #[error("{target} is not empty; restore into an empty store, or pass --force to replace its contents")]
    TargetInUse { target: String },
    #[error("{} is an incomplete backup (started, never finished): it cannot be restored; run the same backup command again to finish it, or take a new backup", .0.display())]
    Incomplete(PathBuf),
    #[error("{} is not a backup (no {MANIFEST})", .0.display())]
    NotABackup(PathBuf),
    #[error("backup {} cannot be read: {detail}", .dir.display())]
    Key { dir: PathBuf, detail: String },
    #[error("backup {} is damaged: {detail}", .dir.display())]
    Corrupt { dir: PathBuf, detail: String },
    #[error("backup {} holds a {backup_kind} store, but the configured store is {target_kind}; restore it into a {backup_kind} store", .dir.display())]
    WrongStoreKind {
        dir: PathBuf,
        backup_kind: String,
        target_kind: String,
    },
    #[error("this build cannot read {kind} backups")]
    UnknownStoreKind { kind: String },
    #[error("cannot restore as of {as_of}: this backup holds every version only in {oldest}..={backup_ts}")]
    AsOfOutOfRange {
        as_of: Timestamp,
        oldest: Timestamp,
        backup_ts: Timestamp,
    },
    #[error("cancelled; the backup lock was released and {MANIFEST} not written (run the same backup command again to resume)")]
    Cancelled,
    #[error("another backup is writing into {} right now; wait for it, or choose another directory", .dir.display())]
    Busy { dir: PathBuf },
    #[error("another restore of this backup is assembling its files in {} right now; wait for it to finish", .dir.display())]
    RestoreBusy { dir: PathBuf },
    /// The store's owner refused or failed a step.
    #[error(transparent)]
    Owner(#[from] crate::owner::OwnerError),
    #[error("{0}")]
    Store(String),
}

pub type Result<T> = std::result::Result<T, BackupError>;

/// Maps an I/O error on `path` to [`BackupError::Io`].
pub(crate) fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> BackupError + 'a {
    move |source| BackupError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Maps any store-level error to [`BackupError::Store`].
pub(crate) fn store(e: impl std::fmt::Display) -> BackupError {
    BackupError::Store(e.to_string())
}
