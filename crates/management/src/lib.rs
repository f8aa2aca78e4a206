//! The management API of a process that owns a store: HTTP + JSON, loopback by default, with an
//! optional bearer token. `ortelius serve` runs it; an application embedding Ortelius can start
//! the same server with [`ManagementServer::start`] over its `DirectOwner`. The CLI reaches it
//! with [`ManagementClient`], which is a `StoreOwner` like the store opened directly, so the
//! runbook's live steps work while the application keeps writing.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | | `{"status": "ok", "owner": s}` |
//! | `POST /v1/timestamp/fresh` | | `{"timestamp": n}` |
//! | `POST /v1/timestamp/immutable` | | `{"timestamp": n}` |
//! | `GET /v1/sweep/timestamp` | | `{"timestamp": n}` |
//! | `POST /v1/backup-lock/acquire` | `{"holder": s, "reason": s, "lease_secs": n?}` | the holder |
//! | `POST /v1/backup-lock/release` | `{"holder"?}`: only if it holds the lock | the released holder |
//! | `GET /v1/backup-lock/status` | | `{"held": holder?, "expired": holder?, "deletions_in_flight": n}` |
//! | `POST /v1/snapshot` | `{"dir": absolute path, "node": n?}` | `{"store_kind": s, "origins": [[prefix, node]]}` |
//! | `POST /v1/sweep` | `{"table": "ns.name"?, "dry_run": bool}` | one summary per table |
//!
//! Errors answer 4xx/5xx with `{"error": message, "kind": k}`: 400 `invalid`, 401
//! `unauthorized`, 404 `not_found`, 409 `lock_held` / `lock_not_held`, 500 `failed`.

pub mod api;
mod client;
mod server;

pub use client::{ManagementClient, ManagementError};
pub use server::{Access, ManagementServer, RunningServer};
