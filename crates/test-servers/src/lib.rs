//! Real servers for integration tests, on loopback, in temporary directories: started by the
//! tests themselves (`Postgres::shared()` once per test binary, or a private one for tests that
//! restart or kill it). Starting fails loudly with the server's own log, never skips.
//!
//! A watchdog process stops each server when the test process exits, so a test binary that
//! ends (or is killed) never leaves servers behind.
//!
//! Test support: panics on failure are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod cassandra;
pub mod etcd;
pub mod postgres;

pub use cassandra::CassandraCluster;
pub use etcd::EtcdCluster;
pub use postgres::Postgres;

use std::net::TcpListener;
use std::process::{Command, Stdio};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot find a free port on 127.0.0.1")
}

/// Runs `cleanup` (a shell command) once this process has exited, even if it is killed.
pub fn on_exit(cleanup: &str) {
    let pid = std::process::id();
    let script = format!("while kill -0 {pid} 2>/dev/null; do sleep 0.5; done; {cleanup}");
    // Never waited for on purpose: it must outlive this process.
    #[allow(clippy::zombie_processes)]
    Command::new("setsid")
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the cleanup watchdog (setsid sh)");
}

/// Whether this process runs as root (servers that refuse root then run as another user).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Ends this test binary with a message if the returned guard is not dropped within `limit`:
/// a test that hangs (a server that never answers, a worker thread never told to stop) then
/// fails loudly instead of running until CI's own time limit, and the servers' watchdogs stop
/// them.
#[must_use = "the limit holds until the guard is dropped"]
pub fn time_limit(limit: std::time::Duration, what: &str) -> TimeLimit {
    let (done, wait) = std::sync::mpsc::channel::<()>();
    let what = what.to_owned();
    std::thread::spawn(move || {
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = wait.recv_timeout(limit) {
            eprintln!("{what} did not finish within {limit:?}: ending the test binary");
            std::process::exit(101);
        }
    });
    TimeLimit { _done: done }
}

/// See [`time_limit`].
pub struct TimeLimit {
    _done: std::sync::mpsc::Sender<()>,
}
