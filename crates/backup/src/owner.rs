//! The store's owner: whoever runs the timestamp service, the backup lock and sweep for a store.
//! The runbook's live steps talk to it through [`StoreOwner`]: a running process through its
//! management API (implemented in `ortelius-management`), or the store opened directly here
//! ([`DirectOwner`]). Each command picks an owner once and does not care which it got.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::snapshot::SnapshotSource;
use ortelius_kvs::{TableRef, Timestamp};
use ortelius_txn::{
    BackupLock, BackupLockError, BackupLockHolder, BackupLockStatus, SweepConfig, SweepReport,
    Sweeper, SystemWallClock, TransactionManager, WallClock,
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

/// An application table and its settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableInfo {
    /// `namespace.name`.
    pub name: String,
    pub metadata: ortelius_txn::TableMetadata,
}

/// The most rows one console read returns.
pub const MAX_SCAN_ROWS: usize = 10_000;

/// A console read: rows `[start, end)` of a table (empty bounds are open), through the
/// transaction layer at a fresh timestamp or at `at`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRequest {
    /// `namespace.name`.
    pub table: String,
    #[serde(default)]
    pub start: Vec<u8>,
    #[serde(default)]
    pub end: Vec<u8>,
    #[serde(default)]
    pub reverse: bool,
    /// At most this many rows (1..=[`MAX_SCAN_ROWS`]).
    pub limit: usize,
    #[serde(default)]
    pub at: Option<Timestamp>,
}

/// A row and its (column, value) pairs in column order.
pub type ScannedRow = (Vec<u8>, Vec<(Vec<u8>, Vec<u8>)>);

/// What a console read saw.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanAnswer {
    /// The snapshot the rows were read at.
    pub timestamp: Timestamp,
    /// Each row with its (column, value) pairs in column order.
    pub rows: Vec<ScannedRow>,
    /// Whether the range holds more rows than the limit.
    pub more: bool,
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
            BackupLockError::AlreadyHeld(_) | BackupLockError::HeldByAnother { .. } => {
                Self::LockHeld(e.to_string())
            }
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
    /// Releases the backup lock: whoever holds it (`None`, the operator's `--release`), or
    /// only if `holder` does (`LockHeld` otherwise, and the lock is left alone).
    fn release_backup_lock(&self, holder: Option<&str>) -> Result<BackupLockHolder, OwnerError>;
    fn backup_lock_status(&self) -> Result<BackupLockStatus, OwnerError>;
    /// A raw snapshot of the live store into `dir` (new); with `node`, of that node alone
    /// (stores of several nodes, snapshotted one node at a time as in the seed runbook).
    fn snapshot(&self, dir: &Path, node: Option<usize>) -> Result<SnapshotTaken, OwnerError>;
    /// Sweeps one table (`namespace.name`) or all of them.
    fn sweep(&self, table: Option<&str>, dry_run: bool) -> Result<Vec<SweepSummary>, OwnerError>;
    /// The application's tables, without the system tables.
    fn tables(&self) -> Result<Vec<TableInfo>, OwnerError>;
    /// Reads rows through the transaction layer (the console).
    fn scan(&self, request: &ScanRequest) -> Result<ScanAnswer, OwnerError>;
    /// The owner's metrics in the Prometheus text format.
    fn metrics(&self) -> Result<String, OwnerError>;
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
    /// When the last snapshot through this owner finished (ms after the epoch; 0: none yet).
    last_snapshot_ms: Arc<AtomicU64>,
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
            last_snapshot_ms: Arc::new(AtomicU64::new(0)),
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

    fn release_backup_lock(&self, holder: Option<&str>) -> Result<BackupLockHolder, OwnerError> {
        Ok(self.lock.release_held_by(holder)?)
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
        self.last_snapshot_ms
            .store(SystemWallClock.now_ms(), Ordering::Relaxed);
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

    fn tables(&self) -> Result<Vec<TableInfo>, OwnerError> {
        let tables = self
            .manager
            .kvs()
            .list_tables()
            .map_err(OwnerError::failed)?;
        tables
            .iter()
            .filter(|t| !t.namespace().is_empty())
            .map(|t| {
                Ok(TableInfo {
                    name: t.to_string(),
                    metadata: self.manager.table_metadata(t).map_err(OwnerError::failed)?,
                })
            })
            .collect()
    }

    fn scan(&self, request: &ScanRequest) -> Result<ScanAnswer, OwnerError> {
        if request.limit == 0 || request.limit > MAX_SCAN_ROWS {
            return Err(OwnerError::Invalid(format!(
                "the row limit must be in 1..={MAX_SCAN_ROWS}"
            )));
        }
        let table =
            TableRef::parse(&request.table).map_err(|e| OwnerError::Invalid(e.to_string()))?;
        if !self.tables()?.iter().any(|t| t.name == table.to_string()) {
            return Err(OwnerError::Invalid(format!(
                "there is no table {table}; `kvs tables` lists them"
            )));
        }
        let txn = match request.at {
            None => self.manager.begin_read_only(),
            Some(at) => {
                let swept = self.sweep_timestamp()?;
                if at < swept {
                    return Err(OwnerError::Invalid(format!(
                        "cannot read at {at}: sweep may have removed versions older than {swept}; read at {swept} or later"
                    )));
                }
                self.manager.begin_read_only_at(at)
            }
        }
        .map_err(|e| match e {
            ortelius_txn::TxnError::InvalidTimestamp { .. } => OwnerError::Invalid(e.to_string()),
            other => OwnerError::failed(other),
        })?;
        let range = ortelius_kvs::RangeRequest {
            rows: ortelius_kvs::RowRange {
                start: request.start.clone(),
                end: request.end.clone(),
            },
            reverse: request.reverse,
            ..ortelius_kvs::RangeRequest::default()
        };
        let mut rows = Vec::new();
        let mut more = false;
        for row in txn.get_range(&table, &range).map_err(OwnerError::failed)? {
            let row = row.map_err(OwnerError::failed)?;
            if rows.len() == request.limit {
                more = true;
                break;
            }
            rows.push((row.row, row.columns.into_iter().collect()));
        }
        Ok(ScanAnswer {
            timestamp: txn.start_ts(),
            rows,
            more,
        })
    }

    fn metrics(&self) -> Result<String, OwnerError> {
        let mut text = self.manager.metrics().render();
        let status = self.lock.status()?;
        let now = SystemWallClock.now_ms();
        let held_for = status
            .held
            .as_ref()
            .map_or(0.0, |h| now.saturating_sub(h.acquired_at_ms) as f64 / 1e3);
        let last = self.last_snapshot_ms.load(Ordering::Relaxed);
        for (name, help, value) in [
            (
                "ortelius_backup_lock_held",
                "1 while the backup lock is held (sweep and deletions paused).",
                f64::from(u8::from(status.held.is_some())),
            ),
            (
                "ortelius_backup_lock_held_seconds",
                "How long the backup lock has been held (0 when it is not).",
                held_for,
            ),
            (
                "ortelius_deletions_in_flight",
                "Deletion batches registered with the backup lock and not yet finished.",
                status.deletions_in_flight as f64,
            ),
            (
                "ortelius_last_snapshot_timestamp_seconds",
                "When the last raw snapshot (a backup's copy step) through this process finished, in seconds after the epoch (0: none yet).",
                last as f64 / 1e3,
            ),
        ] {
            text.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            ));
        }
        Ok(text)
    }
}
