//! Why the PostgreSQL backend uses the synchronous `postgres` crate with a connection per
//! thread: the same statements through `tokio-postgres`, driven from our (synchronous) threads
//! by `block_on` on a shared runtime, once with a connection per thread (what an async pool such
//! as deadpool hands out) and once with one connection shared by all threads (its requests
//! pipelined). Baseline: `postgres`. Groups: a point `SELECT` by primary key and an `INSERT` in
//! its own synced transaction, 1 and 8 threads, on a server this benchmark starts (fsync on).
//!
//! `cargo bench --workspace --bench client_crates`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ortelius_kvs::testing::parallel;
use ortelius_test_servers::{postgres as server, Postgres};

const KEYS: u64 = 20_000;
const THREADS: usize = 8;
const READ: &str = "SELECT v FROM kv WHERE k = $1";
const WRITE: &str = "INSERT INTO kv (k, v) VALUES ($1, $2)";

static FRESH: AtomicU64 = AtomicU64::new(0);

fn key(i: u64) -> Vec<u8> {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes().to_vec()
}

/// The server's settings; `postgres::Config::from` turns them into the synchronous crate's.
fn config(pg: &Postgres) -> tokio_postgres::Config {
    let mut config = tokio_postgres::Config::new();
    config
        .host(&pg.host)
        .port(pg.port)
        .user(server::USER)
        .password(server::PASSWORD)
        .dbname(server::DATABASE);
    config
}

/// A connection with its two statements prepared once.
struct Conn<C, S> {
    client: C,
    read: S,
    write: S,
}

struct Async {
    runtime: tokio::runtime::Runtime,
    /// One connection per thread, as a pool would lend them.
    clients: Vec<Conn<tokio_postgres::Client, tokio_postgres::Statement>>,
}

impl Async {
    fn connect(pg: &Postgres) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let config = config(pg);
        let clients = (0..THREADS)
            .map(|_| {
                let (client, connection) = runtime
                    .block_on(config.connect(tokio_postgres::NoTls))
                    .unwrap();
                runtime.spawn(connection);
                let (read, write) = runtime.block_on(async {
                    (
                        client.prepare(READ).await.unwrap(),
                        client.prepare(WRITE).await.unwrap(),
                    )
                });
                Conn {
                    client,
                    read,
                    write,
                }
            })
            .collect();
        Self { runtime, clients }
    }

    fn read(&self, c: &Conn<tokio_postgres::Client, tokio_postgres::Statement>, i: u64) {
        let k = key((i * 7919) % KEYS);
        black_box(
            self.runtime
                .block_on(c.client.query_opt(&c.read, &[&k]))
                .unwrap(),
        );
    }

    fn write(&self, c: &Conn<tokio_postgres::Client, tokio_postgres::Statement>) {
        // An INSERT on its own is one synced transaction (a shared connection cannot hold a
        // transaction per thread).
        let k = key(KEYS + FRESH.fetch_add(1, Ordering::Relaxed));
        self.runtime
            .block_on(c.client.execute(&c.write, &[&k, &k]))
            .unwrap();
    }
}

type SyncConn = Mutex<Conn<postgres::Client, postgres::Statement>>;

fn sync_connect(pg: &Postgres) -> SyncConn {
    let mut client = postgres::Config::from(config(pg))
        .connect(postgres::NoTls)
        .unwrap();
    let (read, write) = (
        client.prepare(READ).unwrap(),
        client.prepare(WRITE).unwrap(),
    );
    Mutex::new(Conn {
        client,
        read,
        write,
    })
}

fn sync_read(conn: &SyncConn, i: u64) {
    let k = key((i * 7919) % KEYS);
    let c = &mut *conn.lock().unwrap();
    black_box(c.client.query_opt(&c.read, &[&k]).unwrap());
}

fn sync_write(conn: &SyncConn) {
    let k = key(KEYS + FRESH.fetch_add(1, Ordering::Relaxed));
    let c = &mut *conn.lock().unwrap();
    c.client.execute(&c.write, &[&k, &k]).unwrap();
}

fn crates(c: &mut Criterion) {
    let pg = Postgres::start();
    let mut admin = postgres::Config::from(config(&pg))
        .connect(postgres::NoTls)
        .unwrap();
    admin
        .batch_execute("CREATE TABLE kv (k bytea PRIMARY KEY, v bytea NOT NULL)")
        .unwrap();
    let keys: Vec<Vec<u8>> = (0..KEYS).map(key).collect();
    admin
        .execute(
            "INSERT INTO kv SELECT k, k FROM unnest($1::bytea[]) k",
            &[&keys],
        )
        .unwrap();
    admin.batch_execute("VACUUM ANALYZE").unwrap();
    let sync: Vec<SyncConn> = (0..THREADS).map(|_| sync_connect(&pg)).collect();
    let tokio = Async::connect(&pg);
    for threads in [1, 8] {
        for (name, write) in [("point_read", false), ("synced_insert", true)] {
            let mut g = c.benchmark_group(format!("pg_client_{name}_{threads}t"));
            g.sample_size(10);
            g.measurement_time(Duration::from_secs(5));
            g.warm_up_time(Duration::from_secs(1));
            g.bench_function("postgres", |b| {
                b.iter_custom(|n| {
                    parallel(n, threads, |t, i| {
                        if write {
                            sync_write(&sync[t]);
                        } else {
                            sync_read(&sync[t], i);
                        }
                    })
                })
            });
            for (variant, shared) in [("tokio_postgres", false), ("tokio_postgres_shared", true)] {
                g.bench_function(variant, |b| {
                    b.iter_custom(|n| {
                        parallel(n, threads, |t, i| {
                            let client = &tokio.clients[if shared { 0 } else { t }];
                            if write {
                                tokio.write(client);
                            } else {
                                tokio.read(client, i);
                            }
                        })
                    })
                });
            }
            g.finish();
        }
    }
    drop(pg);
}

criterion_group!(benches, crates);
criterion_main!(benches);
