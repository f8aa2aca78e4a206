//! The cost of transactions: Ortelius transactions on its RocksDB backend against raw RocksDB
//! doing the same logical work with the same durability, in the same run, at 1 and 8 threads.
//! Each group has `raw`, `optimistic` (RocksDB's `OptimisticTransactionDB`), `pessimistic`
//! (RocksDB's `TransactionDB`) and `ortelius`; the groups with writes also have
//! `raw_two_writes`, raw RocksDB writing what the protocol must write in the order it must
//! (the data unsynced, then a synced commit record: two trips through the one write-ahead
//! log, the second holding RocksDB's write queue during its sync; Ortelius syncs its commit
//! records beside the queue instead). `scripts/bench-ratios.py` prints baseline-time /
//! ortelius-time for each baseline. RocksDB's transactions read at a snapshot taken when the
//! transaction begins and commit with a synced write, as Ortelius does. All four stores are
//! opened with the backend's own options and hold the same data.
//!
//! Durability parity: raw writes are synced (`sync = true`); a transaction writes its data
//! unsynced and returns from its commit once the commit record is synced, which makes the data
//! durable too (one WAL).
//!
//! Memory is measured by `txn_memory`, apart: its counting allocator updates shared counters on
//! every allocation, which with 8 threads would slow whichever side allocates more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use ortelius_kvs::testing::parallel;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};
use rocksdb::{
    OptimisticTransactionDB, OptimisticTransactionOptions, ReadOptions, TransactionDB,
    TransactionDBOptions, TransactionOptions, WriteOptions, DB,
};

const KEYS: u64 = 100_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

struct Stores {
    _dir: tempfile::TempDir,
    raw: DB,
    optimistic: OptimisticTransactionDB,
    pessimistic: TransactionDB,
    manager: TransactionManager,
    table: TableRef,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let opts = ortelius_kvs_rocksdb::rocksdb_options();
    let raw = DB::open(&opts, dir.path().join("raw")).unwrap();
    let optimistic = OptimisticTransactionDB::open(&opts, dir.path().join("optimistic")).unwrap();
    let pessimistic = TransactionDB::open(
        &opts,
        &TransactionDBOptions::default(),
        dir.path().join("pessimistic"),
    )
    .unwrap();
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(dir.path().join("ortelius"), &RocksDbConfig::default()).unwrap());
    let manager = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(5000) {
        let mut batch = rocksdb::WriteBatch::default();
        for &i in chunk {
            batch.put(key(i), VALUE);
        }
        raw.write(batch).unwrap();
        let txn = optimistic.transaction();
        let other = pessimistic.transaction();
        for &i in chunk {
            txn.put(key(i), VALUE).unwrap();
            other.put(key(i), VALUE).unwrap();
        }
        txn.commit().unwrap();
        other.commit().unwrap();
        manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(&table, &Cell::new(key(i), "v").unwrap(), VALUE.to_vec())?;
                }
                Ok(())
            })
            .unwrap();
    }
    Stores {
        _dir: dir,
        raw,
        optimistic,
        pessimistic,
        manager,
        table,
    }
}

fn synced() -> WriteOptions {
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    synced
}

fn optimistic_write(s: &Stores, i: u64) {
    let mut opts = OptimisticTransactionOptions::default();
    opts.set_snapshot(true);
    let txn = s.optimistic.transaction_opt(&synced(), &opts);
    txn.put(key(KEYS + i), VALUE).unwrap();
    txn.commit().unwrap();
}

fn optimistic_read(s: &Stores, i: u64) {
    let mut opts = OptimisticTransactionOptions::default();
    opts.set_snapshot(true);
    let txn = s
        .optimistic
        .transaction_opt(&WriteOptions::default(), &opts);
    let mut read = ReadOptions::default();
    read.set_snapshot(&txn.snapshot());
    black_box(txn.get_opt(key((i * 7919) % KEYS), &read).unwrap());
    txn.rollback().unwrap();
}

fn pessimistic_write(s: &Stores, i: u64) {
    let mut opts = TransactionOptions::default();
    opts.set_snapshot(true);
    let txn = s.pessimistic.transaction_opt(&synced(), &opts);
    txn.put(key(KEYS + i), VALUE).unwrap();
    txn.commit().unwrap();
}

fn pessimistic_read(s: &Stores, i: u64) {
    let mut opts = TransactionOptions::default();
    opts.set_snapshot(true);
    let txn = s
        .pessimistic
        .transaction_opt(&WriteOptions::default(), &opts);
    let mut read = ReadOptions::default();
    read.set_snapshot(&txn.snapshot());
    black_box(txn.get_opt(key((i * 7919) % KEYS), &read).unwrap());
    txn.rollback().unwrap();
}

fn raw_write(s: &Stores, i: u64) {
    s.raw.put_opt(key(KEYS + i), VALUE, &synced()).unwrap();
}

fn raw_two_writes(s: &Stores, i: u64) {
    s.raw.put(key(KEYS + i), VALUE).unwrap();
    let mut record = *b"commit--";
    record[6..].copy_from_slice(&key(KEYS + i)[..2]);
    s.raw
        .put_opt(record, (KEYS + i).to_be_bytes(), &synced())
        .unwrap();
}

fn txn_write(s: &Stores, i: u64) {
    let cell = Cell::new(key(KEYS + i), "v").unwrap();
    s.manager
        .run(|txn| txn.put(&s.table, &cell, VALUE.to_vec()))
        .unwrap();
}

fn raw_read(s: &Stores, i: u64) {
    black_box(s.raw.get(key((i * 7919) % KEYS)).unwrap());
}

fn txn_read(s: &Stores, i: u64) {
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    black_box(
        s.manager
            .run_read_only(|txn| txn.get_one(&s.table, &cell))
            .unwrap(),
    );
}

/// One way of doing the benchmark's work: a write (`i % 20 == 0` in the mix) and a read.
struct Flavour {
    name: &'static str,
    write: fn(&Stores, u64),
    read: fn(&Stores, u64),
}

/// The flavour that differs from `raw` only in its writes (not run in the read-only group).
const RAW_TWO_WRITES: &str = "raw_two_writes";

const FLAVOURS: [Flavour; 5] = [
    Flavour {
        name: "raw",
        write: raw_write,
        read: raw_read,
    },
    Flavour {
        name: RAW_TWO_WRITES,
        write: raw_two_writes,
        read: raw_read,
    },
    Flavour {
        name: "optimistic",
        write: optimistic_write,
        read: optimistic_read,
    },
    Flavour {
        name: "pessimistic",
        write: pessimistic_write,
        read: pessimistic_read,
    },
    Flavour {
        name: "ortelius",
        write: txn_write,
        read: txn_read,
    },
];

/// A benchmarked operation, run with one flavour.
type Op = fn(&Flavour, &Stores, u64);

fn mix(f: &Flavour, s: &Stores, i: u64) {
    if i.is_multiple_of(20) {
        (f.write)(s, i)
    } else {
        (f.read)(s, i)
    }
}

fn throughput(c: &mut Criterion) {
    let s = stores();
    for threads in [1, 8] {
        let ops: [(&str, Op); 3] = [
            ("write_txn", |f, s, i| (f.write)(s, i)),
            ("read_txn", |f, s, i| (f.read)(s, i)),
            ("mix_95_5", mix),
        ];
        for (name, op) in ops {
            let mut group = c.benchmark_group(format!("{name}_{threads}t"));
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(4));
            group.warm_up_time(Duration::from_secs(1));
            for f in FLAVOURS
                .iter()
                .filter(|f| name != "read_txn" || f.name != RAW_TWO_WRITES)
            {
                group.bench_function(f.name, |b| {
                    b.iter_custom(|iters| parallel(iters, threads, |_, i| op(f, &s, i)))
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, throughput);
criterion_main!(benches);
