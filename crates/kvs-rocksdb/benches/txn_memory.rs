//! Memory of Ortelius transactions on the RocksDB backend, measured with a counting allocator
//! (Rust heap only; RocksDB's C++ allocations are not included): the heap per open write
//! transaction holding one buffered write, and the peak heap of scanning 1M rows in one
//! transaction. Apart from the timing benches, whose threads the allocator's shared counters
//! would slow.
//!
//! `cargo bench --workspace --bench txn_memory`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::Instant;

use ortelius_kvs::testing::CountingAllocator;
use ortelius_kvs::{Cell, KeyValueService, RangeRequest, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{Isolation, TableMetadata, TransactionConfig, TransactionManager};
use std::sync::Arc;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

struct Store {
    _dir: tempfile::TempDir,
    manager: TransactionManager,
    table: TableRef,
}

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(dir.path().join("ortelius"), &RocksDbConfig::default()).unwrap());
    let manager = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    Store {
        _dir: dir,
        manager,
        table,
    }
}

fn main() {
    let s = store();
    // Memory per open write transaction holding one buffered write.
    const OPEN: usize = 10_000;
    let before = CountingAllocator::live_bytes();
    let txns: Vec<_> = (0..OPEN)
        .map(|i| {
            let txn = s.manager.begin(Isolation::Snapshot).unwrap();
            txn.put(
                &s.table,
                &Cell::new(key(i as u64), "v").unwrap(),
                VALUE.to_vec(),
            )
            .unwrap();
            txn
        })
        .collect();
    let per_txn = (CountingAllocator::live_bytes() - before) / OPEN;
    drop(txns);
    // Peak heap while scanning 1M rows in one transaction.
    const ROWS: u64 = 1_000_000;
    let big = TableRef::new("bench", "big").unwrap();
    s.manager
        .create_table(&big, TableMetadata::default())
        .unwrap();
    for chunk in (0..ROWS).collect::<Vec<_>>().chunks(20_000) {
        s.manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(
                        &big,
                        &Cell::new(i.to_be_bytes(), "v").unwrap(),
                        VALUE.to_vec(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
    }
    let txn = s.manager.begin_read_only().unwrap();
    let started = Instant::now();
    let mut rows = 0u64;
    let peak = CountingAllocator::peak_during(|| {
        for row in txn.get_range(&big, &RangeRequest::all()).unwrap() {
            black_box(row.unwrap());
            rows += 1;
        }
    });
    let elapsed = started.elapsed();
    assert_eq!(rows, ROWS);
    println!("memory: {per_txn} bytes of heap per open write transaction with one buffered 100-byte write");
    println!(
        "memory: scanning {ROWS} rows ({} MB of values) peaked at {:.2} MB of heap, {:.0} rows/s",
        ROWS * VALUE.len() as u64 / 1_000_000,
        peak as f64 / 1e6,
        ROWS as f64 / elapsed.as_secs_f64()
    );
}
