//! The server side: serves any [`StoreOwner`] (in practice the process's `DirectOwner`).

use std::path::Path;
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
        token: Option<String>,
        owner: Arc<dyn StoreOwner>,
    ) -> Result<RunningServer, String> {
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
            let (server, stop, token, owner) =
                (server.clone(), stop.clone(), token.clone(), owner.clone());
            let handle = std::thread::Builder::new()
                .name(format!("ortelius-management-{worker}"))
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50)) {
                            handle(request, token.as_deref(), &*owner);
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

fn handle(mut request: Request, token: Option<&str>, owner: &dyn StoreOwner) {
    let authorized = token.is_none_or(|t| {
        request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Authorization") && h.value.as_str() == format!("Bearer {t}"))
    });
    let result = if authorized {
        let mut body = String::new();
        match request.as_reader().read_to_string(&mut body) {
            Ok(_) => route(request.method(), request.url(), &body, owner),
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
    let mut response = Response::from_string(text).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
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

fn route(
    method: &Method,
    url: &str,
    body: &str,
    owner: &dyn StoreOwner,
) -> Result<String, ApiError> {
    let ts = |timestamp| answer(&api::TimestampAnswer { timestamp });
    match (method, url) {
        (Method::Get, api::HEALTH) => answer(&Health {
            status: "ok".to_owned(),
            owner: owner.describe(),
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
        (Method::Post, api::LOCK_RELEASE) => answer(&owner.release_backup_lock()?),
        (Method::Get, api::LOCK_STATUS) => answer(&owner.backup_lock_status()?),
        (Method::Post, api::SNAPSHOT) => {
            let request: SnapshotRequest = parse(body)?;
            let dir = Path::new(&request.dir);
            if !dir.is_absolute() {
                return Err(ApiError::new(
                    400,
                    "invalid",
                    "the snapshot dir must be an absolute path",
                ));
            }
            answer(&owner.snapshot(dir, request.node)?)
        }
        (Method::Post, api::SWEEP) => {
            let request: SweepRequest = parse(body)?;
            answer(&owner.sweep(request.table.as_deref(), request.dry_run)?)
        }
        _ => Err(ApiError::new(
            404,
            "not_found",
            format!("no such endpoint: {method} {url}"),
        )),
    }
}
