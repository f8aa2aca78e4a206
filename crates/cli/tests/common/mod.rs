//! Helpers of the end-to-end tests: the `ortelius` binary, the bank workload as a separate
//! process, and the checks of a restored store.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ortelius_backends::StoreConfig;
use ortelius_kvs::{Cell, TableRef};
use ortelius_management::ManagementClient;
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

/// A child process killed (SIGKILL) when dropped.
pub struct Serving(pub Child);
impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn ortelius(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ortelius"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn free_address() -> String {
    format!("127.0.0.1:{}", ortelius_test_servers::free_port())
}

pub fn wait_live(address: &str) {
    let client = ManagementClient::new(address, Some("t0ken".into()));
    let deadline = Instant::now() + Duration::from_secs(60);
    while !client.is_live() {
        assert!(
            Instant::now() < deadline,
            "the live process did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn acked(file: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete.lines().map(str::to_owned).collect()
}

/// Starts `ortelius workload bank` with `config` (which names a management address) as a
/// separate process, and waits until it answers and has acknowledged some transfers.
pub fn start_bank_workload(config: &Path, address: &str, acks: &Path) -> Serving {
    let workload = Serving(
        Command::new(env!("CARGO_BIN_EXE_ortelius"))
            .arg("--config")
            .arg(config)
            .args([
                "workload",
                "bank",
                "--accounts",
                "20",
                "--threads",
                "4",
                "--duration",
                "900s",
                "--ack-file",
            ])
            .arg(acks)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_live(address);
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked(acks).len() < 50 {
        assert!(Instant::now() < deadline, "the workload made no progress");
        std::thread::sleep(Duration::from_millis(50));
    }
    workload
}

/// A transaction manager on a store (directly, with its own timestamps).
pub fn manager(store: &StoreConfig) -> TransactionManager {
    let kvs = ortelius_backends::open(store).unwrap().kvs;
    let m = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    m.create_table(
        &TableRef::new("bank", "accounts").unwrap(),
        TableMetadata::default(),
    )
    .unwrap();
    m
}

/// Checks a restored store: every transfer acknowledged before B is present, nothing
/// committed at or after B is visible, and new timestamps start above F.
pub fn check_restored(store: &StoreConfig, acked_before_b: &[String], b: i64, f: i64) {
    let m = manager(store);
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

/// Parses a timestamp printed by `ortelius timestamp fetch`.
pub fn timestamp(out: &Output) -> i64 {
    ok(out).trim().parse().unwrap()
}

pub fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Writes a config file `dir/name` for the store block `store_yaml` (a YAML flow mapping),
/// with the management API at `management` (token `t0ken`) when given.
pub fn write_config(
    dir: &Path,
    name: &str,
    store_yaml: &str,
    management: Option<&str>,
) -> std::path::PathBuf {
    let file = dir.join(name);
    let management = management
        .map(|a| format!("  management: {{address: '{a}', token: t0ken}}\n"))
        .unwrap_or_default();
    std::fs::write(
        &file,
        format!("atlasdb:\n  keyValueService: {store_yaml}\n{management}"),
    )
    .unwrap();
    file
}
