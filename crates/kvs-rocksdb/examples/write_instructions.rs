//! Single-cell write transactions (synced commits) into a store that already holds `KEYS`
//! (default 100 000) cells, next to raw RocksDB writing the same data unsynced and then a synced
//! record, for counting instructions per transaction, which are stable where wall-clock time
//! is not:
//!
//! ```sh
//! cargo build --release --workspace --example write_instructions
//! WRITES=5000 valgrind --tool=callgrind --toggle-collect='write_instructions::measured_*' \
//!     "${CARGO_TARGET_DIR:-target}/release/examples/write_instructions"
//! ```
//!
//! `callgrind_annotate --inclusive=yes` splits "Collected" between `measured_write` (the
//! transaction) and `measured_raw` (the two raw writes); divide each by `WRITES`. The fsyncs
//! are system calls, which callgrind does not count.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ortelius_kvs::{Cell, TableRef};
use ortelius_kvs_rocksdb::rocksdb_options;
use ortelius_txn::TransactionManager;
use rocksdb::{WriteOptions, DB};

use common::{env, row as key, transactional};

fn main() {
    let (keys, writes) = (env("KEYS", 100_000), env("WRITES", 20_000).max(1));
    let dir = tempfile::tempdir().unwrap();
    let (manager, table) = transactional(&dir.path().join("store"), keys);
    let raw = DB::open(&rocksdb_options(), dir.path().join("raw")).unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(5000) {
        let mut batch = rocksdb::WriteBatch::default();
        for &i in chunk {
            batch.put(key(i), [7u8; 100]);
        }
        raw.write(batch).unwrap();
    }
    let mut synced = WriteOptions::default();
    synced.set_sync(true);
    // Alternated, so both sides see the same disk over the same period.
    let (mut ortelius, mut raw_time) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for i in keys..keys + writes {
        let started = std::time::Instant::now();
        measured_write(&manager, &table, i);
        ortelius += started.elapsed();
        let started = std::time::Instant::now();
        measured_raw(&raw, &synced, i);
        raw_time += started.elapsed();
    }
    let per = |d: std::time::Duration| d / u32::try_from(writes).unwrap_or(u32::MAX);
    eprintln!(
        "{writes} write transactions, {:?} each; raw data then synced record, {:?} each",
        per(ortelius),
        per(raw_time)
    );
}

#[inline(never)]
fn measured_write(manager: &TransactionManager, table: &TableRef, i: u64) {
    let cell = Cell::new(key(i), "v").unwrap();
    manager
        .run(|txn| txn.put(table, &cell, vec![7u8; 100]))
        .unwrap();
}

#[inline(never)]
fn measured_raw(raw: &DB, synced: &WriteOptions, i: u64) {
    raw.put(key(i), [7u8; 100]).unwrap();
    raw.put_opt(i.to_be_bytes(), key(i), synced).unwrap();
}
