//! The management API over loopback: endpoints, errors and the bearer token.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::KeyValueService;
use ortelius_management::{
    ManagementClient, ManagementError, ManagementServer, ManagementState, RunningServer,
};
use ortelius_txn::{
    BackupLock, SweepConfig, Sweeper, SystemWallClock, TransactionConfig, TransactionManager,
};
use serde_json::json;

fn serve(token: Option<&str>) -> (RunningServer, ManagementClient) {
    let kvs: Arc<dyn KeyValueService> = Arc::new(MemoryKvs::new());
    let manager = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
    let backup_lock = BackupLock::new(kvs, Arc::new(SystemWallClock)).unwrap();
    let sweeper =
        Sweeper::new(manager.clone(), backup_lock.clone(), SweepConfig::default()).unwrap();
    let server = ManagementServer::start(
        "127.0.0.1:0",
        token.map(str::to_owned),
        ManagementState {
            manager,
            backup_lock,
            sweeper,
        },
    )
    .unwrap();
    let client = ManagementClient::new(&server.address.to_string(), token.map(str::to_owned));
    (server, client)
}

#[test]
fn timestamps_lock_and_sweep_work_over_http() {
    let (_server, client) = serve(None);
    assert!(client.is_live());
    let a = client.call("POST", "/v1/timestamp/fresh", None).unwrap()["timestamp"]
        .as_i64()
        .unwrap();
    let b = client.call("POST", "/v1/timestamp/fresh", None).unwrap()["timestamp"]
        .as_i64()
        .unwrap();
    assert!(b > a);
    let held = client
        .call(
            "POST",
            "/v1/backup-lock/acquire",
            Some(&json!({"reason": "nightly", "lease_secs": 60})),
        )
        .unwrap();
    assert_eq!(held["reason"], "nightly");
    let status = client.call("GET", "/v1/backup-lock/status", None).unwrap();
    assert_eq!(status["held"]["reason"], "nightly");
    match client.call("POST", "/v1/backup-lock/acquire", Some(&json!({}))) {
        Err(ManagementError::Refused {
            status: 409,
            message,
            ..
        }) => assert!(message.contains("already held"), "{message}"),
        other => panic!("second acquire: {other:?}"),
    }
    client
        .call("POST", "/v1/backup-lock/release", None)
        .unwrap();
    assert!(matches!(
        client.call("POST", "/v1/backup-lock/release", None),
        Err(ManagementError::Refused { status: 409, .. })
    ));
    let ff = client
        .call(
            "POST",
            "/v1/timestamp/fast-forward",
            Some(&json!({"timestamp": b + 10_000_000})),
        )
        .unwrap();
    assert_eq!(ff["advanced"], true);
    assert!(
        client.call("POST", "/v1/timestamp/fresh", None).unwrap()["timestamp"]
            .as_i64()
            .unwrap()
            > b + 10_000_000
    );
    assert!(client
        .call("POST", "/v1/sweep", Some(&json!({"dry_run": true})))
        .unwrap()
        .is_array());
    assert!(matches!(
        client.call("POST", "/v1/timestamp/fast-forward", Some(&json!({}))),
        Err(ManagementError::Refused { status: 400, .. })
    ));
    assert!(
        matches!(
            client.call("POST", "/v1/checkpoint", Some(&json!({"dir": "/tmp/x"}))),
            Err(ManagementError::Refused { status: 409, .. })
        ),
        "memory stores cannot checkpoint"
    );
    assert!(matches!(
        client.call("GET", "/v1/nope", None),
        Err(ManagementError::Refused { status: 404, .. })
    ));
}

#[test]
fn a_configured_token_is_required() {
    let (server, client) = serve(Some("s3cret"));
    assert!(client.is_live());
    let anonymous = ManagementClient::new(&server.address.to_string(), None);
    assert!(matches!(
        anonymous.call("GET", "/v1/health", None),
        Err(ManagementError::Refused { status: 401, .. })
    ));
    let wrong = ManagementClient::new(&server.address.to_string(), Some("guess".into()));
    assert!(!wrong.is_live());
    server.shutdown();
    assert!(matches!(
        client.call("GET", "/v1/health", None),
        Err(ManagementError::Unreachable { .. })
    ));
}
