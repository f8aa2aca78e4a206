//! The etcd runbook's physical path: a live one-shot backup of a three-member cluster while
//! the bank workload writes, total loss of every member, a new cluster built from the backup's
//! snapshot with `etcdctl snapshot restore` and a new cluster token, then the Ortelius steps
//! (clean-transactions B, fast-forward F, release the lock) and the checks.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ortelius_backends::StoreConfig;
use ortelius_test_servers::etcd::{EtcdCluster, EtcdOptions};

fn store_yaml(etcd: &EtcdCluster) -> String {
    format!(
        "{{type: etcd, endpoints: [{}], prefix: /bank}}",
        etcd.endpoints().join(", ")
    )
}

fn config(
    dir: &std::path::Path,
    name: &str,
    etcd: &EtcdCluster,
    management: Option<&str>,
) -> std::path::PathBuf {
    write_config(dir, name, &store_yaml(etcd), management)
}

fn store_config(etcd: &EtcdCluster) -> StoreConfig {
    yaml_serde::from_str(&store_yaml(etcd)).unwrap()
}

#[test]
fn a_lost_cluster_is_rebuilt_from_the_snapshot_with_a_new_token() {
    let dir = tempfile::tempdir().unwrap();
    let original = EtcdCluster::start(3, &[]);
    let address = free_address();
    let live = config(dir.path(), "live.yml", &original, Some(&address));
    let acks = dir.path().join("acks");
    let workload = start_bank_workload(&live, &address, &acks);

    let acked_before_b = acked(&acks);
    let backup = dir.path().join("backup");
    ok(&ortelius(&live, &["backup", "--dir", path(&backup)]));
    std::thread::sleep(std::time::Duration::from_millis(500)); // the workload goes on
    let total_acked = acked(&acks).len();
    drop(workload);
    let old_token = original.token().to_owned();
    drop(original); // total loss: every member killed, every data directory deleted
    assert!(total_acked > acked_before_b.len());

    let manifest = ortelius_backup::verify(&backup).unwrap();
    assert_eq!(manifest.store_kind, "etcd");
    let snapshot = backup.join("store").join("etcd.snapshot");
    let rebuilt = EtcdCluster::start_with(&EtcdOptions {
        members: 3,
        from_snapshot: Some(&snapshot),
        ..EtcdOptions::default()
    });
    assert_ne!(rebuilt.token(), old_token, "a new cluster token");
    let restored = config(dir.path(), "restored.yml", &rebuilt, None);
    let (b, f) = (manifest.backup_ts, manifest.fast_forward_ts);
    ok(&ortelius(
        &restored,
        &[
            "timestamp",
            "clean-transactions",
            "--timestamp",
            &b.to_string(),
        ],
    ));
    ok(&ortelius(
        &restored,
        &["timestamp", "fast-forward", "--timestamp", &f.to_string()],
    ));
    assert!(
        ok(&ortelius(&restored, &["backup-lock", "--status"])).starts_with("held by"),
        "the lock was held when the snapshot was taken"
    );
    ok(&ortelius(&restored, &["backup-lock", "--release"]));
    assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
    check_restored(&store_config(&rebuilt), &acked_before_b, b, f);
}
