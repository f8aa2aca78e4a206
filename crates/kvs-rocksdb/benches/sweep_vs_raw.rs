//! Sweep throughput (versions removed per second) against raw RocksDB ranged deletes of the same
//! versions, in the same run, plus the space on disk before and after sweep + compaction.
//! Destructive one-shot work, so not criterion: 3 rounds on fresh data, medians printed.
//!
//! `cargo bench --workspace --bench sweep_vs_raw`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::{Cell, KeyValueService, TableRef, MAX_READ_TS};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{
    BackupLock, SweepConfig, Sweeper, SystemWallClock, TableMetadata, TransactionConfig,
    TransactionManager, TxnStatus,
};

const CELLS: u64 = 20_000;
const VERSIONS: i64 = 5;
const VALUE: [u8; 100] = [3; 100];

fn row(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

/// Raw layout for the baseline: row ‖ descending ts (a cell per row).
fn raw_key(i: u64, ts: i64) -> Vec<u8> {
    let mut k = row(i).to_vec();
    k.extend_from_slice(&(!(ts as u64)).to_be_bytes());
    k
}

/// Returns (ortelius seconds, versions deleted, bytes before, bytes after compaction).
fn ortelius_round() -> (Duration, u64, u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ortelius");
    let rocks = Arc::new(RocksDbKvs::open(&path, &RocksDbConfig::default()).unwrap());
    let kvs: Arc<dyn KeyValueService> = rocks.clone();
    let m = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
    m.timestamps().fast_forward(10 * VERSIONS * 1000).unwrap();
    let t = TableRef::new("bench", "swept").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    for v in 1..=VERSIONS {
        let ts = v * 1000;
        for chunk in (0..CELLS).collect::<Vec<_>>().chunks(5000) {
            let writes: Vec<_> = chunk
                .iter()
                .map(|&i| (Cell::new(row(i), "c").unwrap(), VALUE.to_vec()))
                .collect();
            kvs.put(&t, &writes, ts).unwrap();
        }
        m.transactions_table()
            .put_unless_exists(ts, TxnStatus::Committed(ts + 1))
            .unwrap();
    }
    rocks.compact();
    let before = rocks.live_data_size().unwrap();
    let lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(m.clone(), lock, SweepConfig::default()).unwrap();
    let started = Instant::now();
    let report = sweeper
        .sweep_table_at(&t, (VERSIONS + 1) * 1000, false)
        .unwrap();
    let elapsed = started.elapsed();
    assert!(report.complete);
    rocks.compact();
    let after = rocks.live_data_size().unwrap();
    let sample = kvs
        .get_all_timestamps(&t, &[Cell::new(row(7), "c").unwrap()], MAX_READ_TS)
        .unwrap();
    assert_eq!(
        sample.values().next().map(Vec::len),
        Some(2),
        "newest version and a sentinel remain"
    );
    (elapsed, report.versions_deleted, before, after)
}

/// The same logical deletes on raw RocksDB: one ranged delete per cell for its old versions.
fn raw_round() -> (Duration, u64) {
    let dir = tempfile::tempdir().unwrap();
    let opts = ortelius_kvs_rocksdb::rocksdb_options();
    let db = rocksdb::DB::open(&opts, dir.path()).unwrap();
    for v in 1..=VERSIONS {
        let mut batch = rocksdb::WriteBatch::default();
        for i in 0..CELLS {
            batch.put(raw_key(i, v * 1000), VALUE);
        }
        db.write(batch).unwrap();
    }
    db.compact_range(None::<&[u8]>, None::<&[u8]>);
    let started = Instant::now();
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..CELLS {
        // Keys sort newest first: delete everything after the newest version of the cell.
        let mut past_row = row(i).to_vec();
        past_row.extend_from_slice(&[0xFF; 9]);
        batch.delete_range(raw_key(i, VERSIONS * 1000 - 1), past_row);
        if batch.len() >= 1000 {
            db.write(std::mem::take(&mut batch)).unwrap();
        }
    }
    db.write(batch).unwrap();
    (started.elapsed(), CELLS * (VERSIONS as u64 - 1))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // nothing for `cargo test --benches` to enumerate
    }
    let mut ours = Vec::new();
    let mut raw = Vec::new();
    let mut space = (0, 0);
    for _ in 0..3 {
        let (elapsed, deleted, before, after) = ortelius_round();
        ours.push(deleted as f64 / elapsed.as_secs_f64());
        space = (before, after);
        let (elapsed, deleted) = raw_round();
        raw.push(deleted as f64 / elapsed.as_secs_f64());
    }
    let (ours, raw) = (median(ours), median(raw));
    println!(
        "sweep: {CELLS} cells x {VERSIONS} versions, {} versions removed per round",
        CELLS * (VERSIONS as u64 - 1)
    );
    println!("sweep: ortelius {ours:.0} versions/s, raw ranged deletes {raw:.0} versions/s, ratio {:.2}x", ours / raw);
    println!(
        "sweep: live SST bytes before sweep {:.1} MB, after sweep + compaction {:.1} MB ({:.0}% of before)",
        space.0 as f64 / 1e6,
        space.1 as f64 / 1e6,
        100.0 * space.1 as f64 / space.0.max(1) as f64
    );
}
