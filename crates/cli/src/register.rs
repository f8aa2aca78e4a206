//! The register workload: transactions of random reads and writes of a few keys, every
//! written value unique, recorded as a history (JSON lines, one per transaction) that outside
//! checkers can read — and [`check`], which checks snapshot isolation on such a history.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ortelius_kvs::{Cell, TableRef, Timestamp};
use ortelius_txn::{Isolation, RetryClass, TableMetadata, TransactionManager, TxnResult};
use serde::{Deserialize, Serialize};

/// One operation: `["r", key, value]` (value `null`: nothing there) or `["w", key, value]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op(pub String, pub String, pub Option<u64>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Committed,
    Aborted,
    /// The commit's reply was lost: it may or may not have happened.
    Unknown,
}

/// One transaction of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The thread that ran it.
    pub process: u64,
    pub start_ts: Timestamp,
    /// Set once the commit fetched one (also for an unknown outcome).
    pub commit_ts: Option<Timestamp>,
    pub ops: Vec<Op>,
    pub outcome: Outcome,
}

/// Settings of a run.
pub struct Workload {
    pub keys: u64,
    pub threads: u64,
    pub duration: Duration,
    pub history: Option<PathBuf>,
}

fn table() -> Result<TableRef> {
    Ok(TableRef::new("register", "cells")?)
}

fn cell(key: &str) -> TxnResult<Cell> {
    Ok(Cell::new(key, "v")?)
}

/// Runs transactions of one to four operations until `duration` passes or `stop` is set.
/// Every attempt is one history entry (aborted attempts are not retried). Returns them.
pub fn run(m: &TransactionManager, w: &Workload, stop: &AtomicBool) -> Result<Vec<Entry>> {
    if w.keys == 0 || w.threads == 0 {
        bail!("--keys and --threads must be at least 1");
    }
    let t = table()?;
    m.create_table(&t, TableMetadata::default())?;
    let deadline = Instant::now() + w.duration;
    let history = Mutex::new(Vec::new());
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    let next_value = AtomicU64::new(1);
    std::thread::scope(|s| {
        for process in 0..w.threads {
            let (t, history, failure, next_value) = (&t, &history, &failure, &next_value);
            s.spawn(move || {
                let mut state = (process + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut random = move |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let mut mine = Vec::new();
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    match attempt(m, t, w.keys, &mut random, next_value, process) {
                        Ok(entry) => mine.push(entry),
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e);
                            }
                            stop.store(true, Ordering::SeqCst);
                        }
                    }
                }
                if let Ok(mut h) = history.lock() {
                    h.extend(mine);
                }
            });
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context("the register workload failed"));
    }
    let mut history = history
        .into_inner()
        .map_err(|_| anyhow::anyhow!("a workload thread panicked"))?;
    history.sort_by_key(|e| e.start_ts);
    if let Some(path) = &w.history {
        write_history(path, &history)?;
    }
    Ok(history)
}

/// One transaction; an error only for failures that are not the transaction's outcome.
fn attempt(
    m: &TransactionManager,
    t: &TableRef,
    keys: u64,
    random: &mut impl FnMut(u64) -> u64,
    next_value: &AtomicU64,
    process: u64,
) -> Result<Entry> {
    let txn = m.begin(Isolation::Snapshot)?;
    let mut ops = Vec::new();
    let body = (|| -> TxnResult<()> {
        for _ in 0..1 + random(4) {
            let key = format!("k{}", random(keys));
            if random(2) == 0 {
                let value = txn
                    .get_one(t, &cell(&key)?)?
                    .map(|v| v.as_slice().try_into().map(u64::from_be_bytes))
                    .transpose()
                    .map_err(|_| {
                        ortelius_txn::TxnError::application(format!(
                            "{key} holds a malformed value"
                        ))
                    })?;
                ops.push(Op("r".to_owned(), key, value));
            } else {
                let value = next_value.fetch_add(1, Ordering::Relaxed);
                txn.put(t, &cell(&key)?, value.to_be_bytes())?;
                ops.push(Op("w".to_owned(), key, Some(value)));
            }
        }
        txn.commit()
    })();
    let outcome = match body {
        Ok(()) => Outcome::Committed,
        Err(e) if e.retry_class() == RetryClass::CommitOutcomeUnknown => Outcome::Unknown,
        Err(e) if e.retry_class() != RetryClass::NotRetriable => Outcome::Aborted,
        Err(e) => return Err(e.into()),
    };
    Ok(Entry {
        process,
        start_ts: txn.start_ts(),
        commit_ts: txn.commit_ts(),
        ops,
        outcome,
    })
}

fn write_history(path: &Path, history: &[Entry]) -> Result<()> {
    let file = std::fs::File::create(path)
        .with_context(|| format!("cannot create history file {}", path.display()))?;
    let mut out = std::io::BufWriter::new(file);
    for entry in history {
        serde_json::to_writer(&mut out, entry)?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("cannot write history file {}", path.display()))?;
    Ok(())
}

/// Reads a history file written by `workload register --history`.
pub fn read_history(path: &Path) -> Result<Vec<Entry>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("cannot read history file {}", path.display()))?;
    std::io::BufReader::new(file)
        .lines()
        .enumerate()
        .map(|(i, line)| {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            serde_json::from_str(&line)
                .with_context(|| format!("{} line {}: not a history entry", path.display(), i + 1))
        })
        .collect()
}

/// What [`check`] looked at.
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub committed: usize,
    pub aborted: usize,
    pub unknown: usize,
    pub reads_checked: usize,
}

/// Checks snapshot isolation on a history: every read sees the newest value committed before
/// its transaction started (or the transaction's own earlier write), and no two committed
/// transactions that overlap in time wrote the same key (first committer wins). A write of a
/// transaction with an unknown outcome may be seen if its commit timestamp is below the
/// reader's start. Returns the first violation found.
pub fn check(history: &[Entry]) -> std::result::Result<Report, String> {
    let mut report = Report::default();
    // key -> (commit_ts, value) of committed writes (a transaction's last write of the key).
    let mut versions: HashMap<&str, BTreeMap<Timestamp, u64>> = HashMap::new();
    let mut maybe: HashMap<u64, Timestamp> = HashMap::new();
    let mut writers: HashMap<u64, usize> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        match e.outcome {
            Outcome::Committed => report.committed += 1,
            Outcome::Aborted => report.aborted += 1,
            Outcome::Unknown => report.unknown += 1,
        }
        for Op(kind, key, value) in &e.ops {
            if kind == "w" {
                let value = value.ok_or_else(|| format!("entry {i}: a write without a value"))?;
                if writers.insert(value, i).is_some() {
                    return Err(format!("value {value} is written twice (entry {i})"));
                }
                match (e.outcome, e.commit_ts) {
                    (Outcome::Committed, Some(c)) => {
                        versions.entry(key).or_default().insert(c, value);
                    }
                    (Outcome::Committed, None) => {
                        return Err(format!(
                            "entry {i} committed a write without a commit timestamp"
                        ))
                    }
                    (Outcome::Unknown, Some(c)) => {
                        maybe.insert(value, c);
                    }
                    _ => {}
                }
            }
        }
    }
    // (A transaction's later write of a key replaced its earlier one in `versions`.)
    for (i, e) in history.iter().enumerate() {
        let mut own: HashMap<&str, u64> = HashMap::new();
        for Op(kind, key, value) in &e.ops {
            if kind == "w" {
                if let Some(v) = value {
                    own.insert(key, *v);
                }
                continue;
            }
            report.reads_checked += 1;
            if let Some(own_value) = own.get(key.as_str()) {
                if *value != Some(*own_value) {
                    return Err(format!(
                        "entry {i} read {key} = {value:?} after writing {own_value} itself"
                    ));
                }
                continue;
            }
            let expected = versions
                .get(key.as_str())
                .and_then(|v| v.range(..e.start_ts).next_back())
                .map(|(c, v)| (*c, *v));
            if *value == expected.map(|(_, v)| v) {
                continue;
            }
            let seen_unknown = value
                .and_then(|v| maybe.get(&v))
                .is_some_and(|c| *c < e.start_ts && expected.is_none_or(|(ec, _)| *c > ec));
            if !seen_unknown {
                return Err(format!(
                    "entry {i} (process {}, start {}) read {key} = {value:?}, but the newest value committed before its start is {:?}",
                    e.process,
                    e.start_ts,
                    expected.map(|(_, v)| v)
                ));
            }
        }
    }
    // First committer wins: committed writers of a key never overlap in time.
    let mut spans: HashMap<&str, Vec<(Timestamp, Timestamp, usize)>> = HashMap::new();
    for (i, e) in history.iter().enumerate() {
        if let (Outcome::Committed, Some(c)) = (e.outcome, e.commit_ts) {
            let mut keys: Vec<&str> = e
                .ops
                .iter()
                .filter(|o| o.0 == "w")
                .map(|o| o.1.as_str())
                .collect();
            keys.dedup();
            for key in keys {
                spans.entry(key).or_default().push((e.start_ts, c, i));
            }
        }
    }
    for (key, mut spans) in spans {
        spans.sort_unstable();
        spans.dedup_by_key(|s| s.2);
        for pair in spans.windows(2) {
            let ((_, c1, i1), (s2, _, i2)) = (pair[0], pair[1]);
            if s2 < c1 {
                return Err(format!(
                    "entries {i1} and {i2} both committed writes of {key} while overlapping in time (lost update)"
                ));
            }
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn entry(start: i64, commit: i64, ops: &[(&str, &str, Option<u64>)]) -> Entry {
        Entry {
            process: 0,
            start_ts: start,
            commit_ts: Some(commit),
            ops: ops
                .iter()
                .map(|(k, key, v)| Op((*k).to_owned(), (*key).to_owned(), *v))
                .collect(),
            outcome: Outcome::Committed,
        }
    }

    #[test]
    fn the_checker_accepts_snapshot_isolation_and_names_violations() {
        let good = vec![
            entry(1, 2, &[("w", "a", Some(1))]),
            entry(3, 5, &[("r", "a", Some(1)), ("w", "a", Some(2))]),
            entry(
                4,
                6,
                &[
                    ("r", "a", Some(1)),
                    ("w", "b", Some(3)),
                    ("r", "b", Some(3)),
                ],
            ),
            entry(7, 8, &[("r", "a", Some(2)), ("r", "c", None)]),
        ];
        assert_eq!(check(&good).unwrap().reads_checked, 5);
        let mut stale = good.clone();
        stale[3].ops[0].2 = Some(1);
        assert!(check(&stale).unwrap_err().contains("entry 3"));
        let mut lost_update = good.clone();
        lost_update[2].ops[1] = Op("w".into(), "a".into(), Some(3));
        lost_update[2].ops[2] = Op("r".into(), "a".into(), Some(3));
        lost_update[3].ops[0].2 = Some(3);
        assert!(check(&lost_update).unwrap_err().contains("lost update"));
        let mut twice = good.clone();
        twice[1].ops[1].2 = Some(1);
        assert!(check(&twice).unwrap_err().contains("written twice"));
        let mut future = good;
        future[1].ops[0].2 = Some(2);
        assert!(
            check(&future).is_err(),
            "a transaction read its own later value"
        );
    }
}
