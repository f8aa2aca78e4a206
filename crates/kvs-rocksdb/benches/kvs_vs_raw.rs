//! The cost of the contract layer: the Ortelius RocksDB backend against raw `rocksdb` calls doing
//! the same logical work on the same data, in the same run. Each group has a `raw` and an
//! `ortelius` function; `scripts/bench-ratios.py` prints raw-time / ortelius-time per group
//! (1.0 = no overhead; the targets are ≥ 0.9 for get and put, ≥ 0.8 for scans). Point gets
//! and puts also run from 8 threads at once (`_8t`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::ops::ControlFlow;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use ortelius_kvs::testing::parallel;
use ortelius_kvs::{Cell, KeyValueService, RangeRequest, RowRange, TableRef, MAX_READ_TS};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use rocksdb::{WriteOptions, DB};

const KEYS: u64 = 200_000;
const SCAN_ROWS: u64 = 10_000;
const VALUE: [u8; 100] = [7; 100];

fn row(i: u64) -> [u8; 8] {
    // Spread keys so neighbouring inserts do not share a memtable page.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

fn raw_db(dir: &std::path::Path) -> DB {
    let opts = ortelius_kvs_rocksdb::rocksdb_options();
    DB::open(&opts, dir).unwrap()
}

struct Stores {
    _dir: tempfile::TempDir,
    raw: DB,
    kvs: RocksDbKvs,
    table: TableRef,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_db(&dir.path().join("raw"));
    let kvs = RocksDbKvs::open(dir.path().join("ortelius"), &RocksDbConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    kvs.create_table(&table, b"").unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut batch = rocksdb::WriteBatch::default();
        let mut writes = Vec::with_capacity(chunk.len());
        for &i in chunk {
            batch.put(row(i), VALUE);
            writes.push((Cell::new(row(i), "v").unwrap(), VALUE.to_vec()));
        }
        raw.write(batch).unwrap();
        kvs.put(&table, &writes, 1).unwrap();
    }
    raw.flush().unwrap();
    kvs.compact();
    raw.compact_range(None::<&[u8]>, None::<&[u8]>);
    Stores {
        _dir: dir,
        raw,
        kvs,
        table,
    }
}

fn point_get(c: &mut Criterion) {
    let s = stores();
    let mut group = c.benchmark_group("point_get");
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function("raw", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            black_box(s.raw.get(row(i)).unwrap())
        })
    });
    let mut i = 0u64;
    group.bench_function("ortelius", |b| {
        b.iter(|| {
            i = (i + 7919) % KEYS;
            let cell = Cell::new(row(i), "v").unwrap();
            black_box(s.kvs.get(&s.table, &[(cell, MAX_READ_TS)]).unwrap())
        })
    });
    group.finish();
}

fn put(c: &mut Criterion) {
    let s = stores();
    let mut group = c.benchmark_group("put");
    group.throughput(Throughput::Elements(1));
    let mut unsynced = WriteOptions::default();
    unsynced.set_sync(false);
    let mut i = KEYS;
    group.bench_function("raw", |b| {
        b.iter(|| {
            i += 1;
            s.raw.put_opt(row(i), VALUE, &unsynced).unwrap()
        })
    });
    let mut i = KEYS;
    group.bench_function("ortelius", |b| {
        b.iter(|| {
            i += 1;
            let cell = Cell::new(row(i), "v").unwrap();
            s.kvs.put(&s.table, &[(cell, VALUE.to_vec())], 1).unwrap()
        })
    });
    group.finish();
}

/// Raw RocksDB's side of a scan: the first `SCAN_ROWS` keys, each key and value copied out.
fn raw_scan(db: &DB) -> u64 {
    let mut it = db.raw_iterator();
    it.seek_to_first();
    let mut n = 0;
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        black_box((k.to_vec(), v.to_vec()));
        n += 1;
        if n == SCAN_ROWS {
            break;
        }
        it.next();
    }
    n
}

/// A scan group, its raw side already measured.
fn scan_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    s: &Stores,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(SCAN_ROWS));
    group.sample_size(20);
    group.bench_function("raw", |b| b.iter(|| raw_scan(&s.raw)));
    group
}

/// The contract's scans against raw iteration: `range_scan` builds the owned rows of
/// `get_range`; `range_scan_borrowed` visits each cell with `scan_range` and copies its row
/// name and contents out, as the raw side copies its key and value.
fn range_scan(c: &mut Criterion) {
    let s = stores();
    let request = RangeRequest::rows(RowRange::all());
    let mut group = scan_group(c, "range_scan", &s);
    group.bench_function("ortelius", |b| {
        b.iter(|| {
            let mut rows = 0;
            for row in s
                .kvs
                .get_range(&s.table, &request, MAX_READ_TS)
                .unwrap()
                .take(SCAN_ROWS as usize)
            {
                black_box(row.unwrap());
                rows += 1;
            }
            assert_eq!(rows, SCAN_ROWS);
        })
    });
    group.finish();
    let mut group = scan_group(c, "range_scan_borrowed", &s);
    group.bench_function("ortelius", |b| {
        b.iter(|| {
            // One column per row: a cell is a row.
            let mut rows = 0;
            s.kvs
                .scan_range(&s.table, &request, MAX_READ_TS, &mut |cell| {
                    black_box((cell.row.to_vec(), cell.contents.to_vec()));
                    rows += 1;
                    if rows == SCAN_ROWS {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .unwrap();
            assert_eq!(rows, SCAN_ROWS);
        })
    });
    group.finish();
}

/// Point gets and unsynced puts from 8 threads at once, on the same data.
fn eight_threads(c: &mut Criterion) {
    let s = stores();
    let get = |s: &Stores, i: u64| {
        let i = i.wrapping_mul(7919) % KEYS;
        let cell = Cell::new(row(i), "v").unwrap();
        black_box(s.kvs.get(&s.table, &[(cell, MAX_READ_TS)]).unwrap());
    };
    let raw_get = |s: &Stores, i: u64| {
        black_box(s.raw.get(row(i.wrapping_mul(7919) % KEYS)).unwrap());
    };
    let mut unsynced = WriteOptions::default();
    unsynced.set_sync(false);
    // Every put writes a key not written before (rewriting one would take another path).
    let fresh = std::sync::atomic::AtomicU64::new(2 * KEYS);
    let next = || fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let put = |s: &Stores| {
        let cell = Cell::new(row(next()), "v").unwrap();
        s.kvs.put(&s.table, &[(cell, VALUE.to_vec())], 1).unwrap()
    };
    let raw_put = |s: &Stores| s.raw.put_opt(row(next()), VALUE, &unsynced).unwrap();
    let mut group = c.benchmark_group("point_get_8t");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| parallel(iters, 8, |_, i| raw_get(&s, i)))
    });
    group.bench_function("ortelius", |b| {
        b.iter_custom(|iters| parallel(iters, 8, |_, i| get(&s, i)))
    });
    group.finish();
    let mut group = c.benchmark_group("put_8t");
    group.measurement_time(Duration::from_secs(4));
    group.bench_function("raw", |b| {
        b.iter_custom(|iters| parallel(iters, 8, |_, _| raw_put(&s)))
    });
    group.bench_function("ortelius", |b| {
        b.iter_custom(|iters| parallel(iters, 8, |_, _| put(&s)))
    });
    group.finish();
}

criterion_group!(benches, point_get, put, range_scan, eight_threads);
criterion_main!(benches);
