//! Ortelius on PostgreSQL against plain SQL doing the same logical work on the same server and
//! data, in one run (a server this benchmark starts, fsync on). Each group has `raw` and
//! `ortelius`; `scripts/bench-ratios.py` prints raw-time / ortelius-time. Targets:
//! single-cell write transactions ≥ 0.5× a raw autocommitted (synced) `INSERT` (1 and 8
//! threads), read-only point reads ≥ 0.7× a raw `SELECT` by primary key, a 10 000-row range
//! scan ≥ 0.5× a raw `SELECT ... ORDER BY` (both read the range of exactly 10 000 rows below a key).
//!
//! The `backup` group (run last, once) prints the time of `ortelius backup`'s raw snapshot and
//! restore against `pg_dump -Fc` and `pg_restore` of the same schema.
//!
//! `cargo bench --workspace --bench pg_vs_raw`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ortelius_kvs::snapshot::{RestoreTarget, SnapshotSource};
use ortelius_kvs::testing::parallel;
use ortelius_kvs::{Cell, KeyValueService, RangeRequest, RowRange, TableRef};
use ortelius_kvs_postgres::snapshot::{PostgresSnapshots, PostgresTarget};
use ortelius_kvs_postgres::{PostgresConfig, PostgresKvs, Secret};
use ortelius_test_servers::{postgres as server, Postgres};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

const KEYS: u64 = 20_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

fn config(pg: &Postgres, schema: &str) -> PostgresConfig {
    PostgresConfig {
        host: pg.host.clone(),
        port: pg.port,
        database: server::DATABASE.to_owned(),
        user: server::USER.to_owned(),
        password_file: None,
        password: Some(Secret(server::PASSWORD.to_owned())),
        schema: schema.to_owned(),
        pool_size: 16,
        connect_timeout: Duration::from_secs(10),
    }
}

fn connect(pg: &Postgres) -> postgres::Client {
    postgres::Config::new()
        .host(&pg.host)
        .port(pg.port)
        .user(server::USER)
        .password(server::PASSWORD)
        .dbname(server::DATABASE)
        .connect(postgres::NoTls)
        .unwrap()
}

/// A raw connection with its statements prepared once, as the backend prepares its own.
struct Raw {
    client: postgres::Client,
    read: postgres::Statement,
    write: postgres::Statement,
}

impl Raw {
    fn connect(pg: &Postgres) -> Self {
        let mut client = connect(pg);
        let read = client.prepare("SELECT v FROM raw_kv WHERE k = $1").unwrap();
        let write = client
            .prepare("INSERT INTO raw_kv (k, v) VALUES ($1, $2)")
            .unwrap();
        Self {
            client,
            read,
            write,
        }
    }
}

struct Setup {
    pg: Postgres,
    /// One raw connection per thread.
    raw: Vec<Mutex<Raw>>,
    manager: TransactionManager,
    kvs: Arc<PostgresKvs>,
    table: TableRef,
    scan: TableRef,
}

fn setup() -> Setup {
    let pg = Postgres::start();
    let mut admin = connect(&pg);
    admin
        .batch_execute(
            "CREATE TABLE raw_kv (k bytea PRIMARY KEY, v bytea NOT NULL); \
             CREATE TABLE raw_scan (k bytea PRIMARY KEY, v bytea NOT NULL)",
        )
        .unwrap();
    let kvs = Arc::new(PostgresKvs::open(&config(&pg, "bench")).unwrap());
    let manager = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
    let (table, scan) = (
        TableRef::new("bench", "t").unwrap(),
        TableRef::new("bench", "scan").unwrap(),
    );
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    manager
        .create_table(&scan, TableMetadata::default())
        .unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(2000) {
        let keys: Vec<Vec<u8>> = chunk.iter().map(|i| key(*i).to_vec()).collect();
        let values = vec![VALUE.to_vec(); keys.len()];
        for t in ["raw_kv", "raw_scan"] {
            admin
                .execute(
                    &format!("INSERT INTO {t} SELECT * FROM unnest($1::bytea[], $2::bytea[])"),
                    &[&keys, &values],
                )
                .unwrap();
        }
        manager
            .run(|txn| {
                for &i in chunk {
                    let c = Cell::new(key(i), "v").unwrap();
                    txn.put(&table, &c, VALUE.to_vec())?;
                    txn.put(&scan, &c, VALUE.to_vec())?;
                }
                Ok(())
            })
            .unwrap();
    }
    admin.batch_execute("VACUUM ANALYZE").unwrap();
    let raw = (0..8).map(|_| Mutex::new(Raw::connect(&pg))).collect();
    Setup {
        pg,
        raw,
        manager,
        kvs,
        table,
        scan,
    }
}

static FRESH: AtomicU64 = AtomicU64::new(0);

fn raw_write(s: &Setup, t: usize, _: u64) {
    let k = key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed)).to_vec();
    // On its own (autocommit) the INSERT is one synced transaction in one round trip.
    let c = &mut *s.raw[t].lock().unwrap();
    c.client
        .execute(&c.write, &[&k, &VALUE.as_slice()])
        .unwrap();
}

fn txn_write(s: &Setup, _: usize, _: u64) {
    let cell = Cell::new(
        key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed)),
        "v",
    )
    .unwrap();
    s.manager
        .run(|txn| txn.put(&s.table, &cell, VALUE.to_vec()))
        .unwrap();
}

fn raw_read(s: &Setup, t: usize, i: u64) {
    let k = key((i * 7919) % KEYS).to_vec();
    let c = &mut *s.raw[t].lock().unwrap();
    black_box(c.client.query_opt(&c.read, &[&k]).unwrap());
}

fn txn_read(s: &Setup, _: usize, i: u64) {
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    black_box(
        s.manager
            .run_read_only(|txn| txn.get_one(&s.table, &cell))
            .unwrap(),
    );
}

fn group(
    c: &mut Criterion,
    s: &Setup,
    name: &str,
    threads: u64,
    raw: fn(&Setup, usize, u64),
    ours: fn(&Setup, usize, u64),
) {
    let mut g = c.benchmark_group(format!("pg_{name}_{threads}t"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("raw", |b| {
        b.iter_custom(|n| parallel(n, threads, |t, i| raw(s, t, i)))
    });
    g.bench_function("ortelius", |b| {
        b.iter_custom(|n| parallel(n, threads, |t, i| ours(s, t, i)))
    });
    g.finish();
}

fn scans(c: &mut Criterion, s: &Setup) {
    // Both sides read the range of exactly 10 000 rows below the 10 001st key.
    let mut keys: Vec<[u8; 8]> = (0..KEYS).map(key).collect();
    keys.sort_unstable();
    let end = keys[10_000].to_vec();
    let mut g = c.benchmark_group("pg_scan_10000_rows");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("raw", |b| {
        b.iter(|| {
            let mut conn = s.raw[0].lock().unwrap();
            let rows = conn
                .client
                .query(
                    "SELECT k, v FROM raw_scan WHERE k < $1 ORDER BY k",
                    &[&end.as_slice()],
                )
                .unwrap();
            assert_eq!(rows.len(), 10_000);
            black_box(rows);
        })
    });
    g.bench_function("ortelius", |b| {
        b.iter(|| {
            let n = s
                .manager
                .run_read_only(|txn| {
                    let mut n = 0;
                    for row in
                        txn.get_range(&s.scan, &RangeRequest::rows(RowRange::new([], end.clone())))?
                    {
                        black_box(row?);
                        n += 1;
                    }
                    Ok(n)
                })
                .unwrap();
            assert_eq!(n, 10_000);
        })
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let s = setup();
    for threads in [1, 8] {
        group(c, &s, "write_txn", threads, raw_write, txn_write);
        group(c, &s, "read_txn", threads, raw_read, txn_read);
    }
    scans(c, &s);
    backup(&s);
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// Our raw snapshot and restore against pg_dump -Fc / pg_restore of the same schema, once, on
/// a larger table (about 200 MB).
fn backup(s: &Setup) {
    let big = TableRef::new("bench", "big").unwrap();
    s.kvs.create_table(&big, b"").unwrap();
    let value = vec![5u8; 1000];
    for chunk in (0..200_000u64).collect::<Vec<_>>().chunks(1000) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|i| (Cell::new(key(*i), "v").unwrap(), value.clone()))
            .collect();
        s.kvs.put(&big, &writes, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshots = PostgresSnapshots::new(s.kvs.clone());
    let ours_backup = timed(|| {
        snapshots
            .take(&dir.path().join("ours"), &|_, _| {})
            .unwrap();
    });
    let dump = dir.path().join("dump.fc");
    let port = s.pg.port.to_string();
    let pg_args = ["-h", "127.0.0.1", "-p", &port, "-U", server::USER];
    let theirs_backup = timed(|| {
        let st = Command::new(s.pg.bin().join("pg_dump"))
            .env("PGPASSWORD", server::PASSWORD)
            .args(pg_args)
            .args(["-Fc", "-n", "bench", "-f"])
            .arg(&dump)
            .arg(server::DATABASE)
            .status()
            .unwrap();
        assert!(st.success());
    });
    let target = PostgresTarget::new(config(&s.pg, "restored")).unwrap();
    let ours_restore = timed(|| {
        target
            .load(&dir.path().join("ours"), "bench", &|_, _| {})
            .unwrap();
    });
    s.pg.psql(server::DATABASE, "CREATE DATABASE restored_by_pg_restore");
    let theirs_restore = timed(|| {
        let st = Command::new(s.pg.bin().join("pg_restore"))
            .env("PGPASSWORD", server::PASSWORD)
            .args(pg_args)
            .args(["-d", "restored_by_pg_restore"])
            .arg(&dump)
            .status()
            .unwrap();
        assert!(st.success());
    });
    println!(
        "backup:  ortelius snapshot {:.2}s | pg_dump -Fc {:.2}s (ratio {:.2}x, target >= 1x)",
        ours_backup.as_secs_f64(),
        theirs_backup.as_secs_f64(),
        theirs_backup.as_secs_f64() / ours_backup.as_secs_f64()
    );
    println!(
        "restore: ortelius load {:.2}s | pg_restore {:.2}s (ratio {:.2}x, target >= 1x)",
        ours_restore.as_secs_f64(),
        theirs_restore.as_secs_f64(),
        theirs_restore.as_secs_f64() / ours_restore.as_secs_f64()
    );
}

criterion_group!(benches, throughput);
criterion_main!(benches);
