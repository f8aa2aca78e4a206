//! Sustained load on the RocksDB backend: 8 threads run transfer transactions (read two of
//! 10 000 accounts, write both) for 60 s while a sweeper removes the versions they supersede.
//! Prints transactions per second for every 10 s window and overall, the versions swept and the
//! live data size at the end, so a slowdown as versions pile up (or as sweep competes) shows.
//! Readers time out after 5 s (default: an hour), so sweep may remove versions older than that.
//!
//! `cargo bench --workspace --bench sustained`; `ORTELIUS_BENCH_SECS` sets the
//! duration (default 60).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::{Cell, KeyValueService, RangeRequest, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{
    BackupLock, SweepConfig, Sweeper, SystemWallClock, TableMetadata, TransactionConfig,
    TransactionManager,
};

const ACCOUNTS: u64 = 10_000;
const THREADS: u64 = 8;
const WINDOW: Duration = Duration::from_secs(10);

fn account(i: u64) -> Cell {
    Cell::new(i.to_be_bytes(), "balance").unwrap()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let secs: u64 = std::env::var("ORTELIUS_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let rocks = Arc::new(RocksDbKvs::open(dir.path(), &RocksDbConfig::default()).unwrap());
    let kvs: Arc<dyn KeyValueService> = rocks.clone();
    let config = TransactionConfig {
        read_timeout: Duration::from_secs(5),
        punch_interval: Duration::from_secs(1),
        ..TransactionConfig::default()
    };
    let m = TransactionManager::embedded(kvs.clone(), config).unwrap();
    let t = TableRef::new("bench", "accounts").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    for chunk in (0..ACCOUNTS).collect::<Vec<_>>().chunks(1000) {
        m.run(|txn| {
            for &i in chunk {
                txn.put(&t, &account(i), 1000u64.to_be_bytes().to_vec())?;
            }
            Ok(())
        })
        .unwrap();
    }
    let lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(m.clone(), lock, SweepConfig::default()).unwrap();

    let stop = AtomicBool::new(false);
    let committed = AtomicU64::new(0);
    let swept = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|scope| {
        for thread in 0..THREADS {
            let (m, t, stop, committed) = (&m, &t, &stop, &committed);
            scope.spawn(move || {
                let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ (thread + 1);
                while !stop.load(Ordering::Relaxed) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let from = account(state % ACCOUNTS);
                    let to = account((state >> 32) % ACCOUNTS);
                    if from == to {
                        continue;
                    }
                    m.run(|txn| {
                        let balance = |c: &Cell| -> ortelius_txn::TxnResult<u64> {
                            let v = txn.get_one(t, c)?.unwrap_or_default();
                            Ok(u64::from_be_bytes(v.try_into().unwrap_or([0; 8])))
                        };
                        let (a, b) = (balance(&from)?, balance(&to)?);
                        if a > 0 {
                            txn.put(t, &from, (a - 1).to_be_bytes().to_vec())?;
                            txn.put(t, &to, (b + 1).to_be_bytes().to_vec())?;
                        }
                        Ok(())
                    })
                    .unwrap();
                    committed.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let (sweeper, stop, swept) = (&sweeper, &stop, &swept);
        scope.spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for report in sweeper.sweep_all(false).unwrap() {
                    swept.fetch_add(report.versions_deleted, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let mut last = 0;
        let mut window_start = Instant::now();
        while started.elapsed() < Duration::from_secs(secs) {
            std::thread::sleep(WINDOW.min(Duration::from_secs(secs)));
            let now = committed.load(Ordering::Relaxed);
            println!(
                "sustained: {:>3.0} s  {:>8.0} transactions/s in the last window, {} versions swept so far",
                started.elapsed().as_secs_f64(),
                (now - last) as f64 / window_start.elapsed().as_secs_f64(),
                swept.load(Ordering::Relaxed)
            );
            last = now;
            window_start = Instant::now();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed().as_secs_f64();
    let money: u64 = m
        .run_read_only(|txn| {
            let mut sum = 0;
            for row in txn.get_range(&t, &RangeRequest::all())? {
                for v in row?.columns.values() {
                    sum += u64::from_be_bytes(v.as_slice().try_into().unwrap());
                }
            }
            Ok(sum)
        })
        .unwrap();
    assert_eq!(
        money,
        ACCOUNTS * 1000,
        "transfers created or destroyed money"
    );
    let total = committed.load(Ordering::Relaxed);
    println!(
        "sustained: {THREADS} threads, {total} transfer transactions in {elapsed:.0} s = {:.0}/s with sweep running; {} versions swept; live data {:.1} MB",
        total as f64 / elapsed,
        swept.load(Ordering::Relaxed),
        rocks.live_data_size().unwrap() as f64 / 1e6
    );
}
