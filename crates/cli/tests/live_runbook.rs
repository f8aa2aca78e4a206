//! The runbook against a live owner: `ortelius serve` holds the store and serves the management
//! API; the runbook's live commands go through it, the offline-only ones refuse it, and the
//! checkpoint it produced restores offline through the CLI.
#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_management::ManagementClient;
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

struct Serving(Child);
impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn ortelius(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn config(dir: &Path, name: &str, data: &Path, management: Option<&str>) -> PathBuf {
    let file = dir.join(name);
    let management = management
        .map(|a| format!("  management: {{address: '{a}', token: t0ken}}\n"))
        .unwrap_or_default();
    std::fs::write(
        &file,
        format!(
            "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n{management}",
            data.display()
        ),
    )
    .unwrap();
    file
}

fn manager(data: &Path) -> (TransactionManager, TableRef) {
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(data, &RocksDbConfig::default()).unwrap());
    let m = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let t = TableRef::new("bank", "accounts").unwrap();
    m.create_table(&t, TableMetadata::default()).unwrap();
    (m, t)
}

#[test]
fn the_runbook_runs_live_through_serve_and_restores_offline() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("live");
    {
        let (m, t) = manager(&data);
        m.run(|txn| txn.put(&t, &Cell::new("alice", "balance").unwrap(), b"100".to_vec()))
            .unwrap();
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let live_config = config(dir.path(), "live.yml", &data, Some(&address));
    let _serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .arg("--config")
            .arg(&live_config)
            .arg("serve")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = ManagementClient::new(&address, Some("t0ken".into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.is_live() {
        assert!(Instant::now() < deadline, "ortelius serve did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    let backup = dir.path().join("backup");
    let b_file = backup.join("backup.timestamp");
    let f_file = backup.join("fast-forward.timestamp");
    let b: i64 = ok(&ortelius(
        &live_config,
        &["timestamp", "fetch", "--file", b_file.to_str().unwrap()],
    ))
    .trim()
    .parse()
    .unwrap();
    ok(&ortelius(
        &live_config,
        &["backup-lock", "--acquire", "--reason", "nightly"],
    ));
    assert!(ok(&ortelius(&live_config, &["backup-lock", "--status"])).contains("nightly"));
    let checkpoint = backup.join("store");
    ok(&ortelius(
        &live_config,
        &["kvs", "checkpoint", "--dir", checkpoint.to_str().unwrap()],
    ));
    let f: i64 = ok(&ortelius(
        &live_config,
        &["timestamp", "fetch", "--file", f_file.to_str().unwrap()],
    ))
    .trim()
    .parse()
    .unwrap();
    assert!(f > b);
    ok(&ortelius(&live_config, &["backup-lock", "--release"]));
    for refused in [
        ["timestamp", "clean-transactions", "--timestamp", "5"],
        ["timestamp", "fast-forward", "--timestamp", "5"],
    ] {
        let out = ortelius(&live_config, &refused);
        assert!(!out.status.success());
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("only safe offline"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        ok(&ortelius(&live_config, &["sweep", "--all", "--dry-run"])).contains("bank.accounts")
    );
    drop(_serving);

    // Restore from the checkpoint, offline, per the runbook.
    let restored = config(dir.path(), "restored.yml", &checkpoint, None);
    ok(&ortelius(
        &restored,
        &[
            "timestamp",
            "clean-transactions",
            "--file",
            b_file.to_str().unwrap(),
        ],
    ));
    ok(&ortelius(
        &restored,
        &[
            "timestamp",
            "fast-forward",
            "--file",
            f_file.to_str().unwrap(),
        ],
    ));
    assert!(
        ok(&ortelius(&restored, &["backup-lock", "--status"])).contains("nightly"),
        "the lock was held at checkpoint time"
    );
    ok(&ortelius(&restored, &["backup-lock", "--release"]));
    let fresh: i64 = ok(&ortelius(&restored, &["timestamp", "fetch"]))
        .trim()
        .parse()
        .unwrap();
    assert!(fresh > f);
    let (m, t) = manager(&checkpoint);
    assert_eq!(
        m.begin_read_only()
            .unwrap()
            .get_one(&t, &Cell::new("alice", "balance").unwrap())
            .unwrap(),
        Some(b"100".to_vec())
    );
}

/// Starts `ortelius workload bank` as a separate process serving the management API and waits
/// until it answers and has acknowledged some transfers.
fn start_bank_workload() -> (tempfile::TempDir, PathBuf, PathBuf, Serving) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("live");
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let address = format!("127.0.0.1:{port}");
    let live_config = config(dir.path(), "live.yml", &data, Some(&address));
    let acks = dir.path().join("acks");
    let workload = Serving(
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .arg("--config")
            .arg(&live_config)
            .args([
                "workload",
                "bank",
                "--accounts",
                "20",
                "--threads",
                "4",
                "--duration",
                "120s",
                "--ack-file",
            ])
            .arg(&acks)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let client = ManagementClient::new(&address, Some("t0ken".into()));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client.is_live() || acked(&acks).len() < 50 {
        assert!(Instant::now() < deadline, "the workload did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    (dir, live_config, acks, workload)
}

fn acked(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(str::to_owned).collect()
}

#[test]
fn backups_taken_during_the_bank_workload_restore_consistently_over_several_cycles() {
    let (dir, live_config, acks, workload) = start_bank_workload();
    let mut backups = Vec::new();
    for cycle in 0..3 {
        let backup = dir.path().join(format!("backup{cycle}"));
        let (b_file, f_file, store) = (
            backup.join("backup.timestamp"),
            backup.join("fast-forward.timestamp"),
            backup.join("store"),
        );
        ok(&ortelius(
            &live_config,
            &[
                "backup-lock",
                "--acquire",
                "--reason",
                &format!("cycle {cycle}"),
            ],
        ));
        let acked_before_b = acked(&acks);
        let b: i64 = ok(&ortelius(
            &live_config,
            &["timestamp", "fetch", "--file", b_file.to_str().unwrap()],
        ))
        .trim()
        .parse()
        .unwrap();
        ok(&ortelius(
            &live_config,
            &["kvs", "checkpoint", "--dir", store.to_str().unwrap()],
        ));
        let f: i64 = ok(&ortelius(
            &live_config,
            &["timestamp", "fetch", "--file", f_file.to_str().unwrap()],
        ))
        .trim()
        .parse()
        .unwrap();
        ok(&ortelius(&live_config, &["backup-lock", "--release"]));
        backups.push((store, b_file, f_file, b, f, acked_before_b));
        std::thread::sleep(Duration::from_millis(300)); // the workload continues
    }
    let total_acked = acked(&acks).len();
    drop(workload); // total loss of the live process
    assert!(
        total_acked > backups.last().unwrap().5.len(),
        "the workload kept committing after the last backup"
    );

    for (store, b_file, f_file, b, f, acked_before_b) in backups {
        let restored = config(dir.path(), "restored.yml", &store, None);
        ok(&ortelius(
            &restored,
            &[
                "timestamp",
                "clean-transactions",
                "--file",
                b_file.to_str().unwrap(),
            ],
        ));
        ok(&ortelius(
            &restored,
            &[
                "timestamp",
                "fast-forward",
                "--file",
                f_file.to_str().unwrap(),
            ],
        ));
        ok(&ortelius(&restored, &["backup-lock", "--release"]));
        assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
        let (m, _) = manager(&store);
        let txn = m.begin_read_only().unwrap();
        assert!(txn.start_ts() > f, "new timestamps start above F");
        let transfers = TableRef::new("bank", "transfers").unwrap();
        let cells: Vec<Cell> = acked_before_b
            .iter()
            .map(|id| Cell::new(id.as_str(), "t").unwrap())
            .collect();
        assert_eq!(
            txn.get(&transfers, &cells).unwrap().len(),
            cells.len(),
            "every transfer acknowledged before B is present"
        );
        // Nothing committed at or after B is visible.
        for row in txn
            .get_range(&transfers, &ortelius_kvs::RangeRequest::all())
            .unwrap()
        {
            let cell = Cell::new(row.unwrap().row, "t").unwrap();
            let start = m
                .kvs()
                .get_latest_timestamps(&transfers, &[(cell.clone(), txn.start_ts())])
                .unwrap()[&cell];
            match m.transactions_table().load(&[start]).unwrap().get(&start) {
                Some(ortelius_txn::TxnStatus::Committed(c)) => {
                    assert!(*c < b, "{cell} committed at {c} >= B {b}")
                }
                other => panic!("{cell} visible but {other:?}"),
            }
        }
    }
}

#[test]
fn one_shot_backups_during_the_workload_restore_consistently() {
    let (dir, live_config, acks, workload) = start_bank_workload();
    let mut backups = Vec::new();
    // CI runs two cycles; scripts/soak.sh runs ORTELIUS_SOAK_CYCLES (25) of them.
    let cycles: usize = std::env::var("ORTELIUS_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for cycle in 0..cycles {
        let backup = dir.path().join(format!("backup{cycle}"));
        let acked_before = acked(&acks);
        // Every other cycle stores the backup zstd-compressed.
        let mut args = vec!["backup", "--dir", backup.to_str().unwrap()];
        if cycle % 2 == 1 {
            args.push("--compress");
        }
        let out = ok(&ortelius(&live_config, &args));
        assert!(out.contains("backup complete"), "{out}");
        assert!(ok(&ortelius(
            &live_config,
            &["backup", "verify", "--dir", backup.to_str().unwrap()]
        ))
        .contains("intact"));
        let deep = ok(&ortelius(
            &live_config,
            &[
                "backup",
                "verify",
                "--deep",
                "--dir",
                backup.to_str().unwrap(),
            ],
        ));
        assert!(deep.contains("well-formed"), "{deep}");
        assert!(
            ok(&ortelius(&live_config, &["backup-lock", "--status"])).contains("not held"),
            "always released"
        );
        backups.push((backup, acked_before));
        std::thread::sleep(Duration::from_millis(200));
    }
    let busy = ortelius(
        &live_config,
        &["restore", "--dir", backups[0].0.to_str().unwrap()],
    );
    assert!(
        !busy.status.success()
            && String::from_utf8_lossy(&busy.stderr).contains("only safe offline")
    );
    drop(workload);

    for (i, (backup, acked_before)) in backups.iter().enumerate() {
        let target = dir.path().join(format!("restored{i}"));
        let restored = config(dir.path(), &format!("restored{i}.yml"), &target, None);
        assert!(ok(&ortelius(
            &restored,
            &["restore", "--dir", backup.to_str().unwrap()]
        ))
        .contains("restored"));
        let again = ortelius(&restored, &["restore", "--dir", backup.to_str().unwrap()]);
        assert!(
            !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("--force")
        );
        ok(&ortelius(
            &restored,
            &["restore", "--dir", backup.to_str().unwrap(), "--force"],
        ));
        assert!(ok(&ortelius(&restored, &["verify", "bank"])).starts_with("ok"));
        let (m, _) = manager(&target);
        let txn = m.begin_read_only().unwrap();
        let transfers = TableRef::new("bank", "transfers").unwrap();
        let cells: Vec<Cell> = acked_before
            .iter()
            .map(|id| Cell::new(id.as_str(), "t").unwrap())
            .collect();
        assert_eq!(
            txn.get(&transfers, &cells).unwrap().len(),
            cells.len(),
            "acknowledged before the backup began: present"
        );
    }
}
