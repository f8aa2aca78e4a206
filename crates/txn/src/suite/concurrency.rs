//! Real-thread concurrency on every backend: invariants of concurrent workloads, and recorded
//! histories checked for the anomalies snapshot isolation forbids.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::common::*;
use crate::{ConflictHandler, Isolation, TransactionManager, TxnError};
use ortelius_kvs::{RangeRequest, TableRef};

const THREADS: usize = 8;

/// A tiny deterministic PRNG per thread.
struct Rng(u64);
impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

pub fn bank_transfers_conserve_money(store: &Store) {
    let m = manager(store);
    let t = table(&m, "accounts", ConflictHandler::RetryOnWriteWrite);
    const ACCOUNTS: u64 = 10;
    const INITIAL: u64 = 1000;
    m.run(|txn| {
        for a in 0..ACCOUNTS {
            txn.put(
                &t,
                &cell(&format!("acct{a}"), "balance"),
                INITIAL.to_be_bytes(),
            )?;
        }
        Ok(())
    })
    .unwrap();
    let stop = AtomicBool::new(false);
    let audits = AtomicU64::new(0);
    std::thread::scope(|s| {
        // A read-only auditor sums every balance with a range scan while transfers run.
        s.spawn(|| {
            while !stop.load(Ordering::SeqCst) {
                let total: u64 = m
                    .run_read_only(|txn| {
                        let mut total = 0;
                        for row in txn.get_range(&t, &RangeRequest::all())? {
                            for v in row?.columns.values() {
                                total += u64::from_be_bytes(v.as_slice().try_into().unwrap());
                            }
                        }
                        Ok(total)
                    })
                    .unwrap();
                assert_eq!(
                    total,
                    ACCOUNTS * INITIAL,
                    "an audit saw money created or destroyed"
                );
                audits.fetch_add(1, Ordering::SeqCst);
            }
        });
        let workers: Vec<_> = (0..THREADS)
            .map(|i| {
                let (m, t) = (&m, &t);
                s.spawn(move || {
                    let mut rng = Rng(i as u64 * 7919 + 17);
                    for _ in 0..40 {
                        let from = rng.next(ACCOUNTS);
                        let to = (from + 1 + rng.next(ACCOUNTS - 1)) % ACCOUNTS;
                        let amount = 1 + rng.next(50);
                        m.run(|txn| {
                            let (fc, tc) = (
                                cell(&format!("acct{from}"), "balance"),
                                cell(&format!("acct{to}"), "balance"),
                            );
                            let fb = read_u64(txn, t, &fc)?.unwrap();
                            let tb = read_u64(txn, t, &tc)?.unwrap();
                            if fb < amount {
                                return Ok(());
                            }
                            txn.put(t, &fc, (fb - amount).to_be_bytes())?;
                            txn.put(t, &tc, (tb + amount).to_be_bytes())
                        })
                        .unwrap();
                    }
                })
            })
            .collect();
        for w in workers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::SeqCst);
    });
    assert!(audits.load(Ordering::SeqCst) > 0);
    let ro = m.begin_read_only().unwrap();
    let balances: Vec<u64> = (0..ACCOUNTS)
        .map(|a| {
            read_u64(&ro, &t, &cell(&format!("acct{a}"), "balance"))
                .unwrap()
                .unwrap()
        })
        .collect();
    assert_eq!(balances.iter().sum::<u64>(), ACCOUNTS * INITIAL);
}

pub fn concurrent_increments_lose_no_update(store: &Store) {
    let m = manager(store);
    let t = table(&m, "counter", ConflictHandler::RetryOnWriteWriteCell);
    const PER_THREAD: u64 = 25;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                for _ in 0..PER_THREAD {
                    m.run(|txn| {
                        let v = read_u64(txn, &t, &cell("c", "n"))?.unwrap_or(0);
                        txn.put(&t, &cell("c", "n"), (v + 1).to_be_bytes())
                    })
                    .unwrap();
                }
            });
        }
    });
    let ro = m.begin_read_only().unwrap();
    assert_eq!(
        read_u64(&ro, &t, &cell("c", "n")).unwrap(),
        Some(THREADS as u64 * PER_THREAD)
    );
}

// ---------------------------------------------------------------------------------------------
// History checking. Every transaction reads a few keys and then writes a few with values that
// name the writer, so each read can be traced to the transaction that wrote it.

/// One transaction of a recorded history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub id: u64,
    pub start: i64,
    pub commit: Option<i64>,
    /// key -> id of the writer whose value was read (0 = initial value).
    pub reads: BTreeMap<u64, u64>,
    /// Keys written (each twice: the first value is intermediate).
    pub writes: BTreeSet<u64>,
}

impl Record {
    /// One line of text: `id start commit|- k=w,k=w writes,...` (histories of several
    /// processes are merged from files).
    pub fn to_line(&self) -> String {
        let reads: Vec<String> = self.reads.iter().map(|(k, w)| format!("{k}={w}")).collect();
        let writes: Vec<String> = self.writes.iter().map(u64::to_string).collect();
        format!(
            "{} {} {} {} {}",
            self.id,
            self.start,
            self.commit.map_or("-".to_owned(), |c| c.to_string()),
            if reads.is_empty() {
                "-".to_owned()
            } else {
                reads.join(",")
            },
            if writes.is_empty() {
                "-".to_owned()
            } else {
                writes.join(",")
            },
        )
    }

    pub fn parse(line: &str) -> Option<Self> {
        let mut parts = line.split(' ');
        let id = parts.next()?.parse().ok()?;
        let start = parts.next()?.parse().ok()?;
        let commit = match parts.next()? {
            "-" => None,
            c => Some(c.parse().ok()?),
        };
        let reads = match parts.next()? {
            "-" => BTreeMap::new(),
            r => r
                .split(',')
                .map(|kw| {
                    let (k, w) = kw.split_once('=')?;
                    Some((k.parse().ok()?, w.parse().ok()?))
                })
                .collect::<Option<_>>()?,
        };
        let writes = match parts.next()? {
            "-" => BTreeSet::new(),
            w => w
                .split(',')
                .map(|k| k.parse().ok())
                .collect::<Option<_>>()?,
        };
        Some(Self {
            id,
            start,
            commit,
            reads,
            writes,
        })
    }
}

/// Runs `count` recorded transactions with ids from `first_id` (unique across every process
/// sharing the table) on the history table, and returns their records. Transactions that fail
/// with a conflict are recorded as not committed.
pub fn record_transactions(
    m: &TransactionManager,
    t: &TableRef,
    first_id: u64,
    count: u64,
    seed: u64,
) -> Vec<Record> {
    let log = Mutex::new(Vec::new());
    let mut rng = Rng(seed | 1);
    for id in first_id..first_id + count {
        run_recorded(m, t, id, &mut rng, &log);
    }
    log.into_inner().unwrap()
}

/// The table recorded transactions use.
pub fn history_table(m: &TransactionManager) -> TableRef {
    table(m, "history", ConflictHandler::RetryOnWriteWriteCell)
}

const KEYS: u64 = 6;

fn encode(writer: u64, final_write: bool) -> Vec<u8> {
    let mut v = writer.to_be_bytes().to_vec();
    v.push(u8::from(final_write));
    v
}

fn decode(v: &[u8]) -> (u64, bool) {
    (u64::from_be_bytes(v[..8].try_into().unwrap()), v[8] == 1)
}

fn run_recorded(
    m: &TransactionManager,
    t: &TableRef,
    id: u64,
    rng: &mut Rng,
    log: &Mutex<Vec<Record>>,
) {
    let txn = m.begin(Isolation::Snapshot).unwrap();
    let mut record = Record {
        id,
        start: txn.start_ts(),
        commit: None,
        reads: BTreeMap::new(),
        writes: BTreeSet::new(),
    };
    for _ in 0..1 + rng.next(3) {
        let k = rng.next(KEYS);
        let (writer, final_write) = match txn.get_one(t, &cell(&format!("k{k}"), "v")).unwrap() {
            Some(v) => decode(&v),
            None => (0, true),
        };
        assert!(
            final_write,
            "G1b: read an intermediate value of transaction {writer}"
        );
        record.reads.entry(k).or_insert(writer);
    }
    for _ in 0..1 + rng.next(2) {
        let k = rng.next(KEYS);
        let c = cell(&format!("k{k}"), "v");
        txn.put(t, &c, encode(id, false)).unwrap();
        txn.put(t, &c, encode(id, true)).unwrap();
        record.writes.insert(k);
    }
    match txn.commit() {
        Ok(()) => {
            // The commit timestamp lies between the start and any later fresh timestamp; the
            // transactions table tells it exactly.
            let status = m.transactions_table().load(&[record.start]).unwrap();
            if let Some(crate::TxnStatus::Committed(c)) = status.get(&record.start) {
                record.commit = Some(*c);
            }
        }
        Err(TxnError::WriteWriteConflict { .. }) => {}
        Err(e) => panic!("unexpected commit failure: {e}"),
    }
    log.lock().unwrap().push(record);
}

/// Checks a history against snapshot isolation; returns the anomalies found.
pub fn check_history(history: &[Record]) -> Vec<String> {
    let mut anomalies = Vec::new();
    let by_id: HashMap<u64, &Record> = history.iter().map(|r| (r.id, r)).collect();
    let committed: Vec<&Record> = history.iter().filter(|r| r.commit.is_some()).collect();
    // Committed writers of each key in commit order (the version order under SI).
    let mut versions: BTreeMap<u64, Vec<(i64, u64)>> = BTreeMap::new();
    for r in &committed {
        for k in &r.writes {
            versions
                .entry(*k)
                .or_default()
                .push((r.commit.unwrap_or_default(), r.id));
        }
    }
    for v in versions.values_mut() {
        v.sort();
    }
    for r in &committed {
        for (k, writer) in &r.reads {
            if *writer == 0 {
                // Initial value: no committed writer of k may precede our start.
                if let Some((c, w)) = versions
                    .get(k)
                    .and_then(|v| v.iter().find(|(c, _)| *c < r.start))
                {
                    anomalies.push(format!("read skew: txn {} read initial k{k} but txn {w} committed it at {c} < start {}", r.id, r.start));
                }
                continue;
            }
            let Some(w) = by_id.get(writer) else { continue };
            match w.commit {
                None => anomalies.push(format!(
                    "G1a: txn {} read k{k} from aborted txn {}",
                    r.id, w.id
                )),
                Some(c) if c >= r.start => anomalies.push(format!(
                    "G1c/read skew: txn {} (start {}) read k{k} from txn {} committed later at {c}",
                    r.id, r.start, w.id
                )),
                Some(c) => {
                    // Snapshot read: no other committed version of k between c and our start.
                    if let Some((c2, w2)) = versions
                        .get(k)
                        .and_then(|v| v.iter().find(|(c2, _)| *c2 > c && *c2 < r.start))
                    {
                        anomalies.push(format!("read skew: txn {} read k{k} from txn {} but txn {w2} committed a newer one at {c2} before start {}", r.id, w.id, r.start));
                    }
                }
            }
        }
    }
    // Lost update: two committed transactions read the same version of k and both wrote k.
    let mut readers_writers: HashMap<(u64, u64), Vec<u64>> = HashMap::new();
    for r in &committed {
        for (k, writer) in &r.reads {
            if r.writes.contains(k) {
                readers_writers.entry((*k, *writer)).or_default().push(r.id);
            }
        }
    }
    for ((k, writer), ids) in readers_writers {
        if ids.len() > 1 {
            anomalies.push(format!(
                "lost update: txns {ids:?} all read k{k} from txn {writer} and all wrote k{k}"
            ));
        }
    }
    // G0 / G1c: cycles in the graph of write-write (version order) and write-read edges among
    // committed transactions. Commit order is a topological order iff there is no cycle.
    for r in &committed {
        for (k, writer) in &r.reads {
            if let Some(w) = by_id.get(writer).filter(|w| w.commit.is_some()) {
                if w.commit >= r.commit && w.id != r.id {
                    anomalies.push(format!(
                        "G1c: wr edge txn {} -> txn {} on k{k} goes backwards in commit order",
                        w.id, r.id
                    ));
                }
            }
        }
    }
    for (k, v) in &versions {
        if v.windows(2).any(|p| p[0].0 == p[1].0) {
            anomalies.push(format!("G0: two writers of k{k} share a commit timestamp"));
        }
    }
    anomalies
}

pub fn recorded_histories_show_no_snapshot_isolation_anomalies(store: &Store) {
    let m = manager(store);
    let t = history_table(&m);
    let log = Mutex::new(Vec::new());
    let ids = AtomicU64::new(1);
    // On a loaded machine the threads can happen to run one after the other and never
    // conflict: then run the workload again (up to 10 times), adding to the same history.
    for round in 0..10u64 {
        std::thread::scope(|s| {
            for i in 0..THREADS {
                let (m, t, log, ids) = (&m, &t, &log, &ids);
                s.spawn(move || {
                    let mut rng = Rng(round * 1_000_003 + i as u64 * 104_729 + 3);
                    for _ in 0..60 {
                        run_recorded(m, t, ids.fetch_add(1, Ordering::SeqCst), &mut rng, log);
                    }
                });
            }
        });
        if log.lock().unwrap().iter().any(|r| r.commit.is_none()) {
            break;
        }
    }
    let history = log.into_inner().unwrap();
    let committed = history.iter().filter(|r| r.commit.is_some()).count();
    assert!(
        committed > THREADS * 10,
        "too few commits to say anything: {committed}"
    );
    assert!(
        committed < history.len(),
        "no conflicts at all: the workload does not contend"
    );
    let anomalies = check_history(&history);
    assert!(
        anomalies.is_empty(),
        "{} anomalies, e.g. {:?}",
        anomalies.len(),
        &anomalies[..anomalies.len().min(5)]
    );
    // The store's version order is the commit order (no G0): each key's final value is the
    // one of its last committed writer.
    let ro = m.begin_read_only().unwrap();
    for k in 0..KEYS {
        let last = history
            .iter()
            .filter(|r| r.commit.is_some() && r.writes.contains(&k))
            .max_by_key(|r| r.commit);
        let stored = ro
            .get_one(&t, &cell(&format!("k{k}"), "v"))
            .unwrap()
            .map(|v| decode(&v).0);
        assert_eq!(stored, last.map(|r| r.id), "k{k}");
    }
}

#[cfg(test)]
#[test]
fn the_history_checker_finds_planted_anomalies() {
    let rec = |id, start, commit, reads: &[(u64, u64)], writes: &[u64]| Record {
        id,
        start,
        commit,
        reads: reads.iter().copied().collect(),
        writes: writes.iter().copied().collect(),
    };
    let lost_update = [
        rec(1, 1, Some(5), &[(0, 0)], &[0]),
        rec(2, 2, Some(6), &[(0, 0)], &[0]),
    ];
    assert!(check_history(&lost_update)
        .iter()
        .any(|a| a.starts_with("lost update")));
    let aborted_read = [
        rec(1, 1, None, &[], &[0]),
        rec(2, 2, Some(6), &[(0, 1)], &[]),
    ];
    assert!(check_history(&aborted_read)
        .iter()
        .any(|a| a.starts_with("G1a")));
    let future_read = [
        rec(1, 1, Some(9), &[], &[0]),
        rec(2, 2, Some(6), &[(0, 1)], &[]),
    ];
    assert!(!check_history(&future_read).is_empty());
    let skew = [
        rec(1, 1, Some(3), &[], &[0]),
        rec(2, 4, Some(5), &[], &[0]),
        rec(3, 6, Some(7), &[(0, 1)], &[]),
    ];
    assert!(check_history(&skew)
        .iter()
        .any(|a| a.starts_with("read skew")));
    let clean = [
        rec(1, 1, Some(3), &[], &[0]),
        rec(2, 4, Some(5), &[(0, 1)], &[0]),
    ];
    assert!(check_history(&clean).is_empty());
}

pub fn serializable_doctors_never_all_leave_under_contention(store: &Store) {
    let m = manager(store);
    let t = table(&m, "doctors", ConflictHandler::RetryOnWriteWrite);
    for round in 0..10 {
        let doctors: Vec<String> = (0..4).map(|d| format!("r{round}d{d}")).collect();
        m.run(|txn| {
            for d in &doctors {
                txn.put(&t, &cell(d, "on_call"), 1u64.to_be_bytes())?;
            }
            Ok(())
        })
        .unwrap();
        std::thread::scope(|s| {
            for me in &doctors {
                let (m, t, doctors) = (&m, &t, &doctors);
                s.spawn(move || {
                    m.run_with(Isolation::Serializable, |txn| {
                        let mut on_call = 0;
                        for d in doctors {
                            on_call += read_u64(txn, t, &cell(d, "on_call"))?.unwrap();
                        }
                        if on_call > 1 {
                            txn.put(t, &cell(me, "on_call"), 0u64.to_be_bytes())?;
                        }
                        Ok(())
                    })
                    .unwrap();
                });
            }
        });
        let ro = m.begin_read_only().unwrap();
        let left: u64 = doctors
            .iter()
            .map(|d| read_u64(&ro, &t, &cell(d, "on_call")).unwrap().unwrap())
            .sum();
        assert_eq!(
            left, 1,
            "round {round}: exactly one doctor must stay on call"
        );
    }
}
