//! The client side: a running process's management API as a [`StoreOwner`] (plain HTTP/1.1
//! over a TCP stream; the API is on loopback by default).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use ortelius_backup::{
    OwnerError, ScanAnswer, ScanRequest, SnapshotTaken, StoreOwner, SweepSummary, TableInfo,
};
use ortelius_kvs::Timestamp;
use ortelius_txn::{BackupLockHolder, BackupLockStatus};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::api::{self, AcquireRequest, ErrorAnswer, Health, SnapshotRequest, SweepRequest};

/// How long a connection attempt may take: an address where nothing answers fails fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a health check waits for its answer.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long any other call waits (a snapshot of a large store takes a while).
const CALL_TIMEOUT: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("no management API answers at {address}: {detail}")]
    Unreachable { address: String, detail: String },
    #[error("the management API at {address} refused: {}", answer.error)]
    Refused {
        address: String,
        status: u16,
        answer: ErrorAnswer,
    },
    #[error("the management API at {address} answered something unreadable: {detail}")]
    Garbled { address: String, detail: String },
}

impl From<ManagementError> for OwnerError {
    fn from(e: ManagementError) -> Self {
        match &e {
            ManagementError::Refused { answer, .. } => match answer.kind.as_str() {
                "lock_held" => Self::LockHeld(answer.error.clone()),
                "lock_not_held" => Self::LockNotHeld,
                "invalid" => Self::Invalid(answer.error.clone()),
                _ => Self::Failed(e.to_string()),
            },
            _ => Self::Failed(e.to_string()),
        }
    }
}

/// Talks to a running process's management API.
#[derive(Clone, Debug)]
pub struct ManagementClient {
    address: String,
    token: Option<String>,
}

impl ManagementClient {
    pub fn new(address: &str, token: Option<String>) -> Self {
        Self {
            address: address.to_owned(),
            token,
        }
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    fn connect(&self, timeout: Duration) -> Result<TcpStream, ManagementError> {
        let unreachable = |detail: String| ManagementError::Unreachable {
            address: self.address.clone(),
            detail,
        };
        let addrs = self
            .address
            .to_socket_addrs()
            .map_err(|e| unreachable(e.to_string()))?;
        let mut last = "the address resolves to nothing".to_owned();
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT) {
                Ok(stream) => {
                    stream
                        .set_read_timeout(Some(timeout))
                        .and_then(|()| stream.set_write_timeout(Some(timeout)))
                        .map_err(|e| unreachable(e.to_string()))?;
                    return Ok(stream);
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(unreachable(last))
    }

    /// Sends one request; returns the decoded answer of a 2xx response.
    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<T, ManagementError> {
        let payload = self.call_raw(method, path, body, timeout)?;
        serde_json::from_str(&payload).map_err(|e| ManagementError::Garbled {
            address: self.address.clone(),
            detail: format!("{e}: {payload}"),
        })
    }

    /// Sends one request; returns the body of a 2xx response.
    fn call_raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&impl Serialize>,
        timeout: Duration,
    ) -> Result<String, ManagementError> {
        let unreachable = |detail: String| ManagementError::Unreachable {
            address: self.address.clone(),
            detail,
        };
        let garbled = |detail: String| ManagementError::Garbled {
            address: self.address.clone(),
            detail,
        };
        let body = match body {
            Some(b) => serde_json::to_string(b).map_err(|e| garbled(e.to_string()))?,
            None => String::new(),
        };
        let mut stream = self.connect(timeout)?;
        let auth = self
            .token
            .as_ref()
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.address,
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .map_err(|e| unreachable(e.to_string()))?;
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .map_err(|e| unreachable(e.to_string()))?;
        let (head, payload) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| garbled("no header end".to_owned()))?;
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| garbled("no status".to_owned()))?;
        if (200..300).contains(&status) {
            Ok(payload.to_owned())
        } else {
            let answer: ErrorAnswer = serde_json::from_str(payload).unwrap_or(ErrorAnswer {
                error: format!("HTTP {status}: {payload}"),
                kind: "failed".to_owned(),
            });
            Err(ManagementError::Refused {
                address: self.address.clone(),
                status,
                answer,
            })
        }
    }

    fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, OwnerError> {
        Ok(self.call("POST", path, body, CALL_TIMEOUT)?)
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, OwnerError> {
        Ok(self.call("GET", path, None::<&()>, CALL_TIMEOUT)?)
    }

    /// The health answer, if a process answers (used to decide between live and offline).
    pub fn health(&self) -> Result<Health, ManagementError> {
        self.call("GET", api::HEALTH, None::<&()>, HEALTH_TIMEOUT)
    }

    /// Whether a process answers.
    pub fn is_live(&self) -> bool {
        self.health().is_ok()
    }
}

impl StoreOwner for ManagementClient {
    fn describe(&self) -> String {
        format!("the process serving the management API at {}", self.address)
    }

    fn fresh_timestamp(&self) -> Result<Timestamp, OwnerError> {
        Ok(self
            .post::<api::TimestampAnswer>(api::FRESH_TIMESTAMP, None::<&()>)?
            .timestamp)
    }

    fn immutable_timestamp(&self) -> Result<Timestamp, OwnerError> {
        Ok(self
            .post::<api::TimestampAnswer>(api::IMMUTABLE_TIMESTAMP, None::<&()>)?
            .timestamp)
    }

    fn sweep_timestamp(&self) -> Result<Timestamp, OwnerError> {
        Ok(self
            .get::<api::TimestampAnswer>(api::SWEEP_TIMESTAMP)?
            .timestamp)
    }

    fn acquire_backup_lock(
        &self,
        holder: &str,
        reason: &str,
        lease: Option<Duration>,
    ) -> Result<BackupLockHolder, OwnerError> {
        let request = AcquireRequest {
            holder: holder.to_owned(),
            reason: reason.to_owned(),
            lease_secs: lease.map(|l| l.as_secs().max(1)),
        };
        self.post(api::LOCK_ACQUIRE, Some(&request))
    }

    fn release_backup_lock(&self, holder: Option<&str>) -> Result<BackupLockHolder, OwnerError> {
        let request = api::ReleaseRequest {
            holder: holder.map(str::to_owned),
        };
        self.post(api::LOCK_RELEASE, Some(&request))
    }

    fn backup_lock_status(&self) -> Result<BackupLockStatus, OwnerError> {
        self.get(api::LOCK_STATUS)
    }

    fn snapshot(&self, dir: &Path, node: Option<usize>) -> Result<SnapshotTaken, OwnerError> {
        let dir = std::path::absolute(dir)
            .map_err(|e| OwnerError::Invalid(format!("bad directory {}: {e}", dir.display())))?;
        let request = SnapshotRequest {
            dir: dir.to_string_lossy().into_owned(),
            node,
        };
        self.post(api::SNAPSHOT, Some(&request))
    }

    fn sweep(&self, table: Option<&str>, dry_run: bool) -> Result<Vec<SweepSummary>, OwnerError> {
        let request = SweepRequest {
            table: table.map(str::to_owned),
            dry_run,
        };
        self.post(api::SWEEP, Some(&request))
    }

    fn tables(&self) -> Result<Vec<TableInfo>, OwnerError> {
        self.get(api::TABLES)
    }

    fn scan(&self, request: &ScanRequest) -> Result<ScanAnswer, OwnerError> {
        self.post(api::SCAN, Some(request))
    }

    fn metrics(&self) -> Result<String, OwnerError> {
        Ok(self.call_raw("GET", api::METRICS, None::<&()>, CALL_TIMEOUT)?)
    }
}
