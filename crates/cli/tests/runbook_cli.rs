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

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text:?}"))
}

#[test]
fn results_print_as_json_and_the_lock_status_reads_as_dates() {
    let env = Env::new();
    env.with_manager(|m, t| commit(m, t, "x"));
    let fetched = json(&ok(&env.run(&["--json", "timestamp", "fetch"])));
    assert!(fetched["timestamp"].as_i64().unwrap() > 0, "{fetched}");
    assert_eq!(fetched["kind"], "fresh");
    let acquired = json(&ok(&env.run(&[
        "--json",
        "backup-lock",
        "--acquire",
        "--reason",
        "nightly",
        "--lease",
        "2h",
    ])));
    assert_eq!(acquired["acquired"]["reason"], "nightly", "{acquired}");
    let status = ok(&env.run(&["backup-lock", "--status"]));
    assert!(
        status.contains("held by ortelius-cli pid")
            && status.contains("UTC (")
            && status.contains("ago)")
            && status.contains("lease expires")
            && status.contains("(in 1h 59m)"),
        "{status}"
    );
    let raw = json(&ok(&env.run(&["--json", "backup-lock", "--status"])));
    let held = &raw["status"]["held"];
    assert_eq!(held["reason"], "nightly", "{raw}");
    assert!(held["acquired_at_ms"].as_u64().unwrap() <= raw["now_ms"].as_u64().unwrap());
    // A sweep that the lock pauses says so, with the holder and since when.
    let swept = ok(&env.run(&["sweep", "--all"]));
    assert!(
        swept.contains("sweep is paused") && swept.contains("nightly") && swept.contains("since"),
        "{swept}"
    );
    let swept = json(&ok(&env.run(&["--json", "sweep", "--all"])));
    assert_eq!(swept["paused_by"]["reason"], "nightly", "{swept}");
    assert!(!swept["tables"].as_array().unwrap().is_empty());
    let released = json(&ok(&env.run(&["--json", "backup-lock", "--release"])));
    assert_eq!(released["released"]["reason"], "nightly");
    let swept = json(&ok(&env.run(&["--json", "sweep", "--all"])));
    assert!(swept["paused_by"].is_null(), "{swept}");
    // Protocol events are logged: JSON lines on stderr with --log-format json.
    let logged = Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .env("RUST_LOG", "info")
        .arg("--config")
        .arg(&env.config)
        .args([
            "--log-format",
            "json",
            "backup-lock",
            "--acquire",
            "--reason",
            "logged",
        ])
        .output()
        .unwrap();
    ok(&logged);
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&logged.stderr)
        .lines()
        .map(json)
        .collect();
    assert!(
        events.iter().any(|e| e["level"] == "INFO"
            && e["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("backup lock acquired"))
            && e["fields"]["holder"]
                .as_str()
                .is_some_and(|h| h.starts_with("ortelius-cli pid"))),
        "{events:?}"
    );
    let quiet = env.run(&["backup-lock", "--release"]);
    ok(&quiet);
    assert!(
        quiet.stderr.is_empty(),
        "no log lines by default for a one-shot command: {}",
        String::from_utf8_lossy(&quiet.stderr)
    );
    // An error is one JSON object on stderr, with a non-zero exit.
    let out = env.run(&["--json", "backup-lock", "--release"]);
    assert!(!out.status.success());
    let error = json(&String::from_utf8_lossy(&out.stderr));
    assert!(
        error["error"].as_str().unwrap().contains("not held"),
        "{error}"
    );
    let ff = json(&ok(&env.run(&[
        "--json",
        "timestamp",
        "fast-forward",
        "--timestamp",
        "5",
    ])));
    assert_eq!(ff["advanced"], false, "{ff}");
    // Backup, verify and restore report as JSON too.
    let backup = env.dir.path().join("backup");
    let backup_arg = backup.to_str().unwrap();
    let taken = json(&ok(&env.run(&["--json", "backup", "--dir", backup_arg])));
    assert_eq!(taken["store_kind"], "rocksdb", "{taken}");
    assert!(taken["files"].as_u64().unwrap() > 0 && taken["bytes"].as_u64().unwrap() > 0);
    assert!(taken["backup_ts"].as_i64().unwrap() < taken["fast_forward_ts"].as_i64().unwrap());
    let verified =
        json(&ok(&env.run(&[
            "--json", "backup", "verify", "--deep", "--dir", backup_arg,
        ])));
    assert_eq!(verified["intact"], true, "{verified}");
    assert!(verified["entries"].as_u64().unwrap() > 0, "{verified}");
    assert!(verified["transactions"].is_u64(), "{verified}");
    let restored = write(
        env.dir.path(),
        "restored.yml",
        &format!(
            "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
            env.dir.path().join("restored").display()
        ),
    );
    let report = json(&ok(&Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .args([
            "--config", &restored, "--json", "restore", "--dir", backup_arg,
        ])
        .output()
        .unwrap()));
    assert_eq!(report["as_of"], taken["backup_ts"], "{report}");
    assert_eq!(
        report["fast_forward_ts"], taken["fast_forward_ts"],
        "{report}"
    );
    assert!(
        report["into"].as_str().unwrap().contains("restored"),
        "{report}"
    );
}

#[test]
fn the_console_reads_tables_rows_and_ranges_at_a_timestamp() {
    let env = Env::new();
    let before_c = env.with_manager(|m, t| {
        commit(m, t, "a");
        commit(m, t, "b");
        let before_c = m.fresh_timestamp().unwrap();
        m.run(|txn| {
            txn.put(t, &Cell::new("c", "balance").unwrap(), b"100".to_vec())?;
            txn.put(
                t,
                &Cell::new("c", "doc").unwrap(),
                br#"{"k": [1]}"#.to_vec(),
            )?;
            txn.put(t, &Cell::new(vec![0xff, 0], "raw").unwrap(), vec![0, 1])
        })
        .unwrap();
        before_c
    });
    assert!(ok(&env.run(&["kvs", "tables"])).contains("bank.accounts"));
    let table = ["--table", "bank.accounts"];
    let got = ok(&env.run(&[&["kvs", "get", "--row", "a"], &table[..]].concat()));
    assert!(got.starts_with("a\tbalance\t100\n"), "{got}");
    let got = ok(&env.run(
        &[
            &[
                "kvs", "get", "--row", "c", "--column", "doc", "--format", "json",
            ],
            &table[..],
        ]
        .concat(),
    ));
    assert!(got.starts_with("c\tdoc\t{\"k\":[1]}\n"), "{got}");
    let got = ok(&env.run(&[&["kvs", "get", "--row", "hex:ff00"], &table[..]].concat()));
    assert!(got.starts_with("0xff00\traw\t0x0001\n"), "{got}");
    fails(
        &env.run(&[&["kvs", "get", "--row", "zed"], &table[..]].concat()),
        "no row zed",
    );
    fails(
        &env.run(
            &[
                &["kvs", "get", "--row", "a", "--column", "nope"],
                &table[..],
            ]
            .concat(),
        ),
        "row a of bank.accounts has no column nope",
    );
    fails(
        &env.run(&["kvs", "get", "--table", "no.such", "--row", "a"]),
        "there is no table no.such",
    );
    fails(
        &env.run(&[&["kvs", "get", "--row", "hex:0"], &table[..]].concat()),
        "odd number of hex digits",
    );
    let out = env.run(&[&["kvs", "scan", "--limit", "2"], &table[..]].concat());
    let scanned = ok(&out);
    assert!(
        scanned.starts_with("a\tbalance\t100\nb\tbalance\t100\n# 2 row(s)"),
        "{scanned}"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("more rows follow"));
    let scanned = json(&ok(&env.run(
        &[
            &["--json", "kvs", "scan", "--reverse", "--end", "c"],
            &table[..],
        ]
        .concat(),
    )));
    let rows: Vec<&str> = scanned["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["row"].as_str().unwrap())
        .collect();
    assert_eq!(rows, ["b", "a"], "{scanned}");
    assert_eq!(scanned["more"], false);
    let at = before_c.to_string();
    let old = json(&ok(
        &env.run(&[&["--json", "kvs", "scan", "--at", &at], &table[..]].concat())
    ));
    assert_eq!(old["timestamp"].as_i64(), Some(before_c));
    assert_eq!(old["rows"].as_array().unwrap().len(), 2, "{old}");
    fails(
        &env.run(&[&["kvs", "scan", "--limit", "0"], &table[..]].concat()),
        "--limit must be in 1..=10000",
    );
    fails(
        &env.run(&[&["kvs", "scan", "--at", "999999999999"], &table[..]].concat()),
        "999999999999",
    );
}

#[test]
fn the_register_workload_writes_a_history_that_checks_out_and_a_tampered_one_does_not() {
    let env = Env::new();
    let history = env.dir.path().join("history.jsonl");
    let history_arg = history.to_str().unwrap();
    let report = json(&ok(&env.run(&[
        "--json",
        "workload",
        "register",
        "--keys",
        "3",
        "--threads",
        "4",
        "--duration",
        "3s",
        "--history",
        history_arg,
    ])));
    assert!(report["committed"].as_u64().unwrap() > 10, "{report}");
    assert!(report["reads_checked"].as_u64().unwrap() > 10, "{report}");
    let text = std::fs::read_to_string(&history).unwrap();
    let entries: Vec<serde_json::Value> = text.lines().map(json).collect();
    assert_eq!(
        entries.len() as u64,
        report["committed"].as_u64().unwrap()
            + report["aborted"].as_u64().unwrap()
            + report["unknown"].as_u64().unwrap()
    );
    for e in &entries {
        assert!(
            e["process"].is_u64() && e["start_ts"].is_i64() && e["ops"].is_array(),
            "{e}"
        );
        assert!(["committed", "aborted", "unknown"].contains(&e["outcome"].as_str().unwrap()));
    }
    assert!(ok(&env.run(&["verify", "history", "--file", history_arg]))
        .contains("snapshot isolation holds"));
    // A read changed to a value nobody wrote is caught.
    let (i, op) = entries
        .iter()
        .enumerate()
        .find_map(|(i, e)| {
            let ops = e["ops"].as_array()?;
            let j = ops.iter().position(|o| o[0] == "r")?;
            Some((i, j))
        })
        .unwrap();
    let mut tampered = entries.clone();
    tampered[i]["ops"][op][2] = serde_json::json!(999_999_999);
    let tampered_file = env.dir.path().join("tampered.jsonl");
    std::fs::write(
        &tampered_file,
        tampered
            .iter()
            .map(|e| format!("{e}\n"))
            .collect::<String>(),
    )
    .unwrap();
    fails(
        &env.run(&[
            "verify",
            "history",
            "--file",
            tampered_file.to_str().unwrap(),
        ]),
        "snapshot isolation violated",
    );
    fails(
        &env.run(&["verify", "history", "--file", "/no/such/history"]),
        "cannot read history file",
    );
}

#[test]
fn migrate_copies_every_table_resumes_after_a_kill_and_verifies_both_sides() {
    use std::io::BufRead;
    let env = Env::new();
    let d = env.dir.path();
    env.with_manager(|m, t| {
        let rows: Vec<u32> = (0..20_000).collect();
        for chunk in rows.chunks(2000) {
            m.run(|txn| {
                for i in chunk {
                    txn.put(
                        t,
                        &Cell::new(format!("r{i:06}"), "balance")?,
                        i.to_be_bytes(),
                    )?;
                }
                Ok(())
            })
            .unwrap();
        }
        let audit = TableRef::new("bank", "audit").unwrap();
        let serializable = TableMetadata {
            conflict_handler: ortelius_txn::ConflictHandler::Serializable,
            ..TableMetadata::default()
        };
        m.create_table(&audit, serializable).unwrap();
        m.run(|txn| txn.put(&audit, &Cell::new("a", "b")?, b"c".to_vec()))
            .unwrap();
    });
    let target = write(
        d,
        "target.yml",
        &format!(
            "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
            d.join("target").display()
        ),
    );
    let migrate = ["migrate", "--to", &target, "--batch-rows", "100"];
    // Killed after its first committed batch...
    let mut child = Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .arg("--config")
        .arg(&env.config)
        .args(migrate)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 && !line.contains("rows copied") {
        line.clear();
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        line.contains("rows copied"),
        "the migration never copied: {line}"
    );
    // ... it refuses a different timestamp, and finishes when run again, copying less.
    fails(
        &env.run(&[&migrate[..], &["--at", "3"]].concat()),
        "interrupted migration",
    );
    let report = json(&ok(&env.run(&[&["--json"], &migrate[..]].concat())));
    assert_eq!(report["resumed"], true, "{report}");
    let tables = report["tables"].as_array().unwrap();
    assert_eq!(tables.len(), 2, "{report}");
    let accounts = tables
        .iter()
        .find(|t| t["table"] == "bank.accounts")
        .unwrap();
    assert_eq!(accounts["rows"], 20_000, "{report}");
    assert!(
        accounts["rows_copied"].as_u64().unwrap() < 20_000,
        "{report}"
    );
    let on_target = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .args(["--config", &target])
            .args(args)
            .output()
            .unwrap()
    };
    let got = ok(&on_target(&[
        "kvs",
        "get",
        "--table",
        "bank.accounts",
        "--row",
        "r019999",
        "--format",
        "hex",
    ]));
    assert!(
        got.starts_with("0x72303139393939\t0x62616c616e6365\t0x00004e1f"),
        "{got}"
    );
    let listed = ok(&on_target(&["kvs", "tables"]));
    assert!(
        listed.contains("bank.audit\tconflicts: Serializable"),
        "{listed}"
    );
    fails(
        &env.run(&["migrate", "--to", env.config.to_str().unwrap()]),
        "the configured store itself",
    );
    fails(
        &env.run(&["migrate", "--to", &target, "--batch-rows", "0"]),
        "--batch-rows must be in 1..=10000",
    );
}

#[test]
fn an_incremental_backup_stores_only_new_files_and_needs_its_parent() {
    let env = Env::new();
    let d = env.dir.path();
    // Several SST files: each chunk is flushed by the next backup's checkpoint.
    let fill = |from: u32| {
        env.with_manager(|m, t| {
            m.run(|txn| {
                for i in from..from + 2000 {
                    txn.put(
                        t,
                        &Cell::new(format!("r{i:06}"), "balance")?,
                        vec![7u8; 100],
                    )?;
                }
                Ok(())
            })
            .unwrap()
        })
    };
    fill(0);
    let (full, incremental) = (d.join("full"), d.join("incremental"));
    let taken = json(&ok(&env.run(&[
        "--json",
        "backup",
        "--dir",
        path_of(&full),
    ])));
    assert!(taken["parent"].is_null());
    fill(2000);
    let inc = json(&ok(&env.run(&[
        "--json",
        "backup",
        "--dir",
        path_of(&incremental),
        "--incremental-from",
        path_of(&full),
    ])));
    // (Whether files are shared here depends on RocksDB's compactions between the two
    // processes; the backup suite checks sharing within one process.)
    assert_eq!(inc["parent"], "../full", "{inc}");
    assert!(inc["stored_bytes"].as_u64().unwrap() <= inc["bytes"].as_u64().unwrap());
    fails(
        &env.run(&[
            "backup",
            "--dir",
            path_of(&d.join("mismatch")),
            "--compress",
            "--incremental-from",
            path_of(&full),
        ]),
        "must use the same",
    );
    assert!(
        ok(&env.run(&["backup", "verify", "--deep", "--dir", path_of(&incremental)]))
            .contains("intact")
    );
    let restore_into = |name: &str| {
        let config = write(
            d,
            &format!("{name}.yml"),
            &format!(
                "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
                d.join(name).display()
            ),
        );
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .args([
                "--config",
                &config,
                "restore",
                "--dir",
                path_of(&incremental),
            ])
            .output()
            .unwrap()
    };
    ok(&restore_into("restored"));
    // The restored store holds the rows of both fills.
    let restored = write(
        d,
        "check.yml",
        &format!(
            "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
            d.join("restored").display()
        ),
    );
    for row in ["r000000", "r003999"] {
        ok(&Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .args([
                "--config",
                &restored,
                "kvs",
                "get",
                "--table",
                "bank.accounts",
                "--row",
                row,
            ])
            .output()
            .unwrap());
    }
    // Without its parent, the incremental backup fails verification and is not restored.
    std::fs::rename(&full, d.join("moved")).unwrap();
    fails(
        &env.run(&["backup", "verify", "--dir", path_of(&incremental)]),
        "it is incremental on",
    );
    fails(&restore_into("restored2"), "it is incremental on");
    assert!(!d.join("restored2").exists(), "nothing restored");
}

fn path_of(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn an_encrypted_backup_needs_its_key_and_detects_any_change() {
    let env = Env::new();
    let d = env.dir.path();
    env.with_manager(|m, t| commit(m, t, "secret"));
    let key = write(d, "key", &format!("{}\n", "ab".repeat(32)));
    let wrong = write(d, "wrong", &format!("{}\n", "cd".repeat(32)));
    let backup = d.join("backup");
    let taken = ok(&env.run(&[
        "backup",
        "--dir",
        path_of(&backup),
        "--compress",
        "--encrypt-key-file",
        &key,
    ]));
    assert!(taken.contains("backup of rocksdb complete"), "{taken}");
    let manifest: serde_json::Value =
        json(&std::fs::read_to_string(backup.join("manifest.json")).unwrap());
    assert_eq!(
        manifest["encryption"]["algorithm"],
        "xchacha20poly1305-chunked-64k"
    );
    let stored: Vec<String> = manifest["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap().to_owned())
        .collect();
    assert!(stored.iter().all(|p| p.ends_with(".zst.enc")), "{stored:?}");
    let manifest_text = std::fs::read_to_string(backup.join("manifest.json")).unwrap();
    assert!(
        !manifest_text.contains(&"ab".repeat(32)),
        "the key is never stored"
    );
    let verify = |extra: &[&str]| {
        env.run(
            &[
                &["backup", "verify", "--deep", "--dir", path_of(&backup)],
                extra,
            ]
            .concat(),
        )
    };
    fails(&verify(&[]), "it is encrypted (key fingerprint");
    fails(
        &verify(&["--encrypt-key-file", &wrong]),
        "is not the one it was encrypted with",
    );
    assert!(ok(&verify(&["--encrypt-key-file", &key])).contains("intact"));
    let restore_config = |name: &str| {
        write(
            d,
            &format!("{name}.yml"),
            &format!(
                "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
                d.join(name).display()
            ),
        )
    };
    let restore = |name: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .args([
                "--config",
                &restore_config(name),
                "restore",
                "--dir",
                path_of(&backup),
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    fails(&restore("nokey", &[]), "it is encrypted");
    fails(
        &restore("wrongkey", &["--encrypt-key-file", &wrong]),
        "not the one",
    );
    assert!(
        !d.join("nokey").exists() && !d.join("wrongkey").exists(),
        "nothing restored"
    );
    ok(&restore("restored", &["--encrypt-key-file", &key]));
    let got = ok(&Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .args(["--config", &restore_config("restored")])
        .args(["kvs", "get", "--table", "bank.accounts", "--row", "secret"])
        .output()
        .unwrap());
    assert!(got.starts_with("secret\tbalance\t100"), "{got}");
    // One flipped ciphertext byte (with the manifest's checksum updated to match, as an
    // attacker could) fails authentication; a truncated file fails too.
    let victim = backup.join("store").join(&stored[0]);
    let original = std::fs::read(&victim).unwrap();
    let mut flipped = original.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    std::fs::write(&victim, &flipped).unwrap();
    let forged = manifest_text.replace(
        manifest["files"][0]["sha256"].as_str().unwrap(),
        &sha256_hex(&flipped),
    );
    std::fs::write(backup.join("manifest.json"), &forged).unwrap();
    fails(
        &verify(&["--encrypt-key-file", &key]),
        "fails authentication",
    );
    fails(
        &restore("tampered", &["--encrypt-key-file", &key]),
        "fails authentication",
    );
    std::fs::write(&victim, &original[..original.len() - 1]).unwrap();
    std::fs::write(backup.join("manifest.json"), &manifest_text).unwrap();
    fails(
        &verify(&["--encrypt-key-file", &key]),
        "does not match its checksum",
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Polls until `found` returns true (a killed step has made progress), up to a minute.
fn wait_for(what: &str, found: impl Fn() -> bool) {
    let started = std::time::Instant::now();
    while !found() {
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "never saw {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn journal_has_sst(journal: &Path) -> bool {
    std::fs::read_to_string(journal).is_ok_and(|text| text.contains(".sst"))
}

#[test]
fn a_backup_and_a_restore_killed_midway_resume_when_run_again() {
    let env = Env::new();
    let d = env.dir.path();
    // About 2 MB that compresses poorly, in two SST files: a quarter compacted into level 1, the
    // rest flushed into level 0 when the backup opens the store. Files are stored on every core,
    // so the small one is journaled while the big one is still being stored. Fewer than four
    // level-0 files, so no background compaction can merge them meanwhile.
    {
        use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
        let kvs =
            std::sync::Arc::new(RocksDbKvs::open(env.data(), &RocksDbConfig::default()).unwrap());
        let m = TransactionManager::embedded(kvs.clone(), TransactionConfig::default()).unwrap();
        let t = TableRef::new("bank", "accounts").unwrap();
        m.create_table(&t, TableMetadata::default()).unwrap();
        let fill = |rows: std::ops::Range<u32>| {
            let mut state = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(rows.start);
            m.run(|txn| {
                for i in rows.clone() {
                    let value = ortelius_kvs::testing::noise(&mut state, 128);
                    txn.put(&t, &Cell::new(format!("r{i:04}"), "v")?, value)?;
                }
                Ok(())
            })
            .unwrap()
        };
        fill(0..500);
        kvs.compact();
        fill(500..2000);
    }
    let backup_dir = d.join("backup");
    let backup = [
        "backup",
        "--dir",
        path_of(&backup_dir),
        "--compress",
        "--rate-limit",
        "200K",
    ];
    // kill -9 once the small SST file is stored: the big one then takes seconds more at this
    // rate.
    let mut child = Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .arg("--config")
        .arg(&env.config)
        .args(backup)
        .spawn()
        .unwrap();
    wait_for("an SST file stored", || {
        journal_has_sst(&backup_dir.join("STORED-FILES.journal"))
    });
    child.kill().unwrap();
    child.wait().unwrap();
    fails(
        &env.run(&["backup", "verify", "--dir", path_of(&backup_dir)]),
        "incomplete backup",
    );
    let lock = json(&ok(&env.run(&["--json", "backup-lock", "--status"])));
    assert!(
        lock["status"]["held"].is_null(),
        "the lock was released before the files were stored: {lock}"
    );
    let resumed = json(&ok(&env.run(&[&["--json"], &backup[..4]].concat())));
    let (resumed_bytes, total) = (
        resumed["resumed_bytes"].as_u64().unwrap(),
        resumed["bytes"].as_u64().unwrap(),
    );
    assert!(
        resumed_bytes > 400_000 && resumed_bytes < total,
        "the first SST file was kept, the rest stored: {resumed}"
    );
    ok(&env.run(&["backup", "verify", "--dir", path_of(&backup_dir), "--deep"]));

    // The restore, killed once an SST file is assembled (decompressed), then run again.
    let restored = d.join("restored");
    let config = write(
        d,
        "restored.yml",
        &format!(
            "atlasdb:\n  keyValueService: {{type: rocksdb, dataDir: {}}}\n",
            restored.display()
        ),
    );
    let scratch = d.join("tmp");
    std::fs::create_dir_all(&scratch).unwrap();
    let restore = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ortelius"));
        command
            .env("TMPDIR", &scratch)
            .args(["--config", &config])
            .args(extra)
            .args(["restore", "--dir", path_of(&backup_dir)])
            .args(["--rate-limit", "200K"]);
        command
    };
    let mut child = restore(&[]).spawn().unwrap();
    let assembled = || {
        std::fs::read_dir(&scratch)
            .unwrap()
            .filter_map(Result::ok)
            .any(|e| journal_has_sst(&e.path().join("ASSEMBLED.journal")))
    };
    wait_for("an SST file assembled", assembled);
    child.kill().unwrap();
    child.wait().unwrap();
    let report = json(&ok(&restore(&["--json"]).output().unwrap()));
    assert!(
        report["resumed_bytes"].as_u64().unwrap() > 400_000,
        "the assembled SST file was kept: {report}"
    );
    assert_eq!(
        std::fs::read_dir(&scratch).unwrap().count(),
        0,
        "the scratch directory is removed once loaded"
    );
    let got = ok(&Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .args(["--config", &config])
        .args(["kvs", "get", "--table", "bank.accounts", "--row", "r0999"])
        .output()
        .unwrap());
    assert!(got.contains("r0999"), "{got}");
}
