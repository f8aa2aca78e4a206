//! The shared timelock server as real processes (`ortelius timelock serve`): one server killed
//! and restarted; three servers over a three-member etcd cluster losing their leader to
//! `kill -9` and to a pause past its lease, and losing an etcd member; and four client
//! processes sharing one PostgreSQL store through one server, their merged histories checked
//! for snapshot-isolation anomalies.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::io::{BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ortelius_backends::StoreConfig;
use ortelius_kvs::{Cell, RangeRequest, TableRef};
use ortelius_test_servers::{
    free_port, on_exit, postgres as pg, time_limit, EtcdCluster, Postgres,
};
use ortelius_timelock::wire::{read_frame, ErrorCode, Request, Response};
use ortelius_timelock::TimestampService;
use ortelius_timelock_client::{TimelockClient, TimelockConfig};
use ortelius_txn::suite::concurrency::{check_history, history_table, record_transactions, Record};
use ortelius_txn::{
    ConflictHandler, RetryClass, TableMetadata, TransactionConfig, TransactionManager, TxnError,
};

const ADMIN: &str = "adm1n";

/// A timelock server process; killed when dropped.
struct Server {
    child: Option<Child>,
    address: String,
    args: Vec<String>,
}

impl Server {
    /// `etcd`: the cluster's endpoints and this timelock cluster's key prefix there.
    fn start(dir: &Path, etcd: Option<(&[String], &str)>) -> Server {
        std::fs::create_dir_all(dir).unwrap();
        let admin = dir.join("admin-token");
        std::fs::write(&admin, ADMIN).unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let mut args: Vec<String> = vec![
            "timelock".into(),
            "serve".into(),
            "--listen".into(),
            address.clone(),
            "--data-dir".into(),
            dir.join("data").display().to_string(),
            "--admin-token-file".into(),
            admin.display().to_string(),
            "--leader-lease".into(),
            "3s".into(),
        ];
        if let Some((endpoints, prefix)) = etcd {
            args.extend([
                "--etcd".into(),
                endpoints.join(","),
                "--etcd-prefix".into(),
                prefix.to_owned(),
            ]);
        }
        let mut server = Server {
            child: None,
            address,
            args,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        self.child = Some(
            Command::new(env!("CARGO_BIN_EXE_ortelius"))
                .args(&self.args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let pid = self.child.as_ref().map_or(0, Child::id);
        on_exit(&format!("kill -9 {pid} 2>/dev/null"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&self.address).is_err() {
            assert!(
                Instant::now() < deadline,
                "timelock server {} did not come up",
                self.address
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            Command::new("kill")
                .args([signal, &c.id().to_string()])
                .status()
                .unwrap();
        }
    }

    /// Asks this server alone (no failover) for one timestamp.
    fn ask_directly(&self) -> Response {
        let stream = TcpStream::connect(&self.address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(
                &Request::Hello {
                    token: String::new(),
                }
                .encode(1),
            )
            .unwrap();
        let _hello = Response::decode(&read_frame(&mut reader).unwrap().unwrap()).unwrap();
        writer
            .write_all(&Request::FreshTimestamps { count: 1 }.encode(2))
            .unwrap();
        Response::decode(&read_frame(&mut reader).unwrap().unwrap())
            .unwrap()
            .1
    }

    fn leads(&self) -> bool {
        let stream = match TcpStream::connect(&self.address) {
            Ok(s) => s,
            Err(_) => return false,
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut writer = stream.try_clone().unwrap();
        let mut reader = BufReader::new(stream);
        writer
            .write_all(
                &Request::Hello {
                    token: String::new(),
                }
                .encode(1),
            )
            .unwrap();
        writer.write_all(&Request::Leader.encode(2)).unwrap();
        let _ = read_frame(&mut reader);
        match read_frame(&mut reader)
            .ok()
            .flatten()
            .and_then(|b| Response::decode(&b).ok())
        {
            Some((_, Response::Leader { leader, .. })) => {
                leader.as_deref() == Some(self.address.as_str())
            }
            _ => false,
        }
    }
}

/// The index of the server that leads, waiting up to 20 s for one (an election may be under
/// way, e.g. while etcd itself changes leader).
fn leader_of(servers: &[Server]) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(i) = servers.iter().position(|s| s.child.is_some() && s.leads()) {
            return i;
        }
        assert!(Instant::now() < deadline, "no timelock server leads");
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.signal("-CONT");
        self.kill();
    }
}

fn client(servers: &[&Server], admin: bool, timeout_secs: u64) -> TimelockClient {
    TimelockClient::new(TimelockConfig {
        admin_token: admin.then(|| ADMIN.to_owned()),
        request_timeout_secs: timeout_secs,
        connect_timeout_secs: 1,
        ..TimelockConfig::new(servers.iter().map(|s| s.address.clone()).collect())
    })
    .unwrap()
}

#[test]
fn a_single_server_killed_and_restarted_hands_out_only_larger_timestamps() {
    let _limit = time_limit(Duration::from_secs(120), "the restart test");
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), None);
    let c = client(&[&server], false, 10);
    let mut last = 0;
    for _ in 0..200 {
        last = c.fresh_timestamps(500).unwrap().last;
    }
    server.kill(); // kill -9
    server.spawn();
    let after = c.fresh_timestamp().unwrap();
    assert!(after > last, "{after} after a restart, {last} before");
}

/// (request sent, answer received, timestamp).
type Observation = (Instant, Instant, i64);

/// Checks that no timestamp is at or below one whose answer arrived before it was asked for.
fn check_monotonic(observations: &mut [Observation]) {
    observations.sort_by_key(|o| o.1);
    let mut by_start: Vec<&Observation> = observations.iter().collect();
    by_start.sort_by_key(|o| o.0);
    let (mut finished, mut max_before) = (0, i64::MIN);
    for o in by_start {
        while finished < observations.len() && observations[finished].1 < o.0 {
            max_before = max_before.max(observations[finished].2);
            finished += 1;
        }
        assert!(
            o.2 > max_before,
            "timestamp {} was asked for after {max_before} had been returned",
            o.2
        );
    }
}

fn postgres_store(prefix: &str) -> (StoreConfig, String) {
    let server = Postgres::shared();
    let schema = format!("{prefix}_{}_{}", std::process::id(), free_port());
    let dir = std::env::temp_dir().join(format!("ortelius-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let password = dir.join("pg-password");
    std::fs::write(&password, pg::PASSWORD).unwrap();
    let yaml = format!(
        "{{type: postgres, host: {}, port: {}, database: {}, user: {}, passwordFile: {}, schema: {schema}}}",
        server.host,
        server.port,
        pg::DATABASE,
        pg::USER,
        password.display()
    );
    (yaml_serde::from_str(&yaml).unwrap(), yaml)
}

fn remote_manager(store: &StoreConfig, c: &TimelockClient) -> TransactionManager {
    let kvs = ortelius_backends::open(store).unwrap().kvs;
    c.attach(kvs.clone()).unwrap();
    TransactionManager::new(
        kvs,
        Arc::new(c.clone()),
        Arc::new(c.clone()),
        TransactionConfig {
            lock_timeout: Duration::from_secs(5),
            max_retries: 50,
            ..TransactionConfig::default()
        },
    )
    .unwrap()
}

const ACCOUNTS: u64 = 10;

fn accounts() -> TableRef {
    TableRef::new("bank", "accounts").unwrap()
}

fn account(i: u64) -> Cell {
    Cell::new(format!("acct{i}"), "balance").unwrap()
}

fn init_bank(m: &TransactionManager) {
    let meta = TableMetadata {
        conflict_handler: ConflictHandler::RetryOnWriteWrite,
        ..TableMetadata::default()
    };
    m.create_table(&accounts(), meta).unwrap();
    m.create_table(&TableRef::new("bank", "transfers").unwrap(), meta)
        .unwrap();
    if m.run_read_only(|t| t.get_one(&accounts(), &account(0)))
        .unwrap()
        .is_none()
    {
        m.run(|txn| {
            for i in 0..ACCOUNTS {
                txn.put(&accounts(), &account(i), 100u64.to_be_bytes())?;
            }
            Ok(())
        })
        .unwrap();
    }
}

fn transfer(m: &TransactionManager, n: u64, id: &str) -> Result<(), TxnError> {
    let (from, to) = (n % ACCOUNTS, (n / ACCOUNTS + n + 1) % ACCOUNTS);
    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
    let balance = |txn: &ortelius_txn::Transaction, i| -> Result<u64, TxnError> {
        Ok(txn
            .get_one(&accounts(), &account(i))?
            .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap())))
    };
    m.run(|txn| {
        let (a, b) = (balance(txn, from)?, balance(txn, to)?);
        let moved = a.min(1 + n % 7);
        txn.put(&accounts(), &account(from), (a - moved).to_be_bytes())?;
        txn.put(&accounts(), &account(to), (b + moved).to_be_bytes())?;
        txn.put(
            &TableRef::new("bank", "transfers").unwrap(),
            &Cell::new(id, "t").unwrap(),
            moved.to_be_bytes(),
        )
    })
}

/// Money conserved; the transfer ids visible.
fn audit(m: &TransactionManager) -> BTreeSet<String> {
    m.run_read_only(|txn| {
        let mut total = 0;
        for i in 0..ACCOUNTS {
            total += txn
                .get_one(&accounts(), &account(i))?
                .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap()));
        }
        assert_eq!(total, ACCOUNTS * 100, "money is conserved");
        let mut ids = BTreeSet::new();
        for row in txn.get_range(
            &TableRef::new("bank", "transfers").unwrap(),
            &RangeRequest::all(),
        )? {
            ids.insert(String::from_utf8(row?.row).unwrap());
        }
        Ok(ids)
    })
    .unwrap()
}

#[test]
fn three_servers_over_etcd_fail_over_without_going_back_in_time_or_losing_commits() {
    let _limit = time_limit(Duration::from_secs(300), "the timelock failover test");
    let etcd = EtcdCluster::start(3, &[]);
    let dir = tempfile::tempdir().unwrap();
    let endpoints = etcd.endpoints();
    let prefix = format!("/timelock-{}", std::process::id());
    let mut servers: Vec<Server> = (0..3)
        .map(|i| {
            Server::start(
                &dir.path().join(format!("s{i}")),
                Some((&endpoints, &prefix)),
            )
        })
        .collect();
    let refs: Vec<&Server> = servers.iter().collect();
    let c = client(&refs, true, 30);
    c.fresh_timestamp().unwrap(); // a leader was elected
    drop(refs);
    let (store, _) = postgres_store("tlha");
    let m = remote_manager(&store, &c);
    init_bank(&m);

    let stop = AtomicBool::new(false);
    let observations = Mutex::new(Vec::<Observation>::new());
    let acked = Mutex::new(BTreeSet::new());
    let unknown = Mutex::new(BTreeSet::new());
    let failures = Mutex::new(Vec::<RetryClass>::new());
    let leader_killed_at = Mutex::new(None::<Instant>);
    std::thread::scope(|s| {
        for w in 0..3 {
            let (c, stop, observations) = (&c, &stop, &observations);
            s.spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let asked = Instant::now();
                    if let Ok(ts) = c.fresh_timestamp() {
                        observations
                            .lock()
                            .unwrap()
                            .push((asked, Instant::now(), ts));
                    }
                    std::thread::sleep(Duration::from_millis(2 + w));
                }
            });
        }
        for w in 0..2 {
            let (m, stop, acked, unknown, failures) = (&m, &stop, &acked, &unknown, &failures);
            s.spawn(move || {
                let mut n = w;
                while !stop.load(Ordering::SeqCst) {
                    n += 2;
                    let id = format!("t{w}-{n}");
                    match transfer(m, n, &id) {
                        Ok(()) => {
                            acked.lock().unwrap().insert(id);
                        }
                        Err(e) => {
                            if e.retry_class() == RetryClass::CommitOutcomeUnknown {
                                unknown.lock().unwrap().insert(id);
                            }
                            failures.lock().unwrap().push(e.retry_class());
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            });
        }
        // The faults; the workers stop even if a step panics, so the panic is reported.
        let faults = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::thread::sleep(Duration::from_secs(2));
            // kill -9 the leader mid-workload.
            let leader = leader_of(&servers);
            eprintln!(
                "killing leader {leader} after {} timestamps",
                observations.lock().unwrap().len()
            );
            servers[leader].kill();
            *leader_killed_at.lock().unwrap() = Some(Instant::now());
            std::thread::sleep(Duration::from_secs(8));
            eprintln!(
                "{} timestamps; losing an etcd member",
                observations.lock().unwrap().len()
            );
            // Lose an etcd member: the rest keep a quorum.
            etcd.kill(2);
            std::thread::sleep(Duration::from_secs(2));
            etcd.restart(2);
            // Pause the (new) leader past its lease, then let it wake.
            let paused = leader_of(&servers);
            eprintln!("pausing leader {paused} past its lease");
            servers[paused].signal("-STOP");
            std::thread::sleep(Duration::from_secs(10));
            servers[paused].signal("-CONT");
            match servers[paused].ask_directly() {
                Response::Error {
                    code: ErrorCode::NotLeader | ErrorCode::Unavailable,
                    ..
                } => {}
                Response::Range { first, .. } => {
                    panic!("the paused leader handed out {first} after waking past its lease")
                }
                other => panic!("unexpected answer {other:?}"),
            }
            std::thread::sleep(Duration::from_secs(2));
            eprintln!(
                "{} timestamps; stopping",
                observations.lock().unwrap().len()
            );
        }));
        stop.store(true, Ordering::SeqCst);
        if let Err(panic) = faults {
            std::panic::resume_unwind(panic);
        }
    });
    let killed = leader_killed_at.lock().unwrap().unwrap();
    let mut observations = observations.into_inner().unwrap();
    let first_after = observations
        .iter()
        .filter(|o| o.0 > killed)
        .map(|o| o.1)
        .min()
        .expect("timestamps were served after the failover");
    eprintln!(
        "a new leader served {:?} after the old one was killed",
        first_after.duration_since(killed)
    );
    assert!(
        first_after.duration_since(killed) < Duration::from_secs(10),
        "a new leader served after {:?}",
        first_after.duration_since(killed)
    );
    assert!(observations.len() > 100);
    check_monotonic(&mut observations);
    let visible = audit(&m);
    let (acked, unknown) = (acked.into_inner().unwrap(), unknown.into_inner().unwrap());
    let lost: Vec<_> = acked.difference(&visible).collect();
    assert!(lost.is_empty(), "acknowledged transfers lost: {lost:?}");
    assert!(visible
        .iter()
        .all(|id| acked.contains(id) || unknown.contains(id)));
    assert!(
        failures
            .into_inner()
            .unwrap()
            .iter()
            .all(|c| *c != RetryClass::NotRetriable),
        "in-flight transactions failed retriably or with an unknown outcome, never otherwise"
    );
    assert!(acked.len() > 10);
    drop(servers);
}

/// The child of `four_client_processes_share_a_store_through_one_server`.
#[test]
#[ignore = "run by its parent test as a child process"]
fn timelock_client_child() {
    let Ok(yaml) = std::env::var("ORTELIUS_STORE") else {
        return;
    };
    let index: u64 = std::env::var("ORTELIUS_CHILD").unwrap().parse().unwrap();
    let out = PathBuf::from(std::env::var("ORTELIUS_OUT").unwrap());
    let store: StoreConfig = yaml_serde::from_str(&yaml).unwrap();
    let c = TimelockClient::new(TimelockConfig::new(vec![std::env::var(
        "ORTELIUS_TIMELOCK",
    )
    .unwrap()]))
    .unwrap();
    let m = remote_manager(&store, &c);
    let history = std::thread::scope(|s| {
        let bank = s.spawn(|| {
            let mut acks = Vec::new();
            for n in 0..60 {
                let id = format!("p{index}-{n}");
                transfer(&m, n * 4 + index, &id).unwrap();
                acks.push(id);
            }
            acks
        });
        let t = history_table(&m);
        let history = record_transactions(&m, &t, 1 + index * 1_000_000, 60, index + 7);
        std::fs::write(out.with_extension("acks"), bank.join().unwrap().join("\n")).unwrap();
        history
    });
    let lines: Vec<String> = history.iter().map(Record::to_line).collect();
    std::fs::write(out.with_extension("history"), lines.join("\n")).unwrap();
}

#[test]
fn four_client_processes_share_a_store_through_one_server() {
    let _limit = time_limit(Duration::from_secs(300), "the shared-server test");
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("tl"), None);
    let (store, yaml) = postgres_store("tlshare");
    let c = client(&[&server], false, 10);
    let m = remote_manager(&store, &c);
    init_bank(&m);
    history_table(&m);
    let children: Vec<Child> = (0..4)
        .map(|i| {
            Command::new(std::env::current_exe().unwrap())
                .args([
                    "--ignored",
                    "--exact",
                    "timelock_client_child",
                    "--nocapture",
                ])
                .env("ORTELIUS_STORE", &yaml)
                .env("ORTELIUS_CHILD", i.to_string())
                .env("ORTELIUS_OUT", dir.path().join(format!("child{i}")))
                .env("ORTELIUS_TIMELOCK", &server.address)
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut child in children {
        assert!(child.wait().unwrap().success(), "a client process failed");
    }
    let mut history = Vec::new();
    let mut acks = BTreeSet::new();
    for i in 0..4 {
        let base = dir.path().join(format!("child{i}"));
        for line in std::fs::read_to_string(base.with_extension("history"))
            .unwrap()
            .lines()
        {
            history.push(Record::parse(line).unwrap());
        }
        acks.extend(
            std::fs::read_to_string(base.with_extension("acks"))
                .unwrap()
                .lines()
                .map(str::to_owned),
        );
    }
    assert_eq!(history.len(), 240);
    let anomalies = check_history(&history);
    assert!(anomalies.is_empty(), "{anomalies:?}");
    let visible = audit(&m);
    assert!(
        acks.is_subset(&visible),
        "every acknowledged transfer is present"
    );
    // The store belongs to the timelock server: no process may allocate on its own now.
    let kvs = ortelius_backends::open(&store).unwrap().kvs;
    let err = TransactionManager::embedded(kvs, TransactionConfig::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("timelock"), "{err}");
}
