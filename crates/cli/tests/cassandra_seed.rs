//! The seed runbook's own case on a real three-node Cassandra cluster (RF 3, QUORUM,
//! ByteOrderedPartitioner) while the bank workload writes: one node killed and restarted
//! mid-workload; then the runbook command for command — fetch B, acquire the lock, snapshot
//! node 1, let the workload write, snapshot node 2, write, snapshot node 3, fetch F, release —
//! and a one-shot backup; total loss of the cluster; a new cluster; the snapshots loaded node by
//! node with `_transactions` repaired on every node; clean-transactions B, fast-forward F,
//! release; the bank invariant holds, every transfer acknowledged before B is present, nothing
//! committed at or after B is visible. Then the one-shot backup restores too.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use ortelius_backends::StoreConfig;
use ortelius_test_servers::CassandraCluster;

const KEYSPACE: &str = "bank_seed";

/// The keyValueService block for `cluster`.
fn store_yaml(cluster: &CassandraCluster) -> String {
    let nodes: Vec<String> = (1..=3)
        .map(|i| {
            let nodetool: Vec<String> = cluster
                .nodetool_command(i)
                .into_iter()
                .map(|a| format!("'{a}'"))
                .collect();
            format!(
                "{{nodetool: [{}], dataDir: '{}'}}",
                nodetool.join(", "),
                cluster.data_dir(i).display()
            )
        })
        .collect();
    format!(
        "{{type: cassandra, servers: [{}], keyspace: {KEYSPACE}, replicationFactor: 3, consistency: QUORUM, requestTimeout: 30s, nodes: [{}]}}",
        cluster.servers().join(", "),
        nodes.join(", ")
    )
}

fn config_file(
    dir: &Path,
    name: &str,
    cluster: &CassandraCluster,
    management: Option<&str>,
) -> std::path::PathBuf {
    write_config(dir, name, &store_yaml(cluster), management)
}

fn store_config(cluster: &CassandraCluster) -> StoreConfig {
    yaml_serde::from_str(&store_yaml(cluster)).unwrap()
}

/// Bytes of the bank's transfers table in one node's snapshot.
fn transfers_bytes(snapshot: &Path, node: usize) -> u64 {
    let dir = snapshot.join(format!("node{node}")).join("bank__transfers");
    std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("-Data.db"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn the_seed_runbook_on_three_nodes_restores_a_consistent_state_after_total_loss() {
    let _limit = ortelius_test_servers::time_limit(
        Duration::from_secs(1200),
        "the seed runbook on Cassandra",
    );
    let dir = tempfile::tempdir().unwrap();
    let backup = dir.path().join("backup");
    let (b_file, f_file, snapshot) = (
        backup.join("backup.timestamp"),
        backup.join("fast-forward.timestamp"),
        backup.join("store"),
    );
    let oneshot = dir.path().join("oneshot");
    let acks = dir.path().join("acks");

    let old = CassandraCluster::start(3);
    // A mistyped keyspace is refused, not created, by a command that does not create stores.
    let mistyped = store_yaml(&old).replace(KEYSPACE, "mistyped_keyspace");
    let mistyped = write_config(dir.path(), "mistyped.yml", &mistyped, None);
    let refused = ortelius(&mistyped, &["backup", "--dir", path(&oneshot)]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("there is no store at")
            && stderr.contains("mistyped_keyspace"),
        "{stderr}"
    );
    assert!(!oneshot.exists(), "no backup directory was written");
    let address = free_address();
    let live = config_file(dir.path(), "live.yml", &old, Some(&address));
    let workload = start_bank_workload(&live, &address, &acks);

    // One node killed mid-workload: at QUORUM the other two carry on, and nothing is lost.
    // Requests already sent through the dead node, and reads the coordinators route to it
    // until gossip marks it down, wait out their timeouts first.
    old.kill(3);
    let (during, killed) = (acked(&acks).len(), std::time::Instant::now());
    while acked(&acks).len() <= during + 20 {
        assert!(
            killed.elapsed() < Duration::from_secs(90),
            "the workload did not continue with one node down: {} transfers acknowledged in 90 s",
            acked(&acks).len() - during
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "20 transfers acknowledged {:?} after a node was killed",
        killed.elapsed()
    );
    old.start_node(3);

    // The seed runbook, command for command (its order: B, then the lock).
    let acked_before_b = acked(&acks);
    let b = timestamp(&ortelius(
        &live,
        &["timestamp", "fetch", "--file", path(&b_file)],
    ));
    ok(&ortelius(
        &live,
        &["backup-lock", "--acquire", "--reason", "seed runbook"],
    ));
    for node in ["1", "2", "3"] {
        ok(&ortelius(
            &live,
            &["kvs", "snapshot", "--dir", path(&snapshot), "--node", node],
        ));
        std::thread::sleep(Duration::from_secs(3)); // the workload keeps writing
    }
    let f = timestamp(&ortelius(
        &live,
        &["timestamp", "fetch", "--file", path(&f_file)],
    ));
    ok(&ortelius(&live, &["backup-lock", "--release"]));
    // The nodes' snapshots are of different moments: each later one holds writes the earlier
    // ones do not.
    let sizes: Vec<u64> = (1..=3).map(|n| transfers_bytes(&snapshot, n)).collect();
    eprintln!("bytes of bank.transfers in the node snapshots: {sizes:?}");
    assert!(sizes[0] < sizes[1] && sizes[1] < sizes[2], "{sizes:?}");

    // And a one-shot backup of the same live cluster.
    let acked_before_oneshot = acked(&acks);
    ok(&ortelius(&live, &["backup", "--dir", path(&oneshot)]));
    let total_acked = acked(&acks).len();

    // Total loss.
    drop(workload);
    old.stop();
    drop(old);
    assert!(total_acked > acked_before_b.len());

    // A new, empty cluster; restore per the runbook.
    let new = CassandraCluster::start(3);
    let restored = config_file(dir.path(), "restored.yml", &new, None);
    let loaded = ok(&ortelius(
        &restored,
        &["kvs", "load", "--dir", path(&snapshot)],
    ));
    assert!(loaded.contains("clean-transactions"), "{loaded}");
    ok(&ortelius(
        &restored,
        &["timestamp", "clean-transactions", "--file", path(&b_file)],
    ));
    ok(&ortelius(
        &restored,
        &["timestamp", "fast-forward", "--file", path(&f_file)],
    ));
    assert!(ok(&ortelius(&restored, &["backup-lock", "--status"])).contains("seed runbook"));
    ok(&ortelius(&restored, &["backup-lock", "--release"]));
    assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
    check_restored(&store_config(&new), &acked_before_b, b, f);

    // The one-shot backup restores as well (replacing what is there).
    assert!(ok(&ortelius(
        &restored,
        &["backup", "verify", "--deep", "--dir", path(&oneshot)]
    ))
    .contains("intact"));
    ok(&ortelius(
        &restored,
        &["restore", "--dir", path(&oneshot), "--force"],
    ));
    assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
    let manifest = ortelius_backup::verify(&oneshot).unwrap();
    for file in &manifest.files {
        let from_node = file.path.starts_with("node");
        assert_eq!(
            file.node.is_some(),
            from_node,
            "{} names its node exactly when it came from one",
            file.path
        );
    }
    check_restored(
        &store_config(&new),
        &acked_before_oneshot,
        manifest.backup_ts,
        manifest.fast_forward_ts,
    );
}
