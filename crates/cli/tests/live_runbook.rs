//! The runbook against a live owner, on every backend: a process holds the store and serves the
//! management API (`ortelius serve`, or the bank workload); the runbook's live commands go
//! through it, the offline-only ones refuse it; after total loss of the live store, the raw
//! snapshot restores offline through the CLI, command for command, and so do one-shot backups.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use ortelius_backends::StoreConfig;
use ortelius_kvs::{Cell, TableRef};
use ortelius_test_servers::EtcdCluster;

/// Where the stores of one test live: a backend and a namespace for store names.
struct Deployment {
    dir: tempfile::TempDir,
    backend: Backend,
}

enum Backend {
    Rocksdb,
    Postgres(&'static ortelius_test_servers::Postgres),
    Etcd(&'static EtcdCluster),
}

/// The etcd cluster of this test binary.
fn etcd() -> &'static EtcdCluster {
    static SHARED: std::sync::OnceLock<EtcdCluster> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| EtcdCluster::start(3, &[]))
}

impl Deployment {
    fn rocksdb() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::Rocksdb,
        }
    }

    fn etcd() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            backend: Backend::Etcd(etcd()),
        }
    }

    fn postgres() -> Self {
        let pg = ortelius_test_servers::Postgres::shared();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("pg-password"),
            ortelius_test_servers::postgres::PASSWORD,
        )
        .unwrap();
        Self {
            dir,
            backend: Backend::Postgres(pg),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A schema name unique to this deployment and store.
    fn schema(&self, store: &str) -> String {
        let tag = self
            .path()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_lowercase()
            .replace(|c: char| !c.is_ascii_alphanumeric(), "");
        format!("e2e_{tag}_{store}")
    }

    fn store_yaml(&self, store: &str) -> String {
        match self.backend {
            Backend::Rocksdb => format!(
                "{{type: rocksdb, dataDir: {}}}",
                self.path().join(store).display()
            ),
            Backend::Etcd(etcd) => format!(
                "{{type: etcd, endpoints: [{}], prefix: /{}}}",
                etcd.endpoints().join(", "),
                self.schema(store)
            ),
            Backend::Postgres(pg) => format!(
                "{{type: postgres, host: {}, port: {}, database: {}, user: {}, passwordFile: {}, schema: {}}}",
                pg.host,
                pg.port,
                ortelius_test_servers::postgres::DATABASE,
                ortelius_test_servers::postgres::USER,
                self.path().join("pg-password").display(),
                self.schema(store)
            ),
        }
    }

    fn store_config(&self, store: &str) -> StoreConfig {
        yaml_serde::from_str(&self.store_yaml(store)).unwrap()
    }

    /// A config file for `store`, optionally with a management address.
    fn config(&self, name: &str, store: &str, management: Option<&str>) -> PathBuf {
        write_config(self.path(), name, &self.store_yaml(store), management)
    }

    /// Total loss of a store.
    fn lose(&self, store: &str) {
        match self.backend {
            Backend::Rocksdb => std::fs::remove_dir_all(self.path().join(store)).unwrap(),
            Backend::Etcd(etcd) => {
                let prefix = format!("/{}", self.schema(store));
                let out = etcd.etcdctl(&[0], &["del", "--prefix", &prefix]);
                assert!(out.status.success(), "{out:?}");
            }
            Backend::Postgres(pg) => {
                pg.psql(
                    ortelius_test_servers::postgres::DATABASE,
                    &format!("DROP SCHEMA \"{}\" CASCADE", self.schema(store)),
                );
            }
        }
    }

    /// Whether anything of `store` exists: its directory, schema or keys.
    fn exists(&self, store: &str) -> bool {
        match self.backend {
            Backend::Rocksdb => self.path().join(store).exists(),
            Backend::Etcd(etcd) => {
                let prefix = format!("/{}", self.schema(store));
                let out = etcd.etcdctl(&[0], &["get", "--prefix", "--keys-only", &prefix]);
                assert!(out.status.success(), "{out:?}");
                !out.stdout.iter().all(u8::is_ascii_whitespace)
            }
            Backend::Postgres(pg) => {
                pg.psql(
                    ortelius_test_servers::postgres::DATABASE,
                    &format!(
                        "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                        self.schema(store)
                    ),
                )
                .trim()
                    != "0"
            }
        }
    }

    fn manager(&self, store: &str) -> (ortelius_txn::TransactionManager, TableRef) {
        (
            common::manager(&self.store_config(store)),
            TableRef::new("bank", "accounts").unwrap(),
        )
    }
}

fn the_runbook_runs_live_through_serve_and_restores_offline(d: &Deployment) {
    {
        let (m, t) = d.manager("live");
        m.run(|txn| txn.put(&t, &Cell::new("alice", "balance").unwrap(), b"100".to_vec()))
            .unwrap();
    }
    let address = free_address();
    let live_config = d.config("live.yml", "live", Some(&address));
    let serving = Serving(
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .arg("--config")
            .arg(&live_config)
            .arg("serve")
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_live(&address);
    // A wrong token is reported as refused (not as a process that does not answer), and a
    // second process on the store is told who owns it.
    let wrong_token = d.path().join("wrong-token.yml");
    std::fs::write(
        &wrong_token,
        std::fs::read_to_string(&live_config)
            .unwrap()
            .replace("t0ken", "wr0ng"),
    )
    .unwrap();
    let out = ortelius(&wrong_token, &["timestamp", "fetch"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("refused the token"),
        "{stderr}"
    );
    let out = ortelius(
        &live_config,
        &["workload", "bank", "--accounts", "5", "--duration", "1s"],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && (stderr.contains(&format!("owned by process {}", serving.0.id()))
                || stderr.contains("is the timestamp authority of this store")),
        "{stderr}"
    );
    // The console reads through the live owner.
    let got = ok(&ortelius(
        &live_config,
        &["kvs", "get", "--table", "bank.accounts", "--row", "alice"],
    ));
    assert!(got.starts_with("alice\tbalance\t100\n"), "{got}");
    let backup = d.path().join("backup");
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
    let snapshot = backup.join("store");
    ok(&ortelius(
        &live_config,
        &["kvs", "snapshot", "--dir", snapshot.to_str().unwrap()],
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
    drop(serving);
    d.lose("live");

    // Restore from the raw snapshot, offline, per the runbook.
    let restored = d.config("restored.yml", "restored", None);
    ok(&ortelius(
        &restored,
        &["kvs", "load", "--dir", snapshot.to_str().unwrap()],
    ));
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
        "the lock was held when the snapshot was taken"
    );
    ok(&ortelius(&restored, &["backup-lock", "--release"]));
    let fresh: i64 = ok(&ortelius(&restored, &["timestamp", "fetch"]))
        .trim()
        .parse()
        .unwrap();
    assert!(fresh > f);
    let (m, t) = d.manager("restored");
    assert_eq!(
        m.begin_read_only()
            .unwrap()
            .get_one(&t, &Cell::new("alice", "balance").unwrap())
            .unwrap(),
        Some(b"100".to_vec())
    );
}

/// Starts the bank workload on the deployment's "live" store.
fn start_bank_workload(d: &Deployment) -> (PathBuf, PathBuf, Serving, String) {
    let address = free_address();
    let live_config = d.config("live.yml", "live", Some(&address));
    let acks = d.path().join("acks");
    let workload = common::start_bank_workload(&live_config, &address, &acks);
    (live_config, acks, workload, address)
}

fn check_restored(d: &Deployment, store: &str, acked_before_b: &[String], b: i64, f: i64) {
    common::check_restored(&d.store_config(store), acked_before_b, b, f);
}

fn backups_taken_during_the_bank_workload_restore_consistently_over_several_cycles(d: &Deployment) {
    let (live_config, acks, workload, _) = start_bank_workload(d);
    let mut backups = Vec::new();
    for cycle in 0..3 {
        let backup = d.path().join(format!("backup{cycle}"));
        let (b_file, f_file, snapshot) = (
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
            &["kvs", "snapshot", "--dir", snapshot.to_str().unwrap()],
        ));
        let f: i64 = ok(&ortelius(
            &live_config,
            &["timestamp", "fetch", "--file", f_file.to_str().unwrap()],
        ))
        .trim()
        .parse()
        .unwrap();
        ok(&ortelius(&live_config, &["backup-lock", "--release"]));
        backups.push((snapshot, b_file, f_file, b, f, acked_before_b));
        std::thread::sleep(Duration::from_millis(300)); // the workload continues
    }
    let total_acked = acked(&acks).len();
    drop(workload);
    d.lose("live"); // total loss
    assert!(
        total_acked > backups.last().unwrap().5.len(),
        "the workload kept committing after the last backup"
    );

    for (i, (snapshot, b_file, f_file, b, f, acked_before_b)) in backups.into_iter().enumerate() {
        let store = format!("restored{i}");
        let restored = d.config(&format!("{store}.yml"), &store, None);
        ok(&ortelius(
            &restored,
            &["kvs", "load", "--dir", snapshot.to_str().unwrap()],
        ));
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
        check_restored(d, &store, &acked_before_b, b, f);
    }
}

fn one_shot_backups_during_the_workload_restore_consistently(d: &Deployment) {
    let (live_config, acks, workload, address) = start_bank_workload(d);
    let mut backups = Vec::new();
    // CI runs three cycles (one chain); scripts/soak.sh runs ORTELIUS_SOAK_CYCLES of them.
    // The live process's metrics count the workload's commits and the backups' snapshots.
    let scrape = || {
        use ortelius_backup::StoreOwner;
        ortelius_management::ManagementClient::new(&address, Some("t0ken".into()))
            .metrics()
            .unwrap()
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
    };
    let before = scrape();
    assert!(value(&before, "ortelius_commits_total{table=\"bank.accounts\"}") > 0.0);
    assert!(value(&before, "ortelius_commit_seconds_count") > 0.0);
    assert_eq!(
        value(&before, "ortelius_last_snapshot_timestamp_seconds"),
        0.0
    );
    let cycles: usize = std::env::var("ORTELIUS_SOAK_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    for cycle in 0..cycles {
        let backup = d.path().join(format!("backup{cycle}"));
        let acked_before = acked(&acks);
        // Chains of three: a full backup, then two incremental ones, each on the one before;
        // every other chain stores its files zstd-compressed.
        let mut args = vec!["backup", "--dir", backup.to_str().unwrap()];
        let parent = d.path().join(format!("backup{}", cycle.saturating_sub(1)));
        if cycle % 3 != 0 {
            args.extend(["--incremental-from", parent.to_str().unwrap()]);
        }
        if (cycle / 3) % 2 == 1 {
            args.push("--compress");
        }
        let out = ok(&ortelius(&live_config, &args));
        assert!(out.contains("backup of"), "{out}");
        assert_eq!(
            cycle % 3 != 0,
            out.contains("stored here, the rest in ../backup"),
            "{out}"
        );
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
    let after = scrape();
    assert!(value(&after, "ortelius_last_snapshot_timestamp_seconds") > 0.0);
    assert!(
        value(&after, "ortelius_commits_total{table=\"bank.accounts\"}")
            > value(&before, "ortelius_commits_total{table=\"bank.accounts\"}")
    );
    assert_eq!(value(&after, "ortelius_backup_lock_held"), 0.0);
    drop(workload);
    d.lose("live");

    for (i, (backup, acked_before)) in backups.iter().enumerate() {
        let store = format!("restored{i}");
        let restored = d.config(&format!("{store}.yml"), &store, None);
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
        let manifest = ortelius_backup::verify(backup).unwrap();
        check_restored(
            d,
            &store,
            acked_before,
            manifest.backup_ts,
            manifest.fast_forward_ts,
        );
    }
    println!(
        "SUMMARY backup cycles: {cycles} live one-shot backups during the bank workload, each restored after total loss with every acknowledged transfer before B present, nothing after B visible, money conserved"
    );
}

/// A config that points at no store (a mistyped directory, schema or prefix): every command
/// that reads, locks or backs up a store refuses it, naming where it looked, and creates
/// nothing; the commands that start a store (`workload`) still create it.
fn a_missing_store_is_refused_by_every_command_that_does_not_create_one(d: &Deployment) {
    let config = d.config("mistyped.yml", "mistyped", None);
    let (ts_file, snapshot_dir, backup_dir) = (
        d.path().join("b.timestamp"),
        d.path().join("snapshot"),
        d.path().join("backup"),
    );
    let commands: [&[&str]; 11] = [
        &["timestamp", "fetch"],
        &["timestamp", "fetch", "--file", path(&ts_file)],
        &["backup-lock", "--acquire", "--lease", "1h"],
        &["backup-lock", "--status"],
        &["backup-lock", "--release", "--force"],
        &["kvs", "checkpoint", "--dir", path(&snapshot_dir)],
        &["backup", "--dir", path(&backup_dir)],
        &["verify", "bank"],
        &["sweep", "--all"],
        &["timestamp", "clean-transactions", "--timestamp", "1"],
        &["timestamp", "fast-forward", "--timestamp", "5"],
    ];
    for args in commands {
        let out = ortelius(&config, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success()
                && stderr.contains("there is no store at")
                && stderr.contains("mistyped"),
            "{args:?}: {stderr}"
        );
        assert!(!d.exists("mistyped"), "{args:?} created the store");
    }
    for made in [&ts_file, &snapshot_dir, &backup_dir] {
        assert!(!made.exists(), "{} was written", made.display());
    }
    ok(&ortelius(
        &config,
        &[
            "workload",
            "bank",
            "--accounts",
            "5",
            "--threads",
            "1",
            "--duration",
            "1s",
        ],
    ));
    assert!(d.exists("mistyped"));
    timestamp(&ortelius(&config, &["timestamp", "fetch"]));
}

macro_rules! on_backends {
    ($($name:ident),* $(,)?) => {
        mod rocksdb {
            $( #[test] fn $name() { super::$name(&super::Deployment::rocksdb()) } )*
        }
        mod postgres {
            $( #[test] fn $name() { super::$name(&super::Deployment::postgres()) } )*
        }
        mod etcd {
            $( #[test] fn $name() { super::$name(&super::Deployment::etcd()) } )*
        }
    };
}

on_backends!(
    a_missing_store_is_refused_by_every_command_that_does_not_create_one,
    the_runbook_runs_live_through_serve_and_restores_offline,
    backups_taken_during_the_bank_workload_restore_consistently_over_several_cycles,
    one_shot_backups_during_the_workload_restore_consistently,
);
