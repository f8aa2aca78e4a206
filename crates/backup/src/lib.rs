//! Backup and restore: the AtlasDB-compatible runbook in one command each way, for every
//! backend.
//!
//! A backup directory holds `BACKUP-STARTED` (written first), `store/` (the backend's raw
//! snapshot) and `manifest.json` (written last, atomically). A directory with the marker but no
//! manifest is an incomplete backup, and is never restored; while it is written it also holds
//! `SNAPSHOT-TAKEN.json` and `STORED-FILES.journal`, from which an interrupted backup resumes
//! (see `resume.rs`).
//!
//! The runbook here is engine-neutral: live steps go through a [`StoreOwner`] (a running
//! process's management API, or the store opened directly), raw snapshots through the
//! backend's `SnapshotSource` / `RestoreTarget` / `SnapshotFormat`, and backends are found only
//! through `ortelius-backends`.
//!
//! - [`backup`](backup::backup_cancellable): lock → sweep timestamp → B → raw snapshot → F →
//!   release → snapshot record → store files (journaled) → manifest.
//! - [`verify`](verify::verify), [`verify_deep`](verify::verify_deep).
//! - [`restore`](restore::restore_with): verify → assemble (journaled) → load into an empty
//!   target (marked with the backup's identity) → clean transactions from B → fast-forward to F
//!   → release the persisted lock → unmark. A re-run resumes the assembly and, where the backend
//!   can, the load; a target already loaded from the same backup goes straight to the steps
//!   after the load.

mod backup;
mod crypt;
mod error;
mod files;
mod manifest;
mod owner;
mod progress;
mod restore;
mod resume;
mod verify;

pub use backup::{backup, backup_cancellable, BackupOptions, BackupReport, BACKUP_LOCK_LEASE};
pub use crypt::BackupKey;
pub use error::BackupError;
pub use manifest::{
    Compression, FileEntry, Manifest, FORMAT_VERSION, MANIFEST, SNAPSHOT_RECORD, STARTED_MARKER,
    STORE_DIR, STORE_JOURNAL,
};
pub use owner::{
    DirectOwner, OwnerError, ScanAnswer, ScanRequest, SnapshotTaken, StoreOwner, SweepSummary,
    TableInfo, LOCK_WAIT, MAX_SCAN_ROWS,
};
pub use progress::{no_progress, Progress, RateLimit};
pub use restore::{restore, restore_with, RestoreOptions, RestoreReport};
pub use verify::{
    verify, verify_deep, verify_deep_with, verify_with, verify_with_progress, DeepReport,
};
