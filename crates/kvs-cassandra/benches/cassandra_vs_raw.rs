//! Ortelius on Cassandra against plain CQL through the same driver doing the same logical work
//! on the same single-node cluster (started by this benchmark), in one run. Each group has
//! `raw` and `ortelius`; `scripts/bench-ratios.py` prints raw-time / ortelius-time. Targets:
//! single-cell write transactions ≥ 0.25× a raw `INSERT` at QUORUM (the commit record is a
//! lightweight transaction: several round trips by design), read-only point reads ≥ 0.6× a raw
//! `SELECT` at QUORUM; 1 and 8 threads. The write groups also time `lwt`, a raw
//! `INSERT … IF NOT EXISTS` (the one lightweight transaction a commit needs, its commit record):
//! lwt-time / ortelius-time shows how much of a write transaction is that one request.
//!
//! `cargo bench --workspace --bench cassandra_vs_raw`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ortelius_kvs::testing::parallel;
use ortelius_kvs::{Cell, TableRef};
use ortelius_kvs_cassandra::{CassandraConfig, CassandraKvs};
use ortelius_test_servers::CassandraCluster;
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};

const KEYS: u64 = 5_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

struct Setup {
    _cluster: CassandraCluster,
    runtime: tokio::runtime::Runtime,
    session: Session,
    insert: PreparedStatement,
    insert_if_absent: PreparedStatement,
    select: PreparedStatement,
    manager: TransactionManager,
    table: TableRef,
}

fn setup() -> Setup {
    let cluster = CassandraCluster::start(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (session, mut insert, mut insert_if_absent, mut select) = runtime.block_on(async {
        let session = SessionBuilder::new()
            .known_nodes(cluster.servers())
            .build()
            .await
            .unwrap();
        session
            .query_unpaged(
                "CREATE KEYSPACE raw WITH replication = {'class': 'SimpleStrategy', 'replication_factor': 1}",
                (),
            )
            .await
            .unwrap();
        session
            .query_unpaged("CREATE TABLE raw.kv (k blob PRIMARY KEY, v blob)", ())
            .await
            .unwrap();
        let insert = session
            .prepare("INSERT INTO raw.kv (k, v) VALUES (?, ?)")
            .await
            .unwrap();
        let insert_if_absent = session
            .prepare("INSERT INTO raw.kv (k, v) VALUES (?, ?) IF NOT EXISTS")
            .await
            .unwrap();
        let select = session
            .prepare("SELECT v FROM raw.kv WHERE k = ?")
            .await
            .unwrap();
        (session, insert, insert_if_absent, select)
    });
    insert.set_consistency(Consistency::Quorum);
    insert_if_absent.set_consistency(Consistency::Quorum);
    insert_if_absent.set_serial_consistency(Some(SerialConsistency::Serial));
    select.set_consistency(Consistency::Quorum);
    let kvs =
        Arc::new(CassandraKvs::open(&CassandraConfig::new(cluster.servers(), "bench", 1)).unwrap());
    let manager = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(100) {
        runtime.block_on(async {
            for &i in chunk {
                session
                    .execute_unpaged(&insert, (key(i).to_vec(), VALUE.to_vec()))
                    .await
                    .unwrap();
            }
        });
        manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(&table, &Cell::new(key(i), "v").unwrap(), VALUE.to_vec())?;
                }
                Ok(())
            })
            .unwrap();
    }
    Setup {
        _cluster: cluster,
        runtime,
        session,
        insert,
        insert_if_absent,
        select,
        manager,
        table,
    }
}

/// One timed operation: (setup, thread, iteration).
type Op = fn(&Setup, usize, u64);

static FRESH: AtomicU64 = AtomicU64::new(0);

fn raw_write(s: &Setup, _: usize, _: u64) {
    let k = key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed)).to_vec();
    s.runtime
        .block_on(s.session.execute_unpaged(&s.insert, (k, VALUE.to_vec())))
        .unwrap();
}

fn raw_lwt(s: &Setup, _: usize, _: u64) {
    let k = key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed)).to_vec();
    s.runtime
        .block_on(
            s.session
                .execute_unpaged(&s.insert_if_absent, (k, VALUE.to_vec())),
        )
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

fn raw_read(s: &Setup, _: usize, i: u64) {
    let k = key((i * 7919) % KEYS).to_vec();
    let result = s
        .runtime
        .block_on(s.session.execute_unpaged(&s.select, (k,)))
        .unwrap();
    let rows = result.into_rows_result().unwrap();
    assert_eq!(rows.rows_num(), 1);
    black_box(rows);
}

fn txn_read(s: &Setup, _: usize, i: u64) {
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    black_box(
        s.manager
            .run_read_only(|txn| txn.get_one(&s.table, &cell))
            .unwrap()
            .unwrap(),
    );
}

fn group(
    c: &mut Criterion,
    s: &Setup,
    name: &str,
    threads: u64,
    baselines: &[(&str, Op)],
    ours: Op,
) {
    let mut g = c.benchmark_group(format!("cassandra_{name}_{threads}t"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    for (baseline, run) in baselines {
        g.bench_function(*baseline, |b| {
            b.iter_custom(|n| parallel(n, threads, |t, i| run(s, t, i)))
        });
    }
    g.bench_function("ortelius", |b| {
        b.iter_custom(|n| parallel(n, threads, |t, i| ours(s, t, i)))
    });
    g.finish();
}

fn throughput(c: &mut Criterion) {
    let s = setup();
    for threads in [1, 8] {
        let writes: [(&str, Op); 2] = [("raw", raw_write), ("lwt", raw_lwt)];
        group(c, &s, "write_txn", threads, &writes, txn_write);
        group(c, &s, "read_txn", threads, &[("raw", raw_read)], txn_read);
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
