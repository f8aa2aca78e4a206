//! The cost of the contract layer: the Ortelius RocksDB backend against raw `rocksdb` calls doing
//! the same logical work on the same data, in the same run. Each group has a `raw` and an
//! `ortelius` function; `scripts/bench-ratios.py` prints raw-time / ortelius-time per group
//! (1.0 = no overhead; the targets are ≥ 0.9 for get and put, ≥ 0.8 for scans). Point gets
//! and puts also run from 8 threads at once (`_8t`). The put and scan groups also have
//! `raw_layout`: raw RocksDB on a third store holding the same rows under Ortelius's own keys
//! (table id, escaped row and column, inverted timestamp), which separates what the longer keys
//! cost from what the contract layer's own work costs.
//!
//! `INTERLEAVED_ROUNDS=n cargo bench --bench kvs_vs_raw [-- group]` measures without
//! criterion: the flavours of each group take turns, round after round (see [`common`]).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::hint::black_box;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, Criterion, Throughput};
use ortelius_kvs::keycodec::version_key;
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

/// Row `i`'s key in Ortelius's layout: the version at timestamp 1 of cell (`row(i)`, "v") of a
/// table whose id is 1 (the id's value does not change the key's length).
fn layout_key(i: u64) -> Vec<u8> {
    version_key(1, &Cell::new(row(i), "v").unwrap(), 1)
}

fn raw_db(dir: &std::path::Path) -> DB {
    let opts = ortelius_kvs_rocksdb::rocksdb_options();
    DB::open(&opts, dir).unwrap()
}

struct Stores {
    _dir: tempfile::TempDir,
    raw: DB,
    /// Raw RocksDB with the rows under Ortelius's key layout.
    layout: DB,
    kvs: RocksDbKvs,
    table: TableRef,
    unsynced: WriteOptions,
    /// The next row no put has written yet (every put writes a new key: rewriting one would
    /// take another path).
    fresh: AtomicU64,
}

fn stores() -> Stores {
    let dir = tempfile::tempdir().unwrap();
    let raw = raw_db(&dir.path().join("raw"));
    let layout = raw_db(&dir.path().join("layout"));
    let kvs = RocksDbKvs::open(dir.path().join("ortelius"), &RocksDbConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    kvs.create_table(&table, b"").unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(1000) {
        let mut batch = rocksdb::WriteBatch::default();
        let mut layout_batch = rocksdb::WriteBatch::default();
        let mut writes = Vec::with_capacity(chunk.len());
        for &i in chunk {
            batch.put(row(i), VALUE);
            layout_batch.put(layout_key(i), VALUE);
            writes.push((Cell::new(row(i), "v").unwrap(), VALUE.to_vec()));
        }
        raw.write(batch).unwrap();
        layout.write(layout_batch).unwrap();
        kvs.put(&table, &writes, 1).unwrap();
    }
    raw.flush().unwrap();
    kvs.compact();
    raw.compact_range(None::<&[u8]>, None::<&[u8]>);
    layout.flush().unwrap();
    layout.compact_range(None::<&[u8]>, None::<&[u8]>);
    let mut unsynced = WriteOptions::default();
    unsynced.set_sync(false);
    Stores {
        _dir: dir,
        raw,
        layout,
        kvs,
        table,
        unsynced,
        fresh: AtomicU64::new(KEYS),
    }
}

/// An operation of a flavour: the store set and the operation's number.
type Op = fn(&Stores, u64);

fn spread(i: u64) -> u64 {
    i.wrapping_mul(7919) % KEYS
}

fn get_raw(s: &Stores, i: u64) {
    black_box(s.raw.get(row(spread(i))).unwrap());
}

fn get_ortelius(s: &Stores, i: u64) {
    let cell = Cell::new(row(spread(i)), "v").unwrap();
    black_box(s.kvs.get(&s.table, &[(cell, MAX_READ_TS)]).unwrap());
}

fn fresh(s: &Stores) -> u64 {
    s.fresh.fetch_add(1, Ordering::Relaxed)
}

fn put_raw(s: &Stores, _: u64) {
    s.raw.put_opt(row(fresh(s)), VALUE, &s.unsynced).unwrap()
}

fn put_layout(s: &Stores, _: u64) {
    s.layout
        .put_opt(layout_key(fresh(s)), VALUE, &s.unsynced)
        .unwrap()
}

fn put_ortelius(s: &Stores, _: u64) {
    let cell = Cell::new(row(fresh(s)), "v").unwrap();
    s.kvs.put(&s.table, &[(cell, VALUE.to_vec())], 1).unwrap()
}

/// Raw RocksDB's side of a scan: the first `SCAN_ROWS` keys, each key and value copied out.
fn raw_scan(db: &DB) {
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
    assert_eq!(n, SCAN_ROWS);
}

fn scan_raw(s: &Stores, _: u64) {
    raw_scan(&s.raw)
}

fn scan_layout(s: &Stores, _: u64) {
    raw_scan(&s.layout)
}

/// `get_range`: the contract's owned rows.
fn scan_owned(s: &Stores, _: u64) {
    let request = RangeRequest::rows(RowRange::all());
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
}

/// `scan_range`: each cell visited borrowed, its row name and contents copied out (as the raw
/// side copies its key and value); one column per row, so a cell is a row.
fn scan_borrowed(s: &Stores, _: u64) {
    let request = RangeRequest::rows(RowRange::all());
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
}

struct Group {
    name: &'static str,
    threads: u64,
    /// Rows per operation (for criterion's throughput).
    rows: u64,
    flavours: &'static [(&'static str, Op)],
}

const GROUPS: [Group; 6] = [
    Group {
        name: "point_get",
        threads: 1,
        rows: 1,
        flavours: &[("raw", get_raw), ("ortelius", get_ortelius)],
    },
    Group {
        name: "put",
        threads: 1,
        rows: 1,
        flavours: &[
            ("raw", put_raw),
            ("raw_layout", put_layout),
            ("ortelius", put_ortelius),
        ],
    },
    Group {
        name: "range_scan",
        threads: 1,
        rows: SCAN_ROWS,
        flavours: &[
            ("raw", scan_raw),
            ("raw_layout", scan_layout),
            ("ortelius", scan_owned),
        ],
    },
    Group {
        name: "range_scan_borrowed",
        threads: 1,
        rows: SCAN_ROWS,
        flavours: &[
            ("raw", scan_raw),
            ("raw_layout", scan_layout),
            ("ortelius", scan_borrowed),
        ],
    },
    Group {
        name: "point_get_8t",
        threads: 8,
        rows: 1,
        flavours: &[("raw", get_raw), ("ortelius", get_ortelius)],
    },
    Group {
        name: "put_8t",
        threads: 8,
        rows: 1,
        flavours: &[("raw", put_raw), ("ortelius", put_ortelius)],
    },
];

fn selected(filter: Option<&str>) -> impl Iterator<Item = &'static Group> + '_ {
    GROUPS
        .iter()
        .filter(move |g| filter.is_none_or(|f| g.name.contains(f)))
}

/// Criterion's measurement: one flavour for seconds, then the next, on fresh stores per group.
fn criterion_groups(c: &mut Criterion) {
    for g in GROUPS.iter() {
        let s = stores();
        let mut group = c.benchmark_group(g.name);
        group.throughput(Throughput::Elements(g.rows));
        if g.rows > 1 {
            group.sample_size(20);
        }
        if g.threads > 1 {
            group.measurement_time(Duration::from_secs(4));
        }
        for &(name, op) in g.flavours {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| parallel(iters, g.threads, |_, i| op(&s, i)))
            });
        }
        group.finish();
    }
}

/// The interleaved measurement (`INTERLEAVED_ROUNDS=n`) of the selected groups, on one set of
/// stores.
fn interleaved(rounds: usize, filter: Option<&str>) {
    let s = &stores();
    for g in selected(filter) {
        let flavours: Vec<_> = g
            .flavours
            .iter()
            .map(|&(name, op)| (name, move |i| op(s, i)))
            .collect();
        common::compare(g.name, rounds, g.threads, &flavours);
    }
}

criterion_group!(benches, criterion_groups);

fn main() {
    common::main(interleaved, benches);
}
