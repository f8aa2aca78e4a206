//! The wire contract of the management API, shared by server and client: paths, request
//! bodies and answers (JSON). Answers of the lock, sweep, snapshot and console calls are the
//! backup layer's own types (`BackupLockHolder`, `BackupLockStatus`, `SweepSummary`,
//! `SnapshotTaken`, `ScanRequest`/`ScanAnswer`).

use serde::{Deserialize, Serialize};

pub const HEALTH: &str = "/v1/health";
pub const FRESH_TIMESTAMP: &str = "/v1/timestamp/fresh";
pub const IMMUTABLE_TIMESTAMP: &str = "/v1/timestamp/immutable";
pub const SWEEP_TIMESTAMP: &str = "/v1/sweep/timestamp";
pub const LOCK_ACQUIRE: &str = "/v1/backup-lock/acquire";
pub const LOCK_RELEASE: &str = "/v1/backup-lock/release";
pub const LOCK_STATUS: &str = "/v1/backup-lock/status";
pub const SNAPSHOT: &str = "/v1/snapshot";
pub const SWEEP: &str = "/v1/sweep";
pub const TABLES: &str = "/v1/tables";
pub const SCAN: &str = "/v1/scan";
/// Prometheus text format (not JSON); needs the token like every other call.
pub const METRICS: &str = "/metrics";

/// `GET /v1/health`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    /// Who owns the store (e.g. "the RocksDB store at /var/lib/app").
    pub owner: String,
    /// The serving process's id (absent in answers of older servers).
    #[serde(default)]
    pub pid: Option<u32>,
}

/// The answer of the timestamp calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimestampAnswer {
    pub timestamp: i64,
}

/// `POST /v1/backup-lock/acquire`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcquireRequest {
    pub holder: String,
    pub reason: String,
    #[serde(default)]
    pub lease_secs: Option<u64>,
}

/// `POST /v1/backup-lock/release`: with `holder`, only if it holds the lock. An empty body
/// releases whoever holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    #[serde(default)]
    pub holder: Option<String>,
}

/// `POST /v1/snapshot`: an absolute directory on the server's machine; `node` picks one node
/// of a store of several.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRequest {
    pub dir: String,
    #[serde(default)]
    pub node: Option<usize>,
}

/// `POST /v1/sweep`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepRequest {
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub dry_run: bool,
}

/// What a refused or failed call answers (with a 4xx or 5xx status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorAnswer {
    pub error: String,
    /// `lock_held`, `lock_not_held`, `invalid`, `unauthorized`, `not_found` or `failed`.
    pub kind: String,
}

/// The longest lease a lock request may ask for (ten years).
pub const MAX_LEASE_SECS: u64 = 10 * 365 * 24 * 3600;
