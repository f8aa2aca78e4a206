//! The management API of a process that owns a store: HTTP + JSON, loopback by default, with an
//! optional bearer token. `ortelius serve` runs it; an application embedding Ortelius can start
//! the same server with [`ManagementServer::start`]. The CLI talks to it with
//! [`ManagementClient`] so the runbook's live steps work while the application keeps writing.
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/health` | | `{"status": "ok"}` |
//! | `POST /v1/timestamp/fresh` | | `{"timestamp": n}` |
//! | `POST /v1/timestamp/immutable` | | `{"timestamp": n}` |
//! | `POST /v1/timestamp/fast-forward` | `{"timestamp": n}` | `{"advanced": bool, "current": n}` |
//! | `POST /v1/backup-lock/acquire` | `{"reason": s, "lease_secs": n?}` | the holder |
//! | `POST /v1/backup-lock/release` | | the released holder |
//! | `GET /v1/backup-lock/status` | | `{"held": holder?, "expired": holder?, "deletions_in_flight": n}` |
//! | `POST /v1/checkpoint` | `{"dir": path}` | `{"dir": path}` |
//! | `POST /v1/sweep` | `{"table": "ns.name"?, "dry_run": bool}` | reports |
//!
//! Errors answer 4xx/5xx with `{"error": message}`; a missing or wrong token answers 401.

mod client;
mod server;

pub use client::{ManagementClient, ManagementError};
pub use server::{ManagementServer, ManagementState, RunningServer};
