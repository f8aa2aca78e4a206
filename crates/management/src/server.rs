//! The server side: serves any [`StoreOwner`] (in practice the process's `DirectOwner`).

use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ortelius_backup::{OwnerError, StoreOwner};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tiny_http::{Header, Method, Request, Response, Server};

use crate::api::{self, AcquireRequest, ErrorAnswer, Health, SnapshotRequest, SweepRequest};

/// Requests served at once: a long call (a snapshot, a lock acquire waiting for deletions)
/// does not hold up health checks or status calls.
const WORKERS: usize = 4;

/// Starts the API.
pub struct ManagementServer;

/// Who may call the API and where snapshots may go.
#[derive(Clone, Debug, Default)]
pub struct Access {
    /// The bearer token every call must present; required when the address is not loopback.
    pub token: Option<String>,
    /// Directories a caller from another machine may write snapshots under (a caller on
    /// loopback may name any absolute directory, as the operator running the CLI there can).
    pub backup_roots: Vec<PathBuf>,
}

/// A running API; [`RunningServer::shutdown`] (or dropping it) stops it.
pub struct RunningServer {
    pub address: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl RunningServer {
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

impl ManagementServer {
    /// Serves `owner` on `address` (e.g. `127.0.0.1:7878`; port 0 picks one) until stopped.
    pub fn start(
        address: &str,
        access: Access,
        owner: Arc<dyn StoreOwner>,
    ) -> Result<RunningServer, String> {
        let listening_on_loopback = address
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve the management address {address}: {e}"))?
            .all(|a| a.ip().is_loopback());
        if let Some(root) = access.backup_roots.iter().find(|r| !r.is_absolute()) {
            return Err(format!(
                "management.backupRoots must be absolute directories; {} is not",
                root.display()
            ));
        }
        if !listening_on_loopback && access.token.is_none() {
            return Err(format!(
                "the management API on {address} would be reachable from other machines without a token; set management.token (required whenever the address is not loopback)"
            ));
        }
        let server = Arc::new(
            Server::http(address)
                .map_err(|e| format!("cannot serve the management API on {address}: {e}"))?,
        );
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("the management API on {address} is not on an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(WORKERS);
        for worker in 0..WORKERS {
            let (server, stop, access, owner) =
                (server.clone(), stop.clone(), access.clone(), owner.clone());
            let handle = std::thread::Builder::new()
                .name(format!("ortelius-management-{worker}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50)) {
                            handle(request, &access, &*owner);
                        }
                    }
                })
                .map_err(|e| format!("cannot start the management threads: {e}"))?;
            handles.push(handle);
        }
        Ok(RunningServer {
            address: bound,
            stop,
            handles,
        })
    }
}

/// A refused or failed call: HTTP status and answer.
struct ApiError(u16, ErrorAnswer);

impl ApiError {
    fn new(status: u16, kind: &str, error: impl Into<String>) -> Self {
        Self(
            status,
            ErrorAnswer {
                error: error.into(),
                kind: kind.to_owned(),
            },
        )
    }
}

impl From<OwnerError> for ApiError {
    fn from(e: OwnerError) -> Self {
        match e {
            OwnerError::LockHeld(_) => Self::new(409, "lock_held", e.to_string()),
            OwnerError::LockNotHeld => Self::new(409, "lock_not_held", e.to_string()),
            OwnerError::Invalid(_) => Self::new(400, "invalid", e.to_string()),
            OwnerError::Failed(_) => Self::new(500, "failed", e.to_string()),
        }
    }
}

fn handle(mut request: Request, access: &Access, owner: &dyn StoreOwner) {
    let authorized = access.token.as_deref().is_none_or(|t| {
        request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Authorization") && h.value.as_str() == format!("Bearer {t}"))
    });
    let result = if authorized {
        let mut body = String::new();
        match request.as_reader().read_to_string(&mut body) {
            Ok(_) => {
                let caller = request.remote_addr().map(|a| a.ip());
                route(
                    request.method(),
                    request.url(),
                    &body,
                    caller,
                    access,
                    owner,
                )
            }
            Err(e) => Err(ApiError::new(
                400,
                "invalid",
                format!("unreadable body: {e}"),
            )),
        }
    } else {
        Err(ApiError::new(
            401,
            "unauthorized",
            "missing or wrong bearer token; set management.token in the config",
        ))
    };
    let (status, text) = match result {
        Ok(text) => (200, text),
        Err(ApiError(status, answer)) => (
            status,
            serde_json::to_string(&answer).unwrap_or_else(|_| "{}".to_owned()),
        ),
    };
    let content_type = if status == 200 && request.url() == api::METRICS {
        "text/plain; version=0.0.4"
    } else {
        "application/json"
    };
    let mut response = Response::from_string(text).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", content_type) {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

fn parse<T: DeserializeOwned>(body: &str) -> Result<T, ApiError> {
    let body = if body.trim().is_empty() { "{}" } else { body };
    serde_json::from_str(body)
        .map_err(|e| ApiError::new(400, "invalid", format!("malformed request body: {e}")))
}

fn answer<T: Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value).map_err(|e| ApiError::new(500, "failed", e.to_string()))
}

/// Whether a caller at `caller` may write a snapshot into `dir`: anywhere absolute from
/// loopback, else only below one of the backup roots (and never through `..`).
fn snapshot_allowed(caller: Option<IpAddr>, dir: &Path, roots: &[PathBuf]) -> Result<(), ApiError> {
    if !dir.is_absolute() {
        return Err(ApiError::new(
            400,
            "invalid",
            "the snapshot dir must be an absolute path",
        ));
    }
    let forbidden = |e: String| ApiError::new(403, "invalid", e);
    if caller.is_some_and(|ip| ip.is_loopback()) {
        return Ok(());
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err(forbidden(
            "the snapshot dir must not contain '..'".to_owned(),
        ));
    }
    if roots
        .iter()
        .any(|root| dir.starts_with(root) && dir != root)
    {
        return Ok(());
    }
    Err(forbidden(format!(
        "a caller from another machine may only write snapshots below management.backupRoots ({}); {} is not below one",
        if roots.is_empty() {
            "none configured".to_owned()
        } else {
            roots
                .iter()
                .map(|r| r.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        },
        dir.display()
    )))
}

fn route(
    method: &Method,
    url: &str,
    body: &str,
    caller: Option<IpAddr>,
    access: &Access,
    owner: &dyn StoreOwner,
) -> Result<String, ApiError> {
    let ts = |timestamp| answer(&api::TimestampAnswer { timestamp });
    match (method, url) {
        (Method::Get, api::HEALTH) => answer(&Health {
            status: "ok".to_owned(),
            owner: owner.describe(),
            pid: Some(std::process::id()),
        }),
        (Method::Post, api::FRESH_TIMESTAMP) => ts(owner.fresh_timestamp()?),
        (Method::Post, api::IMMUTABLE_TIMESTAMP) => ts(owner.immutable_timestamp()?),
        (Method::Get, api::SWEEP_TIMESTAMP) => ts(owner.sweep_timestamp()?),
        (Method::Post, api::LOCK_ACQUIRE) => {
            let request: AcquireRequest = parse(body)?;
            let lease = match request.lease_secs {
                Some(secs) if secs == 0 || secs > api::MAX_LEASE_SECS => {
                    return Err(ApiError::new(
                        400,
                        "invalid",
                        format!("lease_secs must be in 1..={}", api::MAX_LEASE_SECS),
                    ))
                }
                other => other.map(Duration::from_secs),
            };
            answer(&owner.acquire_backup_lock(&request.holder, &request.reason, lease)?)
        }
        (Method::Post, api::LOCK_RELEASE) => {
            let request: api::ReleaseRequest = parse(body)?;
            answer(&owner.release_backup_lock(request.holder.as_deref())?)
        }
        (Method::Get, api::LOCK_STATUS) => answer(&owner.backup_lock_status()?),
        (Method::Post, api::SNAPSHOT) => {
            let request: SnapshotRequest = parse(body)?;
            let dir = Path::new(&request.dir);
            snapshot_allowed(caller, dir, &access.backup_roots)?;
            answer(&owner.snapshot(dir, request.node)?)
        }
        (Method::Post, api::SWEEP) => {
            let request: SweepRequest = parse(body)?;
            answer(&owner.sweep(request.table.as_deref(), request.dry_run)?)
        }
        (Method::Get, api::TABLES) => answer(&owner.tables()?),
        (Method::Get, api::METRICS) => Ok(owner.metrics()?),
        (Method::Post, api::SCAN) => {
            let request: ortelius_backup::ScanRequest = parse(body)?;
            answer(&owner.scan(&request)?)
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such endpoint: {method} {url}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn snapshots_from_other_machines_go_only_below_the_backup_roots() {
        let (local, remote) = (
            Some(IpAddr::from([127, 0, 0, 1])),
            Some(IpAddr::from([10, 1, 2, 3])),
        );
        let roots = [PathBuf::from("/backups")];
        let allowed = |caller, dir: &str, roots: &[PathBuf]| {
            snapshot_allowed(caller, Path::new(dir), roots)
                .map_err(|ApiError(status, a)| format!("{status} {}", a.error))
        };
        assert!(allowed(local, "/anywhere/snap", &roots).is_ok());
        assert!(allowed(local, "relative", &roots)
            .unwrap_err()
            .starts_with("400 the snapshot dir must be an absolute path"));
        assert!(allowed(remote, "/backups/2026-12-04", &roots).is_ok());
        for refused in ["/etc/cron.d", "/backups", "/backupsx/a", "/backups/../etc"] {
            assert!(
                allowed(remote, refused, &roots)
                    .unwrap_err()
                    .starts_with("403 "),
                "{refused}"
            );
        }
        assert!(allowed(None, "/backups/a", &[])
            .unwrap_err()
            .contains("none configured"));
    }

    struct NoOwner;
    impl StoreOwner for NoOwner {
        fn describe(&self) -> String {
            "nothing".to_owned()
        }
        fn fresh_timestamp(&self) -> Result<ortelius_kvs::Timestamp, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn immutable_timestamp(&self) -> Result<ortelius_kvs::Timestamp, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn sweep_timestamp(&self) -> Result<ortelius_kvs::Timestamp, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn acquire_backup_lock(
            &self,
            _: &str,
            _: &str,
            _: Option<Duration>,
        ) -> Result<ortelius_txn::BackupLockHolder, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn release_backup_lock(
            &self,
            _: Option<&str>,
        ) -> Result<ortelius_txn::BackupLockHolder, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn backup_lock_status(&self) -> Result<ortelius_txn::BackupLockStatus, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn snapshot(
            &self,
            _: &Path,
            _: Option<usize>,
        ) -> Result<ortelius_backup::SnapshotTaken, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn sweep(
            &self,
            _: Option<&str>,
            _: bool,
        ) -> Result<Vec<ortelius_backup::SweepSummary>, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn tables(&self) -> Result<Vec<ortelius_backup::TableInfo>, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn scan(
            &self,
            _: &ortelius_backup::ScanRequest,
        ) -> Result<ortelius_backup::ScanAnswer, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
        fn metrics(&self) -> Result<String, OwnerError> {
            Err(OwnerError::Failed("none".to_owned()))
        }
    }

    #[test]
    fn an_address_reachable_from_other_machines_needs_a_token() {
        let err = ManagementServer::start("0.0.0.0:0", Access::default(), Arc::new(NoOwner))
            .err()
            .unwrap_or_default();
        assert!(err.contains("management.token"), "{err}");
        let with_token = Access {
            token: Some("t".to_owned()),
            ..Access::default()
        };
        assert!(ManagementServer::start("0.0.0.0:0", with_token, Arc::new(NoOwner)).is_ok());
        assert!(
            ManagementServer::start("127.0.0.1:0", Access::default(), Arc::new(NoOwner)).is_ok()
        );
    }
}
