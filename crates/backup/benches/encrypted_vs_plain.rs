//! Encrypted against plain backups of one live RocksDB store, in one run: the ratio of their
//! throughputs (plain time / encrypted time; target ≥ 0.7×), uncompressed and compressed, with
//! the backup on the store's filesystem (plain backups then hard-link the SST files) and on
//! another one (they copy them). Rounds alternate the kinds; medians are printed.
//!
//! `cargo bench --workspace --bench encrypted_vs_plain`; `ORTELIUS_BENCH_MIB` sets the
//! store's size (default 512), `ORTELIUS_BENCH_OTHER_FS` the other filesystem's directory
//! (default `/dev/shm`, a tmpfs: no disk, so the ratio there is the CPU cost alone).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use ortelius_backends::StoreConfig;
use ortelius_backup::{backup_cancellable, BackupKey, BackupOptions, DirectOwner};
use ortelius_kvs::{Cell, TableRef};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

const ROUNDS: usize = 5;

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mib: u64 = std::env::var("ORTELIUS_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let other_fs = std::env::var("ORTELIUS_BENCH_OTHER_FS").unwrap_or_else(|_| "/dev/shm".into());
    let root = tempfile::tempdir().unwrap();
    let config = StoreConfig::Rocksdb {
        data_dir: root.path().join("store"),
    };
    let backend = ortelius_backends::open(&config).unwrap();
    let m =
        TransactionManager::embedded(backend.kvs.clone(), TransactionConfig::default()).unwrap();
    let t = TableRef::new("bench", "blobs").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    // Half incompressible, half repetitive: compression has something to do.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut i = 0u64;
    while i * 4096 < mib << 20 {
        let batch: Vec<_> = (0..256)
            .map(|_| {
                i += 1;
                let mut value = ortelius_kvs::testing::noise(&mut state, 256);
                value.extend(std::iter::repeat_n((i % 251) as u8, 2048));
                (Cell::new(i.to_be_bytes(), "v").unwrap(), value)
            })
            .collect();
        backend.kvs.put(&t, &batch, 1).unwrap();
    }
    let owner = DirectOwner::new(m, backend.snapshots.clone(), config.describe()).unwrap();
    let key_file = root.path().join("key");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let key = BackupKey::from_file(&key_file).unwrap();
    let kinds = [
        ("plain", false, None),
        ("encrypted", false, Some(key.clone())),
        ("compressed", true, None),
        ("compressed+encrypted", true, Some(key)),
    ];
    let other = tempfile::tempdir_in(&other_fs).unwrap();
    for (place, dir) in [
        ("the store's filesystem", root.path()),
        (other_fs.as_str(), other.path()),
    ] {
        let mut times = vec![Vec::new(); kinds.len()];
        let mut bytes = 0;
        for round in 0..ROUNDS {
            for (k, (name, compress, encrypt)) in kinds.iter().enumerate() {
                let target = dir.join(format!("{name}-{round}"));
                let started = Instant::now();
                let report = backup_cancellable(
                    &owner,
                    &target,
                    BackupOptions {
                        compress: *compress,
                        encrypt: encrypt.clone(),
                        ..BackupOptions::default()
                    },
                    &AtomicBool::new(false),
                    &ortelius_backup::no_progress,
                )
                .unwrap();
                times[k].push(started.elapsed());
                if k == 0 {
                    bytes = report.manifest.total_size();
                }
                remove(&target);
            }
        }
        let medians: Vec<Duration> = times.into_iter().map(median).collect();
        let rate = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
        println!(
            "backups of {:.0} MB onto {place} (medians of {ROUNDS}): plain {:.0} MB/s, encrypted {:.0} MB/s ({:.2}x), compressed {:.0} MB/s, compressed+encrypted {:.0} MB/s ({:.2}x); target >= 0.7x",
            bytes as f64 / 1e6,
            rate(medians[0]),
            rate(medians[1]),
            medians[0].as_secs_f64() / medians[1].as_secs_f64(),
            rate(medians[2]),
            rate(medians[3]),
            medians[2].as_secs_f64() / medians[3].as_secs_f64(),
        );
    }
}

fn remove(dir: &Path) {
    std::fs::remove_dir_all(dir).unwrap();
}
