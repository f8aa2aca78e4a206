//! The `ortelius` binary: the runbook's offline commands, and bad input (a clear one-line error,
//! a non-zero exit, nothing stored changed).
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ortelius_kvs::{Cell, TableRef};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

struct Env {
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("service.yml");
        let data = dir.path().join("data");
        std::fs::write(
            &config,
            format!("server: {{port: 1}}\natlasdb:\n  keyValueService:\n    type: rocksdb\n    dataDir: {}\n", data.display()),
        )
        .unwrap();
        Self { dir, config }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .unwrap()
    }

    fn with_manager<R>(&self, f: impl FnOnce(&TransactionManager, &TableRef) -> R) -> R {
        let kvs = ortelius_backends::open(&ortelius_backends::StoreConfig::Rocksdb {
            data_dir: self.data(),
        })
        .unwrap()
        .kvs;
        let m = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
        let t = TableRef::new("bank", "accounts").unwrap();
        m.create_table(&t, TableMetadata::default()).unwrap();
        f(&m, &t)
    }
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn fails(out: &Output, expect: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "succeeded but should have failed with {expect:?}"
    );
    assert!(
        stderr.contains(expect),
        "stderr {stderr:?} does not mention {expect:?}"
    );
}

fn commit(m: &TransactionManager, t: &TableRef, row: &str) -> i64 {
    m.run(|txn| {
        txn.put(t, &Cell::new(row, "balance").unwrap(), b"100".to_vec())?;
        Ok(txn.start_ts())
    })
    .unwrap()
}

#[test]
fn the_offline_runbook_steps_work_through_the_binary() {
    let env = Env::new();
    env.with_manager(|m, t| commit(m, t, "before"));
    let backup_file = env.dir.path().join("backups/2026-11-26/backup.timestamp");
    let b: i64 = ok(&env.run(&[
        "timestamp",
        "fetch",
        "--file",
        backup_file.to_str().unwrap(),
    ]))
    .trim()
    .parse()
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&backup_file).unwrap(),
        format!("{b}\n"),
        "parent directories created"
    );
    ok(&env.run(&[
        "backup-lock",
        "--acquire",
        "--reason",
        "nightly",
        "--lease",
        "2h",
    ]));
    assert!(ok(&env.run(&["backup-lock", "--status"])).contains("nightly"));
    fails(&env.run(&["backup-lock", "--acquire"]), "already held");
    env.with_manager(|m, t| commit(m, t, "after"));
    let f: i64 = ok(&env.run(&["timestamp", "fetch"]))
        .trim()
        .parse()
        .unwrap();
    ok(&env.run(&["backup-lock", "--release"]));
    fails(&env.run(&["backup-lock", "--release"]), "not held");
    assert!(ok(&env.run(&["backup-lock", "--release", "--force"])).contains("not held"));
    fails(
        &env.run(&["backup-lock", "--acquire", "--force"]),
        "--release",
    );
    // Restore steps on the same directory (standing in for a restored copy).
    let cleaned = ok(&env.run(&[
        "timestamp",
        "clean-transactions",
        "--file",
        backup_file.to_str().unwrap(),
    ]));
    assert!(cleaned.contains("deleted 1"), "{cleaned}");
    // (Each process resumes above the persisted bound, a million past its last timestamp, so
    // jump well beyond that.)
    let target = f + 50_000_000;
    assert!(ok(&env.run(&[
        "timestamp",
        "fast-forward",
        "--timestamp",
        &target.to_string()
    ]))
    .contains("fast-forwarded"));
    assert!(
        ok(&env.run(&["timestamp", "fast-forward", "--timestamp", "5"])).contains("nothing to do")
    );
    let fresh: i64 = ok(&env.run(&["timestamp", "fetch"]))
        .trim()
        .parse()
        .unwrap();
    assert!(fresh > target);
    env.with_manager(|m, t| {
        let ro = m.begin_read_only().unwrap();
        assert!(ro
            .get_one(t, &Cell::new("before", "balance").unwrap())
            .unwrap()
            .is_some());
        assert!(
            ro.get_one(t, &Cell::new("after", "balance").unwrap())
                .unwrap()
                .is_none(),
            "committed after B"
        );
    });
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_owned()
}

#[test]
fn bad_input_is_a_clear_error_and_changes_nothing() {
    let env = Env::new();
    let start = env.with_manager(|m, t| commit(m, t, "x"));
    let d = env.dir.path();
    let bin = || Command::new(env!("CARGO_BIN_EXE_ortelius"));
    fails(
        &bin().args(["timestamp", "fetch"]).output().unwrap(),
        "--config",
    );
    fails(
        &bin()
            .args(["--config", "/no/such.yml", "timestamp", "fetch"])
            .output()
            .unwrap(),
        "/no/such.yml",
    );
    let garbled = write(d, "garbled.yml", "atlasdb: [oops\n");
    fails(
        &bin()
            .args(["--config", &garbled, "timestamp", "fetch"])
            .output()
            .unwrap(),
        "not valid YAML",
    );
    fails(
        &env.run(&["--config-root", "/nothing/here", "timestamp", "fetch"]),
        "selects nothing",
    );
    let unknown = write(
        d,
        "unknown.yml",
        "atlasdb:\n  keyValueService: {type: dynamodb}\n",
    );
    fails(
        &bin()
            .args(["--config", &unknown, "timestamp", "fetch"])
            .output()
            .unwrap(),
        "dynamodb",
    );
    let typo = write(
        d,
        "typo.yml",
        "atlasdb:\n  keyValueService: {type: rocksdb, dataDirr: /tmp/x}\n",
    );
    fails(
        &bin()
            .args(["--config", &typo, "timestamp", "fetch"])
            .output()
            .unwrap(),
        "dataDirr",
    );
    for (name, text, expect) in [
        ("empty.ts", "", "empty"),
        ("words.ts", "twelve\n", "not a timestamp"),
        ("negative.ts", "-5\n", "negative"),
        ("overflow.ts", "99999999999999999999\n", "not a timestamp"),
        ("two.ts", "1\n2\n", "2 lines"),
    ] {
        let f = write(d, name, text);
        fails(
            &env.run(&["timestamp", "fast-forward", "--file", &f]),
            expect,
        );
        fails(
            &env.run(&["timestamp", "clean-transactions", "--file", &f]),
            expect,
        );
    }
    fails(
        &env.run(&["timestamp", "fast-forward", "--file", "/no/such/file"]),
        "cannot read timestamp file",
    );
    fails(
        &env.run(&[
            "timestamp",
            "fast-forward",
            "--file",
            "x",
            "--timestamp",
            "5",
        ]),
        "cannot be used with",
    );
    fails(&env.run(&["timestamp", "clean-transactions"]), "required");
    fails(
        &env.run(&["timestamp", "fast-forward", "--timestamp", "-3"]),
        "negative",
    );
    fails(
        &env.run(&["backup-lock", "--acquire", "--release"]),
        "cannot be used with",
    );
    fails(&env.run(&["backup-lock"]), "required");
    fails(
        &env.run(&["backup-lock", "--acquire", "--lease", "soon"]),
        "duration",
    );
    let blocker = write(d, "a-file", "");
    fails(
        &env.run(&[
            "timestamp",
            "fetch",
            "--file",
            &format!("{blocker}/below/ts"),
        ]),
        "cannot create directory",
    );
    fails(&env.run(&["no-such-command"]), "unrecognized subcommand");
    fails(
        &env.run(&["backup", "--dir", "x", "--rate-limit", "fast"]),
        "not a rate",
    );
    fails(
        &env.run(&["backup", "--dir", "x", "--rate-limit", "0M"]),
        "positive",
    );
    // Nothing stored changed: the commit is intact and the lock is open.
    env.with_manager(|m, t| {
        let status = m.transactions_table().load_uncached(&[start]).unwrap();
        assert!(matches!(
            status.get(&start),
            Some(ortelius_txn::TxnStatus::Committed(_))
        ));
        assert!(m
            .begin_read_only()
            .unwrap()
            .get_one(t, &Cell::new("x", "balance").unwrap())
            .unwrap()
            .is_some());
    });
    assert!(ok(&env.run(&["backup-lock", "--status"])).contains("not held"));
}
