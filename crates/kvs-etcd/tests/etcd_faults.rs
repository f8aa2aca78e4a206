//! Losing members of a real three-member etcd cluster while the bank workload runs: a
//! follower and then the leader killed with SIGKILL and restarted, two of three members down
//! (no quorum), a member cut off by a real network partition (its own network namespace, link
//! down) — and a long overwrite-and-sweep workload kept under the space quota by compaction
//! and defragmentation (and, without them, a write at the quota that fails naming the fix).
//! Each cluster is this test's own.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::{Cell, KeyValueService};
use ortelius_kvs_etcd::{EtcdConfig, EtcdKvs, MaintenanceConfig};
use ortelius_test_servers::etcd::{EtcdCluster, EtcdOptions};
use ortelius_test_servers::{time_limit, TimeLimit};
use ortelius_txn::suite::faults as bank;
use ortelius_txn::{
    BackupLock, RetryClass, SweepConfig, Sweeper, SystemWallClock, TableMetadata,
    TransactionManager,
};

/// One test at a time: each runs its own cluster and workload, and timings matter. Each has
/// five minutes once its turn comes.
fn serial() -> (std::sync::MutexGuard<'static, ()>, TimeLimit) {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let turn = ONE
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    (
        turn,
        time_limit(Duration::from_secs(300), "an etcd fault test"),
    )
}

fn config(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    EtcdConfig {
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(3),
        ..EtcdConfig::new(cluster.endpoints(), prefix)
    }
}

fn open_bank(c: &EtcdConfig) -> TransactionManager {
    let kvs: Arc<dyn KeyValueService> = Arc::new(EtcdKvs::open(c).unwrap());
    let m = TransactionManager::embedded(kvs, bank::config()).unwrap();
    bank::set_up(&m);
    m
}

fn other_than(cluster: &EtcdCluster, leader: usize) -> usize {
    (0..cluster.len()).find(|&i| i != leader).unwrap()
}

fn leader(cluster: &EtcdCluster) -> usize {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(l) = cluster.leader() {
            return l;
        }
        assert!(Instant::now() < deadline, "no etcd leader elected");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn killing_a_follower_then_the_leader_mid_workload_loses_no_acknowledged_commit() {
    let _serial = serial();
    let cluster = EtcdCluster::start(3, &[]);
    let m = open_bank(&config(&cluster, "/kills"));
    let mut acked_while_down = Vec::new();
    let outcomes = bank::workload_during(&m, "kills", 4, || {
        std::thread::sleep(Duration::from_secs(2));
        for victim in ["follower", "leader"] {
            let l = leader(&cluster);
            let i = if victim == "leader" {
                l
            } else {
                other_than(&cluster, l)
            };
            cluster.kill(i);
            // Two of three members remain: a quorum, so the workload continues.
            let during = bank::workload_for(&m, &format!("down-{victim}"), Duration::from_secs(5));
            acked_while_down.push((victim, during.acknowledged.len()));
            bank::check_after_faults(&m, &during);
            cluster.restart(i);
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    assert!(
        outcomes.acknowledged.len() > 20,
        "the workload made progress"
    );
    for (victim, n) in &acked_while_down {
        assert!(*n > 0, "transfers committed while the {victim} was down");
    }
    bank::check_after_faults(&m, &outcomes);
    let after = bank::workload_for(&m, "after", Duration::from_secs(1));
    assert!(!after.acknowledged.is_empty(), "the workload continues");
}

#[test]
fn without_a_quorum_commits_fail_retriably_and_nothing_wrong_is_read() {
    let _serial = serial();
    let cluster = EtcdCluster::start(3, &[]);
    let m = open_bank(&config(&cluster, "/quorum"));
    let before = bank::workload_for(&m, "before", Duration::from_secs(1));
    assert!(!before.acknowledged.is_empty());
    let l = leader(&cluster);
    let follower = other_than(&cluster, l);
    cluster.kill(l);
    cluster.kill(follower);
    let outage = bank::workload_for(&m, "outage", Duration::from_secs(6));
    assert!(
        outage.acknowledged.is_empty(),
        "nothing commits without a quorum: {:?}",
        outage.acknowledged
    );
    assert!(
        !outage.failed.is_empty() || !outage.unknown.is_empty(),
        "the workload saw errors"
    );
    assert!(
        outage.failed.iter().all(|c| *c == RetryClass::Retriable),
        "failures without a quorum are retriable (after the runner's retries) or of unknown outcome: {:?}",
        outage.failed
    );
    cluster.restart(l);
    cluster.restart(follower);
    leader(&cluster);
    bank::check_after_faults(&m, &before);
    bank::check_after_faults(&m, &outage);
    let after = bank::workload_for(&m, "after", Duration::from_secs(2));
    assert!(!after.acknowledged.is_empty(), "the workload continues");
}

#[test]
fn a_partitioned_member_heals_without_lost_commits() {
    let _serial = serial();
    let cluster = EtcdCluster::start_with(&EtcdOptions {
        members: 3,
        partitionable: true,
        ..EtcdOptions::default()
    });
    let m = open_bank(&config(&cluster, "/partition"));
    let mut acked_while_cut = Vec::new();
    let outcomes = bank::workload_during(&m, "partition", 4, || {
        std::thread::sleep(Duration::from_secs(1));
        for victim in ["leader", "follower"] {
            let l = leader(&cluster);
            let i = if victim == "leader" {
                l
            } else {
                other_than(&cluster, l)
            };
            cluster.partition(i);
            let during = bank::workload_for(&m, &format!("cut-{victim}"), Duration::from_secs(12));
            acked_while_cut.push((victim, during.acknowledged.len()));
            cluster.heal(i);
            cluster.wait_healthy(&[0, 1, 2], Duration::from_secs(60));
            bank::check_after_faults(&m, &during);
        }
    });
    for (victim, n) in &acked_while_cut {
        assert!(
            *n > 0,
            "the majority side committed while the {victim} was cut off"
        );
    }
    bank::check_after_faults(&m, &outcomes);
    let after = bank::workload_for(&m, "after", Duration::from_secs(1));
    assert!(!after.acknowledged.is_empty(), "the workload continues");
}

/// A store rewriting the same cell with large values and sweeping the old versions leaves
/// etcd history many times the quota; configured maintenance (compaction + defragmentation)
/// keeps the database under it: no write fails, no space alarm is left. The interval is far
/// longer than the test, so every pass is one a write asked for when it found the cluster
/// over quota (a writer faster than any interval): without those, the first such write fails.
#[test]
fn maintenance_keeps_an_overwrite_and_sweep_workload_under_the_quota() {
    let _serial = serial();
    const QUOTA: i64 = 16 << 20;
    const VALUE: usize = 128 << 10;
    const CELLS: usize = 1;
    const ROUNDS: u32 = 512;
    let cluster = EtcdCluster::start(3, &["--quota-backend-bytes", &QUOTA.to_string()]);
    let c = EtcdConfig {
        maintenance: Some(MaintenanceConfig {
            interval: Duration::from_secs(3600),
            keep_revisions: 100,
            defragment_above_bytes: QUOTA / 2,
        }),
        ..config(&cluster, "/space")
    };
    let kvs = Arc::new(EtcdKvs::open(&c).unwrap());
    let m = TransactionManager::embedded(kvs.clone(), ortelius_txn::TransactionConfig::default())
        .unwrap();
    let table = ortelius_kvs::TableRef::new("app", "blobs").unwrap();
    m.create_table(&table, TableMetadata::default()).unwrap();
    let lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock)).unwrap();
    let sweeper = Sweeper::new(m.clone(), lock, SweepConfig::default()).unwrap();
    let mut written: i64 = 0;
    for round in 0..ROUNDS {
        m.run(|txn| {
            for i in 0..CELLS {
                let mut v = vec![7u8; VALUE];
                v[0] = round as u8;
                txn.put(&table, &Cell::new(format!("r{i}"), "c").unwrap(), v)?;
            }
            Ok(())
        })
        .unwrap();
        written += (CELLS * VALUE) as i64;
        if round % 16 == 15 {
            // No reader is older than the immutable timestamp here (the read timeout, which
            // also bounds the sweep timestamp, is for applications with long readers).
            let report = sweeper
                .sweep_table_at(&table, m.immutable_timestamp().unwrap(), false)
                .unwrap();
            assert!(report.versions_deleted > 0, "{report:?}");
        }
    }
    assert!(
        written > 3 * QUOTA,
        "wrote {written} bytes, {}x the quota",
        written / QUOTA
    );
    // Let the last maintenance pass finish, then look.
    std::thread::sleep(Duration::from_secs(3));
    let maintenance = kvs.maintenance().unwrap();
    assert!(
        maintenance.over_quota_writes() > 0,
        "the workload reached the quota"
    );
    let report = maintenance.last().unwrap();
    assert!(report.is_ok(), "{report:?}");
    let old = cluster.etcdctl(&[0], &["get", "/space", "--prefix", "--rev=2", "--limit=1"]);
    assert!(
        String::from_utf8_lossy(&old.stderr).contains("compacted"),
        "early history was compacted away: {old:?}"
    );
    let alarms = cluster.etcdctl(&[0], &["alarm", "list"]);
    assert!(
        alarms.status.success() && alarms.stdout.is_empty(),
        "no space alarm: {}",
        String::from_utf8_lossy(&alarms.stdout)
    );
    for i in 0..cluster.len() {
        let size = db_size(&cluster, i);
        assert!(
            size < QUOTA,
            "member {i}'s database is {size} bytes, over the {QUOTA} quota"
        );
    }
    // Everything is still readable at its newest version.
    let newest = m
        .run_read_only(|t| t.get_one(&table, &Cell::new("r0", "c").unwrap()))
        .unwrap()
        .unwrap();
    assert_eq!(newest[0], (ROUNDS - 1) as u8);
}

/// Without maintenance, a write that finds the cluster over its quota fails with a message
/// naming the cause and the fix, and stores nothing: the cell still reads as its last
/// successful write.
#[test]
fn without_maintenance_a_write_over_the_quota_fails_naming_the_fix() {
    let _serial = serial();
    const QUOTA: i64 = 8 << 20;
    const VALUE: usize = 128 << 10;
    let cluster = EtcdCluster::start(1, &["--quota-backend-bytes", &QUOTA.to_string()]);
    let kvs = EtcdKvs::open(&config(&cluster, "/full")).unwrap();
    let table = ortelius_kvs::TableRef::new("app", "blobs").unwrap();
    kvs.create_table(&table, b"").unwrap();
    let cell = Cell::new("r", "c").unwrap();
    let mut last_stored = None;
    let limit = 2 * QUOTA / VALUE as i64;
    let (ts, error) = (1..=limit)
        .find_map(|ts| {
            let mut v = vec![7u8; VALUE];
            v[..8].copy_from_slice(&ts.to_be_bytes());
            match kvs.put(&table, &[(cell.clone(), v)], ts) {
                Ok(()) => {
                    last_stored = Some(ts);
                    None
                }
                Err(e) => Some((ts, e)),
            }
        })
        .unwrap_or_else(|| panic!("{limit} writes of {VALUE} bytes never reached the quota"));
    let message = error.to_string();
    assert!(
        matches!(error, ortelius_kvs::KvsError::Storage { .. })
            && message.contains("database space exceeded")
            && message.contains("--quota-backend-bytes")
            && message.contains("alarm disarm")
            && message.contains("`maintenance`"),
        "{error:?}"
    );
    let Some(last_stored) = last_stored else {
        panic!("the first write already found the cluster over its quota: {error}");
    };
    let read = kvs.get(&table, &[(cell.clone(), ts + 1)]).unwrap();
    assert_eq!(
        read[&cell].timestamp, last_stored,
        "the refused write stored nothing"
    );
}

fn db_size(cluster: &EtcdCluster, i: usize) -> i64 {
    let out = cluster.etcdctl(&[i], &["endpoint", "status", "--write-out=json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("\"dbSize\":").unwrap() + "\"dbSize\":".len();
    text[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}
