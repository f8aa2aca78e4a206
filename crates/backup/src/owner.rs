//! The store's owner: whoever runs the timestamp service, the backup lock and sweep for a store.
//! The runbook's live steps talk to it through [`StoreOwner`]: a running process through its
//! management API (implemented in `ortelius-management`), or the store opened directly here
//! ([`DirectOwner`]). Each command picks an owner once and does not care which it got.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::snapshot::SnapshotSource;
use ortelius_kvs::{TableRef, Timestamp};
use ortelius_txn::{
    BackupLock, BackupLockError, BackupLockHolder, BackupLockStatus, SweepConfig, SweepReport,
    Sweeper, SystemWallClock, TransactionManager,
};
use serde::{Deserialize, Serialize};

/// How long acquiring the backup lock waits for deletions in flight to finish.
pub const LOCK_WAIT: Duration = Duration::from_secs(120);

/// What one sweep of a table did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepSummary {
    pub table: Option<String>,
    pub sweep_ts: Timestamp,
    pub cells_examined: u64,
    pub versions_deleted: u64,
    pub paused_by_backup_lock: bool,
    pub complete: bool,
    pub dry_run: bool,
}

impl From<&SweepReport> for SweepSummary {
    fn from(r: &SweepReport) -> Self {
        Self {
            table: r.table.as_ref().map(TableRef::qualified_name),
            sweep_ts: r.sweep_ts,
            cells_examined: r.cells_examined,
            versions_deleted: r.versions_deleted,
            paused_by_backup_lock: r.paused_by_backup_lock,
            complete: r.complete,
            dry_run: r.dry_run,
        }
    }
}

/// A raw snapshot the owner took.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotTaken {
    pub store_kind: String,
    /// (directory prefix, node) for stores of several nodes.
    pub origins: Vec<(String, String)>,
}

/// Why an owner refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The backup lock is already held (the message names the holder).
    #[error("{0}")]
    LockHeld(String),
    #[error("the backup lock is not held; nothing to release")]
    LockNotHeld,
    /// A request the owner rejects as malformed.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Failed(String),
}

impl OwnerError {
    fn failed(e: impl std::fmt::Display) -> Self {
        Self::Failed(e.to_string())
    }
}

impl From<BackupLockError> for OwnerError {
    fn from(e: BackupLockError) -> Self {
        match e {
            BackupLockError::AlreadyHeld(_) => Self::LockHeld(e.to_string()),
            BackupLockError::NotHeld => Self::LockNotHeld,
            BackupLockError::Invalid(m) => Self::Invalid(m),
            other => Self::Failed(other.to_string()),
        }
    }
}

/// The runbook's live operations on a store, whoever owns it.
pub trait StoreOwner: Send + Sync {
    /// Who this is, for messages ("the process serving 127.0.0.1:7878", ...).
    fn describe(&self) -> String;
    fn fresh_timestamp(&self) -> Result<Timestamp, OwnerError>;
    /// The immutable timestamp: below the start of every running write transaction.
    fn immutable_timestamp(&self) -> Result<Timestamp, OwnerError>;
    /// The current sweep timestamp: every version at or above it is still stored.
    fn sweep_timestamp(&self) -> Result<Timestamp, OwnerError>;
    fn acquire_backup_lock(
        &self,
        holder: &str,
        reason: &str,
        lease: Option<Duration>,
    ) -> Result<BackupLockHolder, OwnerError>;
    fn release_backup_lock(&self) -> Result<BackupLockHolder, OwnerError>;
    fn backup_lock_status(&self) -> Result<BackupLockStatus, OwnerError>;
    /// A raw snapshot of the live store into `dir` (new); with `node`, of that node alone
    /// (stores of several nodes, snapshotted one node at a time as in the seed runbook).
    fn snapshot(&self, dir: &Path, node: Option<usize>) -> Result<SnapshotTaken, OwnerError>;
    /// Sweeps one table (`namespace.name`) or all of them.
    fn sweep(&self, table: Option<&str>, dry_run: bool) -> Result<Vec<SweepSummary>, OwnerError>;
}

/// The owner in this process: the store opened directly (offline use, `ortelius serve`, an
/// application embedding Ortelius, tests).
#[derive(Clone)]
pub struct DirectOwner {
    manager: TransactionManager,
    lock: BackupLock,
    sweeper: Sweeper,
    snapshots: Arc<dyn SnapshotSource>,
    description: String,
}

impl DirectOwner {
    pub fn new(
        manager: TransactionManager,
        snapshots: Arc<dyn SnapshotSource>,
        description: impl Into<String>,
    ) -> Result<Self, OwnerError> {
        let lock = BackupLock::new(manager.kvs().clone(), Arc::new(SystemWallClock))
            .map_err(OwnerError::failed)?;
        let sweeper = Sweeper::new(manager.clone(), lock.clone(), SweepConfig::default())
            .map_err(OwnerError::failed)?;
        Ok(Self {
            manager,
            lock,
            sweeper,
            snapshots,
            description: description.into(),
        })
    }

    pub fn manager(&self) -> &TransactionManager {
        &self.manager
    }

    pub fn backup_lock(&self) -> &BackupLock {
        &self.lock
    }

    pub fn sweeper(&self) -> &Sweeper {
        &self.sweeper
    }
}

impl StoreOwner for DirectOwner {
    fn describe(&self) -> String {
        self.description.clone()
    }

    fn fresh_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.manager.fresh_timestamp().map_err(OwnerError::failed)
    }

    fn immutable_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.manager
            .immutable_timestamp()
            .map_err(OwnerError::failed)
    }

    fn sweep_timestamp(&self) -> Result<Timestamp, OwnerError> {
        self.sweeper.sweep_timestamp().map_err(OwnerError::failed)
    }

    fn acquire_backup_lock(
        &self,
        holder: &str,
        reason: &str,
        lease: Option<Duration>,
    ) -> Result<BackupLockHolder, OwnerError> {
        Ok(self.lock.acquire(holder, reason, lease, LOCK_WAIT)?)
    }

    fn release_backup_lock(&self) -> Result<BackupLockHolder, OwnerError> {
        Ok(self.lock.release()?)
    }

    fn backup_lock_status(&self) -> Result<BackupLockStatus, OwnerError> {
        Ok(self.lock.status()?)
    }

    fn snapshot(&self, dir: &Path, node: Option<usize>) -> Result<SnapshotTaken, OwnerError> {
        let info = match node {
            None => self.snapshots.take(dir, &|_, _| {}),
            Some(n) => self.snapshots.take_node(dir, n, &|_, _| {}),
        }
        .map_err(OwnerError::failed)?;
        Ok(SnapshotTaken {
            store_kind: self.snapshots.store_kind().to_owned(),
            origins: info.origins,
        })
    }

    fn sweep(&self, table: Option<&str>, dry_run: bool) -> Result<Vec<SweepSummary>, OwnerError> {
        let reports = match table {
            Some(name) => {
                let table =
                    TableRef::parse(name).map_err(|e| OwnerError::Invalid(e.to_string()))?;
                vec![self
                    .sweeper
                    .sweep_table(&table, dry_run)
                    .map_err(OwnerError::failed)?]
            }
            None => self
                .sweeper
                .sweep_all(dry_run)
                .map_err(OwnerError::failed)?,
        };
        Ok(reports.iter().map(SweepSummary::from).collect())
    }
}
