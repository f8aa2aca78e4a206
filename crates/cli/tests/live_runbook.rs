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
