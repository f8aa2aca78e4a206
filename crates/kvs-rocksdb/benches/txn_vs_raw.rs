//! The cost of transactions: Ortelius transactions on its RocksDB backend against raw RocksDB
//! doing the same logical work with the same durability, in the same run, at 1 and 8 threads.
//! Each group has `raw`, `raw_versioned` (raw RocksDB doing the protocol's storage work on
//! Ortelius's key layout: [`versioned_write`], [`versioned_read`]), `optimistic` (RocksDB's
//! `OptimisticTransactionDB`), `pessimistic` (RocksDB's `TransactionDB`) and `ortelius`.
//! `scripts/bench-ratios.py` prints baseline-time /
//! ortelius-time for each baseline. RocksDB's transactions read at a snapshot taken when the
//! transaction begins and commit with a synced write, as Ortelius does. All five stores are
//! opened with the backend's own options and hold the same data.
//!
//! Durability parity: raw writes are synced (`sync = true`); a transaction writes its data
//! unsynced and returns from its commit once the commit record is synced, which makes the data
//! durable too (one WAL).
//!
//! `INTERLEAVED_ROUNDS=n cargo bench --bench txn_vs_raw [-- group]` measures without criterion:
//! the flavours of each group take turns, round after round, and the ratios are per round (see
//! [`common`]); criterion measures one flavour for seconds before the next.
//!
//! The stores hold their rows in memtables, as loaded; with `FLUSHED` set, in SST files (as
//! most of a long-lived store is).
//!
//! Memory is measured by `txn_memory`, apart: its counting allocator updates shared counters on
//! every allocation, which with 8 threads would slow whichever side allocates more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ortelius_kvs::testing::parallel;
use std::cell::RefCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, Criterion};
use ortelius_kvs::{keycodec, Cell, KeyValueService, TableRef, Timestamp};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};
use rocksdb::{
    DBRawIterator, OptimisticTransactionDB, OptimisticTransactionOptions, ReadOptions,
    TransactionDB, TransactionDBOptions, TransactionOptions, WriteOptions, DB,
};

const KEYS: u64 = 100_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

/// The table id and the timestamps of the rows in the `raw_versioned` store.
const VERSIONED_TABLE: u32 = 1;
const VERSIONED_WRITE_TS: Timestamp = 1;
const VERSIONED_READ_TS: Timestamp = 1 << 40;

struct Stores {
    _dir: tempfile::TempDir,
    raw: DB,
    /// The rows under Ortelius's key layout. Leaked, so that each bench thread can keep an
    /// iterator over it in a thread-local (as Ortelius's iterator pool keeps them).
    versioned: &'static DB,
    optimistic: OptimisticTransactionDB,
    pessimistic: TransactionDB,
    manager: TransactionManager,
    table: TableRef,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let opts = ortelius_kvs_rocksdb::rocksdb_options();
    let raw = DB::open(&opts, dir.path().join("raw")).unwrap();
    let versioned: &'static DB = Box::leak(Box::new(
        DB::open(&opts, dir.path().join("versioned")).unwrap(),
    ));
    let optimistic = OptimisticTransactionDB::open(&opts, dir.path().join("optimistic")).unwrap();
    let pessimistic = TransactionDB::open(
        &opts,
        &TransactionDBOptions::default(),
        dir.path().join("pessimistic"),
    )
    .unwrap();
    let rocks =
        Arc::new(RocksDbKvs::open(dir.path().join("ortelius"), &RocksDbConfig::default()).unwrap());
    let kvs: Arc<dyn KeyValueService> = rocks.clone();
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
        let mut batch = rocksdb::WriteBatch::default();
        for &i in chunk {
            let cell = Cell::new(key(i), "v").unwrap();
            batch.put(
                keycodec::version_key(VERSIONED_TABLE, &cell, VERSIONED_WRITE_TS),
                VALUE,
            );
        }
        versioned.write(batch).unwrap();
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
    if std::env::var_os("FLUSHED").is_some() {
        // Every store's rows in one SST file, none in a memtable.
        raw.flush().unwrap();
        versioned.flush().unwrap();
        optimistic.flush().unwrap();
        pessimistic.flush().unwrap();
        rocks.compact();
    }
    Stores {
        _dir: dir,
        raw,
        versioned,
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

/// Raw RocksDB writing what a transaction must write, in the order it must, on Ortelius's key
/// layout: the new version unsynced, then a synced commit record (a row of another table,
/// keyed by the start timestamp). Two trips through the one write-ahead log, the second holding
/// RocksDB's write queue during its sync; Ortelius syncs its commit records beside the queue.
fn versioned_write(s: &Stores, i: u64) {
    let start = VERSIONED_WRITE_TS + 1 + i as Timestamp;
    let cell = Cell::new(key(KEYS + i), "v").unwrap();
    s.versioned
        .put(keycodec::version_key(VERSIONED_TABLE, &cell, start), VALUE)
        .unwrap();
    let record = Cell::new(start.to_be_bytes(), "t").unwrap();
    s.versioned
        .put_opt(
            keycodec::version_key(VERSIONED_TABLE + 1, &record, 0),
            (start + 1).to_be_bytes(),
            &synced(),
        )
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

/// Raw RocksDB doing the storage work of a snapshot point read, as Ortelius's backend does it:
/// seek a reused iterator (refreshed only when the store has changed) to the newest version of
/// the cell below the read timestamp, on the same key layout (table id, escaped row and
/// column, inverted timestamp). Its cost beyond `raw` is the multi-version layout (a seek where
/// a plain key allows a `get`); Ortelius's cost beyond it is the transaction (start timestamp,
/// the writer's commit timestamp, the contract's owned cells and maps).
fn versioned_read(s: &Stores, i: u64) {
    thread_local! {
        static ITER: RefCell<Option<(u64, DBRawIterator<'static>)>> = const { RefCell::new(None) };
    }
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    let seek = keycodec::version_key(VERSIONED_TABLE, &cell, VERSIONED_READ_TS - 1);
    let prefix = &seek[..seek.len() - keycodec::TS_LEN];
    ITER.with_borrow_mut(|slot| {
        let latest = s.versioned.latest_sequence_number();
        let (seen, iter) = slot.get_or_insert_with(|| (latest, s.versioned.raw_iterator()));
        if *seen != latest {
            iter.refresh().unwrap();
            *seen = latest;
        }
        iter.seek(&seek);
        black_box(
            iter.key()
                .filter(|k| k.starts_with(prefix))
                .and_then(|_| iter.value().map(<[u8]>::to_vec)),
        );
    });
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

const FLAVOURS: [Flavour; 5] = [
    Flavour {
        name: "raw",
        write: raw_write,
        read: raw_read,
    },
    Flavour {
        name: "raw_versioned",
        write: versioned_write,
        read: versioned_read,
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

/// The benchmarked operations, by group name prefix.
fn ops() -> [(&'static str, Op); 3] {
    [
        ("write_txn", |f, s, i| (f.write)(s, i)),
        ("read_txn", |f, s, i| (f.read)(s, i)),
        ("mix_95_5", mix),
    ]
}

fn throughput(c: &mut Criterion) {
    let s = stores();
    for threads in [1, 8] {
        for (name, op) in ops() {
            let mut group = c.benchmark_group(format!("{name}_{threads}t"));
            group.sample_size(10);
            group.measurement_time(Duration::from_secs(4));
            group.warm_up_time(Duration::from_secs(1));
            for f in FLAVOURS.iter() {
                group.bench_function(f.name, |b| {
                    b.iter_custom(|iters| parallel(iters, threads, |_, i| op(f, &s, i)))
                });
            }
            group.finish();
        }
    }
}

/// The interleaved measurement (`INTERLEAVED_ROUNDS=n`, see [`common`]) of every group.
fn interleaved(rounds: usize, filter: Option<&str>) {
    let s = &stores();
    for threads in [1, 8] {
        for (name, op) in ops() {
            let group = format!("{name}_{threads}t");
            if filter.is_some_and(|f| !group.contains(f)) {
                continue;
            }
            let flavours: Vec<_> = FLAVOURS
                .iter()
                .map(|f| (f.name, move |i| op(f, s, i)))
                .collect();
            common::compare(&group, rounds, threads, &flavours);
        }
    }
}

criterion_group!(benches, throughput);

fn main() {
    common::main(interleaved, benches);
}
