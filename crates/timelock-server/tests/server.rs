//! The timelock server and client over loopback: timestamps, locks, transactions starting in
//! one round trip, durability across a restart, tokens, malformed frames, unreachable servers.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_timelock::{
    FastForward, LockDescriptor, LockService, TimestampError, TimestampService,
};
use ortelius_timelock_client::{TimelockClient, TimelockConfig};
use ortelius_timelock_server::{start, RunningServer, ServerConfig};

fn server(dir: &Path, token: Option<&str>) -> RunningServer {
    start(ServerConfig {
        listen: "127.0.0.1:0".to_owned(),
        advertise: None,
        data_dir: dir.to_path_buf(),
        token: token.map(str::to_owned),
        admin_token: Some("admin".to_owned()),
        lock_lease: Duration::from_secs(20),
        ha: None,
    })
    .unwrap()
}

fn client(s: &RunningServer, token: Option<&str>, admin: bool) -> TimelockClient {
    TimelockClient::new(TimelockConfig {
        token: token.map(str::to_owned),
        admin_token: admin.then(|| "admin".to_owned()),
        request_timeout_secs: 5,
        ..TimelockConfig::new(vec![s.address.to_string()])
    })
    .unwrap()
}

#[test]
fn concurrent_callers_get_unique_increasing_timestamps_and_a_restart_resumes_above_them() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let c = client(&s, None, false);
    let per_thread: Vec<Vec<i64>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| {
                    (0..2000)
                        .map(|_| c.fresh_timestamp().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for seq in &per_thread {
        assert!(seq.windows(2).all(|w| w[0] < w[1]));
        for t in seq {
            assert!(all.insert(*t), "duplicate {t}");
        }
    }
    let range = c.fresh_timestamps(1000).unwrap();
    assert_eq!(range.len(), 1000);
    let before = range.last;
    drop(c);
    drop(s);
    let s = server(dir.path(), None);
    let c = client(&s, None, false);
    assert!(
        c.fresh_timestamp().unwrap() > before,
        "a restart resumes above everything"
    );
}

#[test]
fn locks_are_exclusive_leased_and_released() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let (a, b) = (client(&s, None, false), client(&s, None, false));
    let d = vec![LockDescriptor::named("row-1")];
    let held = a.lock(&d, Duration::from_secs(1)).unwrap();
    let started = Instant::now();
    assert!(b.lock(&d, Duration::from_millis(300)).is_err(), "exclusive");
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(a.refresh(&[held]).unwrap(), vec![held]);
    assert!(b.wait_for_locks(&d, Duration::from_millis(100)).is_err());
    std::thread::scope(|scope| {
        let waiter = scope.spawn(|| b.lock(&d, Duration::from_secs(5)).unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(a.unlock(&[held]).unwrap(), vec![held]);
        let taken = waiter.join().unwrap();
        assert_eq!(b.unlock(&[taken]).unwrap(), vec![taken]);
    });
    assert!(
        a.refresh(&[held]).unwrap().is_empty(),
        "released tokens are gone"
    );
    b.wait_for_locks(&d, Duration::from_millis(100)).unwrap();
}

#[test]
fn transactions_start_in_one_round_trip_and_hold_the_immutable_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let c = client(&s, None, false);
    let (guard, start) = c.start_transaction(&c).unwrap();
    let floor = c.min_locked_timestamp().unwrap().unwrap();
    assert!(floor < start, "the guard lies below the start timestamp");
    let later = c.fresh_timestamp().unwrap();
    assert!(later > start);
    c.unlock(&[guard]).unwrap();
}

#[test]
fn a_restarted_server_holds_the_immutable_timestamp_at_the_last_floor() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let c = client(&s, None, false);
    let (_guard, start) = c.start_transaction(&c).unwrap();
    std::thread::sleep(Duration::from_millis(1200)); // the floor is recorded every 500 ms
    drop(c);
    drop(s); // its locks die with it
    let s = server(dir.path(), None);
    let c = client(&s, None, false);
    let immutable = c.min_locked_timestamp().unwrap().unwrap();
    assert!(
        immutable < start,
        "a transaction that started before the restart may still run: {immutable} >= {start}"
    );
}

#[test]
fn fast_forward_needs_the_admin_token_and_has_max_semantics() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let plain = client(&s, None, false);
    assert!(matches!(
        plain.fast_forward(1 << 40),
        Err(TimestampError::Storage(m)) if m.contains("admin")
    ));
    let admin = client(&s, None, true);
    assert!(matches!(
        admin.fast_forward(1 << 40).unwrap(),
        FastForward::Advanced { to, .. } if to == 1 << 40
    ));
    assert_eq!(
        admin.fast_forward(5).unwrap(),
        FastForward::AlreadyBeyond { current: 1 << 40 }
    );
    assert!(plain.fresh_timestamp().unwrap() > 1 << 40);
}

#[test]
fn a_wrong_token_is_refused_and_a_malformed_frame_closes_only_its_connection() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), Some("t0ken"));
    let wrong = client(&s, Some("guess"), false);
    let err = wrong.fresh_timestamp().unwrap_err();
    assert!(err.to_string().contains("token"), "{err}");
    let mut raw = TcpStream::connect(s.address).unwrap();
    raw.write_all(&[0, 0, 0, 10, 1, 2, 3, 4, 5, 6, 7, 8, 99, 0])
        .unwrap();
    let mut buf = [0u8; 16];
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        raw.read(&mut buf).unwrap_or(0),
        0,
        "the connection is closed"
    );
    let mut raw = TcpStream::connect(s.address).unwrap();
    raw.write_all(&[0xFF, 0xFF, 0xFF, 0xFF]).unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(raw.read(&mut buf).unwrap_or(0), 0, "an oversized frame too");
    let good = client(&s, Some("t0ken"), false);
    assert!(good.fresh_timestamp().is_ok(), "the server keeps serving");
}

#[test]
fn unreachable_servers_fail_within_the_timeout() {
    let port = ortelius_test_servers::free_port();
    let c = TimelockClient::new(TimelockConfig {
        request_timeout_secs: 2,
        connect_timeout_secs: 1,
        ..TimelockConfig::new(vec![format!("127.0.0.1:{port}")])
    })
    .unwrap();
    let started = Instant::now();
    let err = c.fresh_timestamp().unwrap_err();
    assert!(
        err.to_string().contains("no timelock server answers"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(TimelockClient::new(TimelockConfig::new(vec![])).is_err());
}

#[test]
fn a_client_fails_over_to_a_server_that_answers() {
    let dir = tempfile::tempdir().unwrap();
    let s = server(dir.path(), None);
    let dead = format!("127.0.0.1:{}", ortelius_test_servers::free_port());
    let c = TimelockClient::new(TimelockConfig {
        request_timeout_secs: 10,
        connect_timeout_secs: 1,
        ..TimelockConfig::new(vec![dead, s.address.to_string()])
    })
    .unwrap();
    assert!(c.fresh_timestamp().is_ok());
    let shared: Arc<dyn TimestampService> = Arc::new(c);
    assert!(shared.fresh_timestamps(10).is_ok());
}
