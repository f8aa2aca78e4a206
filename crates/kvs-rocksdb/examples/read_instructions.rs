//! Read-only transactions that each read one cell, for counting instructions per read, which
//! are stable where wall-clock time is not:
//!
//! ```sh
//! cargo build --release --workspace --example read_instructions
//! READS=50000 valgrind --tool=callgrind --toggle-collect='read_instructions::measured_read' \
//!     "${CARGO_TARGET_DIR:-target}/release/examples/read_instructions"
//! ```
//!
//! "Collected" divided by `READS` is the instructions per read-only transaction;
//! `callgrind_annotate --inclusive=yes` splits it (the RocksDB seek, the start timestamp, the
//! commit-timestamp lookup, the transaction's own bookkeeping).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

use common::{env, row as key};

const KEYS: u64 = 100_000;

fn main() {
    let reads = env("READS", 100_000).max(1);
    let dir = tempfile::tempdir().unwrap();
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(dir.path().join("store"), &RocksDbConfig::default()).unwrap());
    let manager = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(5000) {
        manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(&table, &Cell::new(key(i), "v").unwrap(), vec![7u8; 100])?;
                }
                Ok(())
            })
            .unwrap();
    }
    let started = std::time::Instant::now();
    for i in 0..reads {
        measured_read(&manager, &table, i);
    }
    eprintln!(
        "{reads} reads, {:?} per read",
        started.elapsed() / u32::try_from(reads).unwrap_or(u32::MAX)
    );
}

#[inline(never)]
fn measured_read(manager: &TransactionManager, table: &TableRef, i: u64) {
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    let value = manager
        .run_read_only(|txn| txn.get_one(table, &cell))
        .unwrap();
    assert!(value.is_some());
}
