//! Ortelius on etcd against the plain etcd client doing the same logical work on the same
//! three-member cluster (started by this benchmark), in one run. Each group has `raw` and
//! `ortelius`; `scripts/bench-ratios.py` prints raw-time / ortelius-time. Targets:
//! single-cell write transactions ≥ 0.4× a raw put (1 and 8 threads), read-only point reads
//! ≥ 0.7× a raw linearizable get.
//!
//! Then, once, the backup figures: `ortelius`'s raw snapshot against `etcdctl snapshot save`
//! of the same cluster; the restore that rebuilds a three-member cluster's data directories
//! (with its steps: the private member, clean-transactions, the directories) against
//! `etcdctl snapshot restore` of the same three directories, one after another as the
//! runbook shows and all at once; and the load into a running cluster.
//!
//! `cargo bench --workspace --bench etcd_vs_raw`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use ortelius_kvs::snapshot::{finish_restore, RestoreTarget, SnapshotSource};
use ortelius_kvs::testing::parallel;
use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_etcd::rebuild::EtcdRebuild;
use ortelius_kvs_etcd::snapshot::{EtcdSnapshots, EtcdTarget};
use ortelius_kvs_etcd::{EtcdConfig, EtcdKvs, RebuildConfig, RebuildMember};
use ortelius_test_servers::EtcdCluster;
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager, TransactionsTable};

const KEYS: u64 = 5_000;
const VALUE: [u8; 100] = [7; 100];

fn key(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

fn raw_key(i: u64) -> Vec<u8> {
    let mut k = b"/raw/".to_vec();
    k.extend_from_slice(&key(i));
    k
}

struct Setup {
    cluster: EtcdCluster,
    runtime: tokio::runtime::Runtime,
    raw: etcd_client::Client,
    manager: TransactionManager,
    kvs: Arc<EtcdKvs>,
    table: TableRef,
}

fn setup() -> Setup {
    let cluster = EtcdCluster::start(3, &[]);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut raw = runtime
        .block_on(etcd_client::Client::connect(cluster.endpoints(), None))
        .unwrap();
    let kvs = Arc::new(EtcdKvs::open(&EtcdConfig::new(cluster.endpoints(), "/bench")).unwrap());
    let manager = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    for chunk in (0..KEYS).collect::<Vec<_>>().chunks(50) {
        runtime.block_on(async {
            for &i in chunk {
                raw.put(raw_key(i), VALUE.to_vec(), None).await.unwrap();
            }
        });
        manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(&table, &Cell::new(key(i), "v").unwrap(), VALUE.to_vec())?;
                }
                Ok(())
            })
            .unwrap();
    }
    Setup {
        cluster,
        runtime,
        raw,
        manager,
        kvs,
        table,
    }
}

static FRESH: AtomicU64 = AtomicU64::new(0);

fn raw_write(s: &Setup, _: usize, _: u64) {
    let k = raw_key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed));
    let mut c = s.raw.clone();
    s.runtime.block_on(c.put(k, VALUE.to_vec(), None)).unwrap();
}

fn txn_write(s: &Setup, _: usize, _: u64) {
    let cell = Cell::new(
        key(KEYS + 1_000_000 + FRESH.fetch_add(1, Ordering::Relaxed)),
        "v",
    )
    .unwrap();
    s.manager
        .run(|txn| txn.put(&s.table, &cell, VALUE.to_vec()))
        .unwrap();
}

fn raw_read(s: &Setup, _: usize, i: u64) {
    let mut c = s.raw.clone();
    let got = s
        .runtime
        .block_on(c.get(raw_key((i * 7919) % KEYS), None))
        .unwrap();
    assert_eq!(got.kvs().len(), 1);
    black_box(got);
}

fn txn_read(s: &Setup, _: usize, i: u64) {
    let cell = Cell::new(key((i * 7919) % KEYS), "v").unwrap();
    black_box(
        s.manager
            .run_read_only(|txn| txn.get_one(&s.table, &cell))
            .unwrap()
            .unwrap(),
    );
}

fn group(
    c: &mut Criterion,
    s: &Setup,
    name: &str,
    threads: u64,
    raw: fn(&Setup, usize, u64),
    ours: fn(&Setup, usize, u64),
) {
    let mut g = c.benchmark_group(format!("etcd_{name}_{threads}t"));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    g.warm_up_time(Duration::from_secs(1));
    g.bench_function("raw", |b| {
        b.iter_custom(|n| parallel(n, threads, |t, i| raw(s, t, i)))
    });
    g.bench_function("ortelius", |b| {
        b.iter_custom(|n| parallel(n, threads, |t, i| ours(s, t, i)))
    });
    g.finish();
}

fn timed(f: impl FnOnce()) -> Duration {
    let started = Instant::now();
    f();
    started.elapsed()
}

/// Our snapshot and load against `etcdctl snapshot save` / `snapshot restore`, once, on about
/// 100 MB of data.
fn backup(s: &Setup) {
    let big = TableRef::new("bench", "big").unwrap();
    s.kvs.create_table(&big, b"").unwrap();
    let value = vec![5u8; 1000];
    for chunk in (0..100_000u64).collect::<Vec<_>>().chunks(100) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|i| (Cell::new(key(*i), "v").unwrap(), value.clone()))
            .collect();
        s.kvs.put(&big, &writes, 1).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let snapshots = EtcdSnapshots::new(s.kvs.clone());
    let ours_backup = timed(|| {
        snapshots
            .take(&dir.path().join("ours"), &|_, _| {})
            .unwrap();
    });
    let file = dir.path().join("etcdctl.snapshot");
    let theirs_backup = timed(|| {
        let out = s
            .cluster
            .etcdctl(&[0], &["snapshot", "save", file.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    });
    let target = EtcdTarget::new(EtcdConfig::new(s.cluster.endpoints(), "/restored")).unwrap();
    let ours_load = timed(|| {
        target
            .load(&dir.path().join("ours"), "bench", &|_, _| {})
            .unwrap();
    });
    let members: Vec<RebuildMember> = (1..=3)
        .map(|i| RebuildMember {
            name: format!("m{i}"),
            peer_url: format!("http://127.0.0.1:{}", 3380 + i),
            data_dir: Some(dir.path().join(format!("ours-m{i}"))),
        })
        .collect();
    let rebuild = EtcdRebuild::new(EtcdConfig {
        rebuild: Some(RebuildConfig {
            members: members.clone(),
            cluster_token: None,
        }),
        ..EtcdConfig::new(s.cluster.endpoints(), "/bench")
    })
    .unwrap();
    let ours_restore = timed(|| {
        rebuild
            .load(&dir.path().join("ours"), "bench", &|_, _| {})
            .unwrap();
        let kvs = rebuild.open_restoring().unwrap();
        TransactionsTable::new(kvs.clone(), 1024)
            .unwrap()
            .clean_from(i64::MAX - 1, |_| {})
            .unwrap();
        finish_restore(&*kvs).unwrap();
        rebuild.complete().unwrap();
    });
    let initial_cluster = RebuildConfig {
        members: members.clone(),
        cluster_token: None,
    }
    .initial_cluster();
    let etcdctl_restore = |i: usize, tag: &str| {
        let m = &members[i];
        let mut c = Command::new("etcdctl");
        c.env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(&file)
            .args(["--name", &m.name, "--initial-cluster", &initial_cluster])
            .args(["--initial-advertise-peer-urls", &m.peer_url])
            .args(["--initial-cluster-token", "bench"])
            .arg("--data-dir")
            .arg(dir.path().join(format!("{tag}-m{i}")))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let theirs_sequential = timed(|| {
        for i in 0..3 {
            assert!(etcdctl_restore(i, "seq").status().unwrap().success());
        }
    });
    let theirs_parallel = timed(|| {
        let children: Vec<_> = (0..3)
            .map(|i| etcdctl_restore(i, "par").spawn().unwrap())
            .collect();
        for mut child in children {
            assert!(child.wait().unwrap().success());
        }
    });
    let size = std::fs::metadata(&file).unwrap().len();
    println!(
        "backup ({:.0} MB):  ortelius snapshot {:.2}s | etcdctl snapshot save {:.2}s (ratio {:.2}x, target >= 0.8x)",
        size as f64 / 1e6,
        ours_backup.as_secs_f64(),
        theirs_backup.as_secs_f64(),
        theirs_backup.as_secs_f64() / ours_backup.as_secs_f64()
    );
    println!(
        "restore, 3 new members' directories: ortelius {:.2}s | etcdctl snapshot restore x3 one after another {:.2}s (ratio {:.2}x, target >= 0.8x), all at once {:.2}s (ratio {:.2}x)",
        ours_restore.as_secs_f64(),
        theirs_sequential.as_secs_f64(),
        theirs_sequential.as_secs_f64() / ours_restore.as_secs_f64(),
        theirs_parallel.as_secs_f64(),
        theirs_parallel.as_secs_f64() / ours_restore.as_secs_f64()
    );
    println!(
        "load into a running 3-member cluster (kvs load / restore without rebuild): {:.2}s",
        ours_load.as_secs_f64()
    );
}

fn throughput(c: &mut Criterion) {
    let s = setup();
    for threads in [1, 8] {
        group(c, &s, "write_txn", threads, raw_write, txn_write);
        group(c, &s, "read_txn", threads, raw_read, txn_read);
    }
    backup(&s);
}

criterion_group!(benches, throughput);
criterion_main!(benches);
