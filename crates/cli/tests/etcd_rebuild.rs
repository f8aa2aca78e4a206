//! The etcd runbook's physical path: a live one-shot backup of a three-member cluster while
//! the bank workload writes, total loss of every member, a new cluster built from the backup's
//! snapshot with `etcdctl snapshot restore` and a new cluster token, then the Ortelius steps
//! (clean-transactions B, fast-forward F, release the lock) and the checks. Then the one-shot
//! `restore` with a `rebuild` block builds another new cluster's data directories itself,
//! its steps already done, and that cluster starts restored.
#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use ortelius_backends::StoreConfig;
use ortelius_test_servers::etcd::{EtcdCluster, EtcdOptions};

/// The store block of a restore that rebuilds `cluster`'s members (all written here).
fn rebuild_yaml(cluster: &EtcdCluster, prefix: &str) -> String {
    let members: Vec<String> = cluster
        .members()
        .iter()
        .map(|(name, peer, dir)| {
            format!(
                "{{name: {name}, peerUrl: '{peer}', dataDir: '{}'}}",
                path(dir)
            )
        })
        .collect();
    format!(
        "{{type: etcd, endpoints: [{}], prefix: {prefix}, rebuild: {{members: [{}]}}}}",
        cluster.endpoints().join(", "),
        members.join(", ")
    )
}

fn failed(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure: {out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
    drop(rebuilt);

    // The one-shot restore builds the new members' directories itself.
    let before_start = |cluster: &EtcdCluster| {
        let dirs: Vec<_> = cluster.members().into_iter().map(|m| m.2).collect();
        // A prefix other than the backup's: refused, nothing written.
        let wrong = write_config(
            dir.path(),
            "wrong.yml",
            &rebuild_yaml(cluster, "/other"),
            None,
        );
        let err = failed(&ortelius(&wrong, &["restore", "--dir", path(&backup)]));
        assert!(err.contains("set prefix: /bank"), "{err}");
        assert!(dirs.iter().all(|d| !d.exists()), "nothing written");
        // A member directory that holds something: refused without --force, left as it was.
        let config = write_config(
            dir.path(),
            "rebuild.yml",
            &rebuild_yaml(cluster, "/bank"),
            None,
        );
        std::fs::create_dir_all(&dirs[1]).unwrap();
        std::fs::write(dirs[1].join("old"), b"old").unwrap();
        let err = failed(&ortelius(&config, &["restore", "--dir", path(&backup)]));
        assert!(err.contains("--force"), "{err}");
        assert!(dirs[1].join("old").exists() && !dirs[0].exists());
        let done = ok(&ortelius(
            &config,
            &["restore", "--dir", path(&backup), "--force"],
        ));
        assert!(done.contains("released the backup lock"), "{done}");
        assert!(!dirs[1].join("old").exists(), "replaced with --force");
        for d in &dirs {
            assert!(d.join("member").join("snap").join("db").exists(), "{d:?}");
        }
    };
    let one_shot = EtcdCluster::start_with(&EtcdOptions {
        members: 3,
        before_start: Some(&before_start),
        ..EtcdOptions::default()
    });
    let restored = config(dir.path(), "one-shot.yml", &one_shot, None);
    let status = ok(&ortelius(&restored, &["backup-lock", "--status"]));
    assert!(!status.starts_with("held by"), "released: {status}");
    assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
    check_restored(&store_config(&one_shot), &acked_before_b, b, f);
}
