//! The management API over loopback: every call through the typed client, errors, bad
//! requests from a raw socket, the bearer token, and a slow call not holding up the others.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_backup::{DirectOwner, OwnerError, SnapshotTaken, StoreOwner, SweepSummary};
use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::snapshot::{SnapshotInfo, SnapshotProgress, SnapshotSource};
use ortelius_kvs::{KvsError, KvsResult};
use ortelius_management::{ManagementClient, ManagementError, ManagementServer, RunningServer};
use ortelius_txn::{TransactionConfig, TransactionManager};

/// A snapshot source that takes its time (and can be told to fail).
struct SlowSnapshots {
    delay: Duration,
    taking: AtomicBool,
}

impl SnapshotSource for SlowSnapshots {
    fn store_kind(&self) -> &'static str {
        "memory"
    }
    fn take(&self, dir: &Path, _progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        self.taking.store(true, Ordering::SeqCst);
        std::thread::sleep(self.delay);
        if dir.ends_with("fail") {
            return Err(KvsError::Unsupported {
                operation: "snapshot",
                backend: "memory",
            });
        }
        std::fs::create_dir_all(dir).unwrap();
        Ok(SnapshotInfo::default())
    }
}

fn serve(token: Option<&str>) -> (RunningServer, ManagementClient, Arc<SlowSnapshots>) {
    let manager =
        TransactionManager::embedded(Arc::new(MemoryKvs::new()), TransactionConfig::default())
            .unwrap();
    let snapshots = Arc::new(SlowSnapshots {
        delay: Duration::from_millis(1500),
        taking: AtomicBool::new(false),
    });
    let owner = DirectOwner::new(manager, snapshots.clone(), "a test store").unwrap();
    let server = ManagementServer::start(
        "127.0.0.1:0",
        ortelius_management::Access {
            token: token.map(str::to_owned),
            backup_roots: Vec::new(),
        },
        Arc::new(owner),
    )
    .unwrap();
    let client = ManagementClient::new(&server.address.to_string(), token.map(str::to_owned));
    (server, client, snapshots)
}

#[test]
fn every_owner_operation_works_over_http() {
    let (_server, client, _) = serve(None);
    assert_eq!(client.health().unwrap().owner, "a test store");
    let a = client.fresh_timestamp().unwrap();
    let b = client.fresh_timestamp().unwrap();
    assert!(b > a);
    assert!(client.immutable_timestamp().unwrap() > b);
    assert!(client.sweep_timestamp().unwrap() >= 0);
    let held = client
        .acquire_backup_lock("ops", "nightly", Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!(
        (held.holder.as_str(), held.reason.as_str()),
        ("ops", "nightly")
    );
    assert!(held.lease_expires_ms.is_some());
    assert_eq!(
        client.backup_lock_status().unwrap().held.unwrap().reason,
        "nightly"
    );
    match client.acquire_backup_lock("other", "x", None) {
        Err(OwnerError::LockHeld(message)) => {
            assert!(message.contains("already held"), "{message}")
        }
        other => panic!("second acquire: {other:?}"),
    }
    // A release for another holder leaves the lock alone.
    match client.release_backup_lock(Some("other")) {
        Err(OwnerError::LockHeld(message)) => {
            assert!(message.contains("not by other"), "{message}")
        }
        other => panic!("release for another holder: {other:?}"),
    }
    assert_eq!(client.release_backup_lock(None).unwrap().holder, "ops");
    assert!(matches!(
        client.release_backup_lock(None),
        Err(OwnerError::LockNotHeld)
    ));
    let swept: Vec<SweepSummary> = client.sweep(None, true).unwrap();
    assert!(swept.iter().all(|s| s.dry_run));
    assert!(matches!(
        client.sweep(Some("not a table"), true),
        Err(OwnerError::Invalid(_))
    ));
    let dir = tempfile::tempdir().unwrap();
    let taken: SnapshotTaken = client.snapshot(&dir.path().join("snap"), None).unwrap();
    assert_eq!(taken.store_kind, "memory");
    assert!(matches!(
        client.snapshot(&dir.path().join("fail"), None),
        Err(OwnerError::Failed(m)) if m.contains("not supported")
    ));
}

/// Sends raw bytes and returns the status line and body.
fn raw(address: &str, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn bad_requests_get_a_clear_error_and_change_nothing() {
    let (server, client, _) = serve(None);
    let address = server.address.to_string();
    let post = |path: &str, body: &str| {
        raw(
            &address,
            &format!(
                "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            ),
        )
    };
    let (status, body) = post("/v1/backup-lock/acquire", "{not json");
    assert!(
        status.contains("400") && body.contains("malformed"),
        "{status} {body}"
    );
    let (status, body) = post(
        "/v1/backup-lock/acquire",
        r#"{"holder": "h", "reason": "r", "lease_secs": 18446744073709551615}"#,
    );
    assert!(
        status.contains("400") && body.contains("lease_secs"),
        "{status} {body}"
    );
    let (status, _) = post("/v1/snapshot", r#"{"dir": "relative/path"}"#);
    assert!(status.contains("400"), "{status}");
    let (status, body) = raw(
        &address,
        "GET /v1/nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(
        status.contains("404") && body.contains("not_found"),
        "{status} {body}"
    );
    assert_eq!(
        client.backup_lock_status().unwrap().held,
        None,
        "nothing acquired"
    );
    assert!(client.is_live(), "the server keeps serving");
}

#[test]
fn a_slow_call_does_not_hold_up_health_checks() {
    let (_server, client, snapshots) = serve(None);
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|s| {
        let slow = s.spawn(|| client.snapshot(&dir.path().join("snap"), None));
        while !snapshots.taking.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let started = Instant::now();
        assert!(client.is_live());
        assert!(client.fresh_timestamp().is_ok());
        assert!(
            started.elapsed() < Duration::from_millis(1000),
            "health and timestamps answered while the snapshot ran"
        );
        slow.join().unwrap().unwrap();
    });
}

#[test]
fn a_configured_token_is_required() {
    let (server, client, _) = serve(Some("s3cret"));
    assert!(client.is_live());
    let anonymous = ManagementClient::new(&server.address.to_string(), None);
    assert!(matches!(
        anonymous.health(),
        Err(ManagementError::Refused { status: 401, .. })
    ));
    assert!(
        matches!(anonymous.fresh_timestamp(), Err(OwnerError::Failed(m)) if m.contains("token"))
    );
    let wrong = ManagementClient::new(&server.address.to_string(), Some("guess".into()));
    assert!(!wrong.is_live());
    server.shutdown();
    assert!(matches!(
        client.health(),
        Err(ManagementError::Unreachable { .. })
    ));
}

#[test]
fn an_address_where_nothing_answers_fails_fast() {
    // A listener that accepts nothing: connects queue in the backlog, reads never answer.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = ManagementClient::new(&silent.local_addr().unwrap().to_string(), None);
    let started = Instant::now();
    assert!(!client.is_live());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    // An unroutable address fails within the connect timeout.
    let started = Instant::now();
    assert!(!ManagementClient::new("10.255.255.1:7878", None).is_live());
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}
