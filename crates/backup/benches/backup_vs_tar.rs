//! `ortelius backup` / `restore` against the seed's `tar -czf` / `tar -xzf` of the stopped store
//! and against `cp -r` (the disk's limit), on the same ≥ 1 GiB store in one run. Prints the
//! throughput ratios (baseline time / our time) and the peak Rust heap of backup and restore
//! (counting allocator; RocksDB's C++ allocations are not included).
//!
//! Then the same across filesystems: the backups, archives and copies go to
//! `ORTELIUS_BENCH_OTHER_FS` (default `/dev/shm`, a tmpfs) and are restored from there onto the
//! store's filesystem — the case that survives losing the store's disk.
//!
//! `cargo bench --workspace --bench backup_vs_tar` (needs ~4 GiB of free disk and ~3 GiB
//! on the other filesystem).
#![allow(clippy::unwrap_used, clippy::expect_used)]
// The counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code)]

use ortelius_kvs::testing::CountingAllocator;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use ortelius_backends::StoreConfig;
use ortelius_backup::{backup, restore, DirectOwner};
use ortelius_kvs::{Cell, TableRef};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

const TARGET_BYTES: u64 = 1 << 30;
const VALUE_LEN: usize = 4096;

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

fn sh(cmd: &mut Command) {
    let status = cmd.status().expect("command runs");
    assert!(status.success(), "{cmd:?} failed");
}

/// `tar -czf archive -C dir .`
fn tar_czf(archive: impl AsRef<Path>, dir: impl AsRef<Path>) {
    sh(Command::new("tar")
        .arg("-czf")
        .arg(archive.as_ref())
        .arg("-C")
        .arg(dir.as_ref())
        .arg("."))
}

/// `tar -xzf archive -C dir`
fn tar_xzf(archive: impl AsRef<Path>, dir: impl AsRef<Path>) {
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(archive.as_ref())
        .arg("-C")
        .arg(dir.as_ref()))
}

/// `cp -r from to`
fn cp_r(from: impl AsRef<Path>, to: impl AsRef<Path>) {
    sh(Command::new("cp")
        .arg("-r")
        .arg(from.as_ref())
        .arg(to.as_ref()))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let store = root.path().join("store");
    {
        let config = StoreConfig::Rocksdb {
            data_dir: store.clone(),
        };
        let backend = ortelius_backends::open(&config).unwrap();
        let kvs = backend.kvs.clone();
        let m = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
        let t = TableRef::new("bench", "blobs").unwrap();
        m.create_table(&t, TableMetadata::default()).unwrap();
        // Incompressible values, so neither gzip nor LZ4 shrinks the data.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut written = 0u64;
        let mut i = 0u64;
        while written < TARGET_BYTES + TARGET_BYTES / 10 {
            let batch: Vec<_> = (0..256)
                .map(|_| {
                    i += 1;
                    let value = ortelius_kvs::testing::noise(&mut state, VALUE_LEN / 8);
                    (Cell::new(i.to_be_bytes(), "v").unwrap(), value)
                })
                .collect();
            kvs.put(&t, &batch, 1).unwrap();
            written += (256 * VALUE_LEN) as u64;
        }
        let source = DirectOwner::new(m, backend.snapshots.clone(), config.describe()).unwrap();
        // Our backup runs live (the store stays open); the baselines need it stopped.
        let ours_dir = root.path().join("ortelius-backup");
        let mut backup_heap = 0;
        let t_backup = timed(|| {
            backup_heap =
                CountingAllocator::peak_during(|| drop(backup(&source, &ours_dir).unwrap()))
        });
        let other_fs =
            std::env::var("ORTELIUS_BENCH_OTHER_FS").unwrap_or_else(|_| "/dev/shm".into());
        let other = tempfile::tempdir_in(&other_fs).unwrap();
        let t_backup_other =
            timed(|| drop(backup(&source, &other.path().join("ortelius-backup")).unwrap()));
        drop(source);
        drop(kvs);
        drop(backend);
        let store_bytes = dir_bytes(&store);
        let t_tar = timed(|| tar_czf(root.path().join("store.tgz"), &store));
        let t_cp = timed(|| cp_r(&store, root.path().join("store-copy")));
        let mut restore_heap = 0;
        let t_restore = timed(|| {
            restore_heap = CountingAllocator::peak_during(|| {
                let target = ortelius_backends::restore_target(&StoreConfig::Rocksdb {
                    data_dir: root.path().join("restored"),
                })
                .unwrap();
                drop(restore(&ours_dir, &*target).unwrap())
            })
        });
        let untar = root.path().join("untarred");
        std::fs::create_dir_all(&untar).unwrap();
        let t_untar = timed(|| tar_xzf(root.path().join("store.tgz"), &untar));
        let t_cp_back = timed(|| {
            cp_r(
                root.path().join("store-copy"),
                root.path().join("copied-back"),
            )
        });
        // Across filesystems: to the other filesystem and back.
        let t_tar_other = timed(|| tar_czf(other.path().join("store.tgz"), &store));
        let t_cp_other = timed(|| cp_r(&store, other.path().join("store-copy")));
        let t_restore_other = timed(|| {
            let target = ortelius_backends::restore_target(&StoreConfig::Rocksdb {
                data_dir: root.path().join("restored-from-other"),
            })
            .unwrap();
            drop(restore(&other.path().join("ortelius-backup"), &*target).unwrap())
        });
        let untar_other = root.path().join("untarred-from-other");
        std::fs::create_dir_all(&untar_other).unwrap();
        let t_untar_other = timed(|| tar_xzf(other.path().join("store.tgz"), &untar_other));
        let t_cp_back_other = timed(|| {
            cp_r(
                other.path().join("store-copy"),
                root.path().join("copied-back-from-other"),
            )
        });
        let gib = store_bytes as f64 / (1u64 << 30) as f64;
        println!("backup bench: store {gib:.2} GiB on disk");
        println!(
            "backup:  ortelius {:.2}s | tar -czf {:.2}s (ratio {:.1}x, target >= 3x) | cp -r {:.2}s (ratio {:.2}x, target >= 0.8x)",
            t_backup.as_secs_f64(), t_tar.as_secs_f64(), t_tar.as_secs_f64() / t_backup.as_secs_f64(),
            t_cp.as_secs_f64(), t_cp.as_secs_f64() / t_backup.as_secs_f64()
        );
        println!(
            "restore: ortelius {:.2}s | tar -xzf {:.2}s (ratio {:.1}x, target >= 3x) | cp -r {:.2}s (ratio {:.2}x, target >= 0.8x)",
            t_restore.as_secs_f64(), t_untar.as_secs_f64(), t_untar.as_secs_f64() / t_restore.as_secs_f64(),
            t_cp_back.as_secs_f64(), t_cp_back.as_secs_f64() / t_restore.as_secs_f64()
        );
        let line = |what: &str, ours: Duration, tar: Duration, cp: Duration| {
            println!(
                "{what}: ortelius {:.2}s | tar {:.2}s (ratio {:.1}x, target >= 5x) | cp -r {:.2}s (ratio {:.2}x, target >= 0.9x)",
                ours.as_secs_f64(), tar.as_secs_f64(), tar.as_secs_f64() / ours.as_secs_f64(),
                cp.as_secs_f64(), cp.as_secs_f64() / ours.as_secs_f64()
            )
        };
        line(
            &format!("backup to {other_fs}"),
            t_backup_other,
            t_tar_other,
            t_cp_other,
        );
        line(
            &format!("restore from {other_fs}"),
            t_restore_other,
            t_untar_other,
            t_cp_back_other,
        );
        println!(
            "memory:  peak Rust heap during backup {:.1} MiB, during restore {:.1} MiB (target < 256 MiB)",
            backup_heap as f64 / (1 << 20) as f64,
            restore_heap as f64 / (1 << 20) as f64
        );
    }
}
