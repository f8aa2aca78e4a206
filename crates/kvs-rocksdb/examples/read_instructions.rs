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

use ortelius_kvs::{Cell, TableRef};
use ortelius_txn::TransactionManager;

use common::{env, row as key, transactional};

const KEYS: u64 = 100_000;

fn main() {
    let reads = env("READS", 100_000).max(1);
    let dir = tempfile::tempdir().unwrap();
    let (manager, table) = transactional(&dir.path().join("store"), KEYS);
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
