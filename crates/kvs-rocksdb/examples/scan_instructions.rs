//! A contract-layer range scan of `ROWS` rows (default 10 000) next to a raw RocksDB iteration
//! over the same number of keys, both stores holding the same `KEYS` (default 100 000)
//! compacted rows, for counting instructions per row, which are stable where wall-clock time
//! is not:
//!
//! ```sh
//! cargo build --release --workspace --example scan_instructions
//! valgrind --tool=callgrind --toggle-collect='scan_instructions::measured_*' \
//!     --callgrind-out-file=scan.out "${CARGO_TARGET_DIR:-target}/release/examples/scan_instructions"
//! callgrind_annotate --inclusive=yes scan.out | grep measured_
//! ```
//!
//! Each `measured_` function's inclusive count divided by `SCANS * ROWS` is its instructions per
//! row; their quotients are the instruction ratios of the `range_scan` (`get_range`) and
//! `range_scan_borrowed` (`scan_range`) groups of `kvs_vs_raw`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;
use std::ops::ControlFlow;

use ortelius_kvs::{KeyValueService, RangeRequest, RowRange, TableRef, MAX_READ_TS};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

use common::{env, load, row};

fn main() {
    let (keys, rows, scans) = (
        env("KEYS", 100_000),
        env("ROWS", 10_000),
        env("SCANS", 20).max(1),
    );
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("store"), &RocksDbConfig::default()).unwrap();
    let raw = rocksdb::DB::open(
        &ortelius_kvs_rocksdb::rocksdb_options(),
        dir.path().join("raw"),
    )
    .unwrap();
    let table = load(&kvs, keys);
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let mut batch = rocksdb::WriteBatch::default();
        for &i in chunk {
            batch.put(row(i), [7u8; 100]);
        }
        raw.write(batch).unwrap();
    }
    raw.compact_range::<&[u8], &[u8]>(None, None);
    // Warm both block caches first, outside the counted functions.
    let all = RangeRequest::rows(RowRange::all());
    assert_eq!(
        kvs.get_range(&table, &all, MAX_READ_TS).unwrap().count() as u64,
        keys
    );
    let mut it = raw.raw_iterator();
    it.seek_to_first();
    while it.valid() {
        it.next();
    }
    for _ in 0..scans {
        assert_eq!(measured_scan(&kvs, &table, rows), rows);
        assert_eq!(measured_scan_range(&kvs, &table, rows), rows);
        assert_eq!(measured_raw_scan(&raw, rows), rows);
    }
    eprintln!("{scans} scans of {rows} rows each, on both stores");
}

#[inline(never)]
fn measured_scan(kvs: &RocksDbKvs, table: &TableRef, rows: u64) -> u64 {
    let request = RangeRequest::rows(RowRange::all());
    let mut n = 0;
    for row in kvs
        .get_range(table, &request, MAX_READ_TS)
        .unwrap()
        .take(usize::try_from(rows).unwrap())
    {
        black_box(row.unwrap());
        n += 1;
    }
    n
}

/// `scan_range`, copying each row name and contents out as the raw scan copies key and value.
#[inline(never)]
fn measured_scan_range(kvs: &RocksDbKvs, table: &TableRef, rows: u64) -> u64 {
    let request = RangeRequest::rows(RowRange::all());
    let mut n = 0;
    kvs.scan_range(table, &request, MAX_READ_TS, &mut |cell| {
        black_box((cell.row.to_vec(), cell.contents.to_vec()));
        n += 1;
        if n == rows {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    n
}

#[inline(never)]
fn measured_raw_scan(raw: &rocksdb::DB, rows: u64) -> u64 {
    let mut it = raw.raw_iterator();
    it.seek_to_first();
    let mut n = 0;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        black_box((k.to_vec(), v.to_vec()));
        n += 1;
        if n == rows {
            break;
        }
        it.next();
    }
    n
}
