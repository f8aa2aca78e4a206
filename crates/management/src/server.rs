//! The server side.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ortelius_kvs::TableRef;
use ortelius_timelock::FastForward;
use ortelius_txn::{BackupLock, BackupLockError, BackupLockHolder, Sweeper, TransactionManager};
use serde_json::{json, Value};
use tiny_http::{Header, Method, Request, Response, Server};

/// What the API operates on.
#[derive(Clone)]
pub struct ManagementState {
    pub manager: TransactionManager,
    pub backup_lock: BackupLock,
    pub sweeper: Sweeper,
}

/// Starts the API.
pub struct ManagementServer;

/// A running API; [`RunningServer::shutdown`] (or dropping it) stops it.
pub struct RunningServer {
    pub address: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl RunningServer {
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// An API error: HTTP status and message.
struct ApiError(u16, String);

impl From<ortelius_txn::TxnError> for ApiError {
    fn from(e: ortelius_txn::TxnError) -> Self {
        Self(500, e.to_string())
    }
}

impl From<BackupLockError> for ApiError {
    fn from(e: BackupLockError) -> Self {
        let status = match e {
            BackupLockError::AlreadyHeld(_)
            | BackupLockError::NotHeld
            | BackupLockError::DeletionsStillInFlight(_) => 409,
            BackupLockError::Invalid(_) => 400,
            _ => 500,
        };
        Self(status, e.to_string())
    }
}

fn holder_json(h: &BackupLockHolder) -> Value {
    json!({"holder": h.holder, "reason": h.reason, "acquired_at_ms": h.acquired_at_ms, "lease_expires_ms": h.lease_expires_ms})
}

impl ManagementServer {
    /// Serves on `address` (e.g. `127.0.0.1:7878`; port 0 picks one) until stopped.
    pub fn start(
        address: &str,
        token: Option<String>,
        state: ManagementState,
    ) -> Result<RunningServer, String> {
        let server = Server::http(address)
            .map_err(|e| format!("cannot serve the management API on {address}: {e}"))?;
        let bound = server
            .server_addr()
            .to_ip()
            .ok_or_else(|| format!("the management API on {address} is not on an IP address"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ortelius-management".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    if let Ok(Some(request)) = server.recv_timeout(Duration::from_millis(50)) {
                        handle(request, token.as_deref(), &state);
                    }
                }
            })
            .map_err(|e| format!("cannot start the management thread: {e}"))?;
        Ok(RunningServer {
            address: bound,
            stop,
            handle: Some(handle),
        })
    }
}

fn handle(mut request: Request, token: Option<&str>, state: &ManagementState) {
    let authorized = token.is_none_or(|t| {
        request
            .headers()
            .iter()
            .any(|h| h.field.equiv("Authorization") && h.value.as_str() == format!("Bearer {t}"))
    });
    let result = if authorized {
        let mut body = String::new();
        let body: Value = match request.as_reader().read_to_string(&mut body) {
            Ok(_) if body.trim().is_empty() => json!({}),
            Ok(_) => serde_json::from_str(&body).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        route(request.method(), request.url(), &body, state)
    } else {
        Err(ApiError(
            401,
            "missing or wrong bearer token; set management.token in the config".to_owned(),
        ))
    };
    let (status, value) = match result {
        Ok(v) => (200, v),
        Err(ApiError(status, message)) => (status, json!({"error": message})),
    };
    let mut response = Response::from_string(value.to_string()).with_status_code(status);
    if let Ok(h) = Header::from_bytes("Content-Type", "application/json") {
        response = response.with_header(h);
    }
    let _ = request.respond(response);
}

fn field_i64(body: &Value, name: &str) -> Result<i64, ApiError> {
    body.get(name)
        .and_then(Value::as_i64)
        .ok_or_else(|| ApiError(400, format!("the request needs a numeric {name:?}")))
}

fn route(
    method: &Method,
    url: &str,
    body: &Value,
    state: &ManagementState,
) -> Result<Value, ApiError> {
    let m = &state.manager;
    match (method, url) {
        (Method::Get, "/v1/health") => Ok(json!({"status": "ok"})),
        (Method::Post, "/v1/timestamp/fresh") => Ok(json!({"timestamp": m.fresh_timestamp()?})),
        (Method::Post, "/v1/timestamp/immutable") => {
            Ok(json!({"timestamp": m.immutable_timestamp()?}))
        }
        (Method::Post, "/v1/timestamp/fast-forward") => {
            let target = field_i64(body, "timestamp")?;
            match m
                .timestamps()
                .fast_forward(target)
                .map_err(|e| ApiError(400, e.to_string()))?
            {
                FastForward::Advanced { to, .. } => Ok(json!({"advanced": true, "current": to})),
                FastForward::AlreadyBeyond { current } => {
                    Ok(json!({"advanced": false, "current": current}))
                }
            }
        }
        (Method::Post, "/v1/backup-lock/acquire") => {
            let reason = body
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("backup");
            let holder = body
                .get("holder")
                .and_then(Value::as_str)
                .unwrap_or("management API");
            let lease = body
                .get("lease_secs")
                .and_then(Value::as_u64)
                .map(Duration::from_secs);
            let held =
                state
                    .backup_lock
                    .acquire(holder, reason, lease, Duration::from_secs(120))?;
            Ok(holder_json(&held))
        }
        (Method::Post, "/v1/backup-lock/release") => Ok(holder_json(&state.backup_lock.release()?)),
        (Method::Get, "/v1/backup-lock/status") => {
            let s = state.backup_lock.status()?;
            Ok(json!({
                "held": s.held.as_ref().map(holder_json),
                "expired": s.expired.as_ref().map(holder_json),
                "deletions_in_flight": s.deletions_in_flight,
            }))
        }
        (Method::Post, "/v1/checkpoint") => {
            let dir = body
                .get("dir")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError(400, "the request needs a \"dir\"".to_owned()))?;
            m.kvs()
                .checkpoint(&PathBuf::from(dir))
                .map_err(|e| ApiError(409, e.to_string()))?;
            Ok(json!({"dir": dir}))
        }
        (Method::Get, "/v1/sweep/status") => {
            let mut tables = Vec::new();
            for table in m
                .kvs()
                .list_tables()
                .map_err(|e| ApiError(500, e.to_string()))?
            {
                if table.namespace().is_empty() {
                    continue;
                }
                let next = state.sweeper.progress(&table)?;
                tables.push(json!({
                    "table": table.qualified_name(),
                    "strategy": format!("{:?}", m.table_metadata(&table)?.sweep_strategy),
                    "in_progress": next.is_some(),
                }));
            }
            Ok(json!({"sweep_ts": state.sweeper.sweep_timestamp()?, "tables": tables}))
        }
        (Method::Post, "/v1/sweep") => {
            let dry_run = body
                .get("dry_run")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let reports = match body.get("table").and_then(Value::as_str) {
                Some(name) => {
                    let table = TableRef::parse(name).map_err(|e| ApiError(400, e.to_string()))?;
                    vec![state.sweeper.sweep_table(&table, dry_run)?]
                }
                None => state.sweeper.sweep_all(dry_run)?,
            };
            Ok(Value::Array(
                reports
                    .iter()
                    .map(|r| {
                        json!({
                            "table": r.table.as_ref().map(TableRef::qualified_name),
                            "sweep_ts": r.sweep_ts,
                            "cells_examined": r.cells_examined,
                            "versions_deleted": r.versions_deleted,
                            "paused_by_backup_lock": r.paused_by_backup_lock,
                            "complete": r.complete,
                            "dry_run": r.dry_run,
                        })
                    })
                    .collect(),
            ))
        }
        _ => Err(ApiError(404, format!("no such endpoint: {method} {url}"))),
    }
}
