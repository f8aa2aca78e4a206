//! Backup and restore: the AtlasDB-compatible runbook in one command each way, for every
//! backend.
//!
//! A backup directory holds `BACKUP-STARTED` (written first), `store/` (the backend's raw
//! snapshot) and `manifest.json` (written last, atomically). A directory with the marker but no
//! manifest is an incomplete backup, and is never restored.
//!
//! The runbook here is engine-neutral: live steps go through a [`StoreOwner`] (a running
//! process's management API, or the store opened directly), raw snapshots through the
//! backend's `SnapshotSource` / `RestoreTarget` / `SnapshotFormat`, and backends are found only
//! through `ortelius-backends`.
//!
//! - [`backup`](backup::backup_cancellable): lock → sweep timestamp → B → raw snapshot → F →
//!   release → checksums → manifest.
//! - [`verify`](verify::verify), [`verify_deep`](verify::verify_deep).
//! - [`restore`](restore::restore_with): verify → load into an empty target (marked) → clean
//!   transactions from B → fast-forward to F → release the persisted lock → unmark.

mod backup;
mod crypt;
mod error;
mod files;
mod manifest;
mod owner;
mod progress;
mod restore;
mod verify;

pub use backup::{backup, backup_cancellable, BackupOptions, BACKUP_LOCK_LEASE};
pub use crypt::BackupKey;
pub use error::BackupError;
pub use manifest::{
    Compression, FileEntry, Manifest, FORMAT_VERSION, MANIFEST, STARTED_MARKER, STORE_DIR,
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
