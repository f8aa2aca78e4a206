//! The shared timestamp and lock server against the in-process services, in one run:
//!
//! - fresh timestamps per second from 8 threads in each of 2 client processes (this binary
//!   started again as a child) over loopback, concurrent requests coalesced by the client,
//!   against 16 threads of the in-process allocator (over an in-memory store);
//! - single-cell write transactions per second on PostgreSQL (a server this benchmark
//!   starts), 8 threads, with the remote authority against the embedded one.
//!
//! Each figure is counted over a fixed time; the ratios are what to track.
//!
//! `cargo bench --workspace --bench timelock_vs_local`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_postgres::{PostgresConfig, PostgresKvs, Secret};
use ortelius_test_servers::{postgres as pg, Postgres};
use ortelius_timelock::{PersistentTimestampService, TimestampService};
use ortelius_timelock_client::{TimelockClient, TimelockConfig};
use ortelius_timelock_server::{start, ServerConfig};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

const RUN: Duration = Duration::from_secs(3);
const CHILD: &str = "ORTELIUS_TIMELOCK_BENCH_SERVER";

/// Calls `op` on `threads` threads for `RUN`; returns how many calls finished per second.
fn rate(threads: usize, op: impl Fn() + Sync) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    op();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(RUN);
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

fn client(address: &str) -> TimelockClient {
    TimelockClient::new(TimelockConfig::new(vec![address.to_owned()])).unwrap()
}

/// The child process: 8 threads of fresh timestamps against the server; prints the rate.
fn child(address: &str) {
    let c = client(address);
    let r = rate(8, || {
        std::hint::black_box(c.fresh_timestamp().unwrap());
    });
    println!("{r}");
}

fn timestamps(address: &str) {
    let local = PersistentTimestampService::new(Arc::new(MemoryKvs::new())).unwrap();
    let local_rate = rate(16, || {
        std::hint::black_box(local.fresh_timestamp().unwrap());
    });
    let children: Vec<_> = (0..2)
        .map(|_| {
            Command::new(std::env::current_exe().unwrap())
                .env(CHILD, address)
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let remote_rate: f64 = children
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().unwrap();
            assert!(out.status.success());
            String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse::<f64>()
                .unwrap()
        })
        .sum();
    let one = client(address);
    let batch_rate = rate(8, || {
        std::hint::black_box(one.fresh_timestamps(1000).unwrap());
    }) * 1000.0;
    println!(
        "fresh timestamps: remote, 2 processes x 8 threads {:.0}/s | in-process, 16 threads {:.0}/s (ratio {:.2}x; goal >= 1M/s remote)",
        remote_rate,
        local_rate,
        remote_rate / local_rate
    );
    println!("fresh timestamps: remote ranges of 1000, 8 threads {batch_rate:.0}/s");
}

fn pg_config(server: &Postgres, schema: &str) -> PostgresConfig {
    PostgresConfig {
        host: server.host.clone(),
        port: server.port,
        database: pg::DATABASE.to_owned(),
        user: pg::USER.to_owned(),
        password_file: None,
        password: Some(Secret(pg::PASSWORD.to_owned())),
        schema: schema.to_owned(),
        pool_size: 16,
        connect_timeout: Duration::from_secs(10),
    }
}

fn write_rate(m: &TransactionManager) -> f64 {
    let table = TableRef::new("bench", "t").unwrap();
    m.create_table(&table, TableMetadata::default()).unwrap();
    let next = AtomicU64::new(0);
    rate(8, || {
        let cell = Cell::new(next.fetch_add(1, Ordering::Relaxed).to_be_bytes(), "v").unwrap();
        m.run(|txn| txn.put(&table, &cell, vec![7; 100])).unwrap();
    })
}

fn transactions(address: &str) {
    let server = Postgres::start();
    let embedded_kvs: Arc<dyn KeyValueService> =
        Arc::new(PostgresKvs::open(&pg_config(&server, "embedded")).unwrap());
    let embedded =
        TransactionManager::embedded(embedded_kvs, TransactionConfig::default()).unwrap();
    let embedded_rate = write_rate(&embedded);
    let remote_kvs: Arc<dyn KeyValueService> =
        Arc::new(PostgresKvs::open(&pg_config(&server, "remote")).unwrap());
    let c = client(address);
    c.attach(remote_kvs.clone()).unwrap();
    let remote = TransactionManager::new(
        remote_kvs,
        Arc::new(c.clone()),
        Arc::new(c),
        TransactionConfig::default(),
    )
    .unwrap();
    let remote_rate = write_rate(&remote);
    println!(
        "write transactions on PostgreSQL, 8 threads: remote authority {:.0}/s | embedded {:.0}/s (ratio {:.2}x)",
        remote_rate,
        embedded_rate,
        remote_rate / embedded_rate
    );
}

fn main() {
    if let Ok(address) = std::env::var(CHILD) {
        child(&address);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = start(ServerConfig {
        listen: "127.0.0.1:0".to_owned(),
        advertise: None,
        data_dir: dir.path().to_path_buf(),
        token: None,
        admin_token: Some("admin".to_owned()),
        lock_lease: Duration::from_secs(20),
        ha: None,
    })
    .unwrap();
    let address = server.address.to_string();
    timestamps(&address);
    transactions(&address);
}
