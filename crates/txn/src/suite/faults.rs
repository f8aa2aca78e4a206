//! A bank workload for fault tests: transfers between accounts on several threads while the
//! test breaks the store (kills servers, cuts the network), recording which transfers were
//! acknowledged, which ended with an unknown outcome and how many failed; then checks that
//! nothing acknowledged was lost, nothing that failed is visible, and money is conserved.
//! Every backend's fault tests use it, so "no acknowledged commit lost" means the same thing
//! everywhere.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use ortelius_kvs::{Cell, RangeRequest, TableRef};

use crate::{
    ConflictHandler, RetryClass, TableMetadata, Transaction, TransactionConfig, TransactionManager,
    TxnError,
};

pub const ACCOUNTS: u64 = 20;
pub const INITIAL: u64 = 1000;

pub fn accounts() -> TableRef {
    TableRef::new("bank", "accounts").unwrap()
}

pub fn transfers() -> TableRef {
    TableRef::new("bank", "transfers").unwrap()
}

pub fn account(i: u64) -> Cell {
    Cell::new(format!("acct{i:04}"), "balance").unwrap()
}

/// A transaction config for workloads under faults: lock waits bounded, so a thread whose
/// server vanished comes back with an error instead of waiting out the default.
pub fn config() -> TransactionConfig {
    TransactionConfig {
        lock_timeout: Duration::from_secs(5),
        ..TransactionConfig::default()
    }
}

/// Creates the bank's tables and, on a store that has none yet, the accounts.
pub fn set_up(m: &TransactionManager) {
    let meta = TableMetadata {
        conflict_handler: ConflictHandler::RetryOnWriteWrite,
        ..TableMetadata::default()
    };
    m.create_table(&accounts(), meta).unwrap();
    m.create_table(&transfers(), meta).unwrap();
    if m.run_read_only(|t| t.get_one(&accounts(), &account(0)))
        .unwrap()
        .is_none()
    {
        m.run(|txn| {
            for i in 0..ACCOUNTS {
                txn.put(&accounts(), &account(i), INITIAL.to_be_bytes())?;
            }
            Ok(())
        })
        .unwrap();
    }
}

fn balance(txn: &Transaction, i: u64) -> Result<u64, TxnError> {
    Ok(txn
        .get_one(&accounts(), &account(i))?
        .map_or(0, |v| u64::from_be_bytes(v.try_into().unwrap())))
}

/// One transfer (the `n`th), leaving the marker row `id` in the transfers table.
pub fn transfer(m: &TransactionManager, n: u64, id: &str) -> Result<(), TxnError> {
    let (from, to) = (n % ACCOUNTS, (n * 7 + 3) % ACCOUNTS);
    let to = if to == from { (to + 1) % ACCOUNTS } else { to };
    m.run(|txn| {
        let (a, b) = (balance(txn, from)?, balance(txn, to)?);
        let moved = a.min(1 + n % 50);
        txn.put(&accounts(), &account(from), (a - moved).to_be_bytes())?;
        txn.put(&accounts(), &account(to), (b + moved).to_be_bytes())?;
        txn.put(
            &transfers(),
            &Cell::new(id, "t").unwrap(),
            moved.to_be_bytes(),
        )
    })
}

/// Checks money is conserved and returns the ids of the visible transfers.
pub fn audit(m: &TransactionManager) -> BTreeSet<String> {
    m.run_read_only(|txn| {
        let total: u64 = (0..ACCOUNTS).map(|i| balance(txn, i).unwrap()).sum();
        assert_eq!(total, ACCOUNTS * INITIAL, "money is conserved");
        let mut ids = BTreeSet::new();
        for row in txn.get_range(&transfers(), &RangeRequest::all())? {
            ids.insert(String::from_utf8(row?.row).unwrap());
        }
        Ok(ids)
    })
    .unwrap()
}

/// What a workload under faults observed.
#[derive(Debug, Default)]
pub struct Outcomes {
    /// The workload's tag: its transfer ids are `<tag>/<thread>-<n>`.
    pub tag: String,
    pub acknowledged: BTreeSet<String>,
    /// Transfers whose commit outcome is unknown (`CommitOutcomeUnknown`).
    pub unknown: BTreeSet<String>,
    /// Transfers that failed, by retry class — of the last attempt's error when the runner
    /// gave up retrying (none may be visible later).
    pub failed: Vec<RetryClass>,
}

/// Runs transfers on `threads` threads until `stop`, recording outcomes. Ids are
/// `<tag>/<thread>-<n>`, so several workloads (with tags free of `/`) can share a store.
pub fn workload(m: &TransactionManager, tag: &str, threads: u64, stop: &AtomicBool) -> Outcomes {
    let outcomes = Mutex::new(Outcomes {
        tag: tag.to_owned(),
        ..Outcomes::default()
    });
    std::thread::scope(|s| {
        for w in 0..threads {
            let outcomes = &outcomes;
            s.spawn(move || {
                let mut n = w;
                while !stop.load(Ordering::SeqCst) {
                    n += threads;
                    let id = format!("{tag}/{w}-{n}");
                    let result = transfer(m, n, &id);
                    let mut o = outcomes.lock().unwrap();
                    match result {
                        Ok(()) => {
                            o.acknowledged.insert(id);
                        }
                        Err(e) if e.retry_class() == RetryClass::CommitOutcomeUnknown => {
                            o.unknown.insert(id);
                        }
                        Err(TxnError::RetriesExhausted { last, .. }) => {
                            o.failed.push(last.retry_class());
                            drop(o);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                        Err(e) => {
                            o.failed.push(e.retry_class());
                            drop(o);
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                }
            });
        }
    });
    outcomes.into_inner().unwrap()
}

/// Runs `workload` for `d` on two threads.
pub fn workload_for(m: &TransactionManager, tag: &str, d: Duration) -> Outcomes {
    workload_during(m, tag, 2, || std::thread::sleep(d))
}

/// Runs the workload on `threads` threads while `faults` runs, then stops it (also when
/// `faults` panics, whose panic is then passed on).
pub fn workload_during(
    m: &TransactionManager,
    tag: &str,
    threads: u64,
    faults: impl FnOnce(),
) -> Outcomes {
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let running = s.spawn(|| workload(m, tag, threads, &stop));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(faults));
        stop.store(true, Ordering::SeqCst);
        let outcomes = running.join().unwrap();
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        outcomes
    })
}

/// After the faults: nothing acknowledged lost, nothing of this workload visible that failed,
/// money conserved, and every unknown outcome decided (two reads agree on this workload's
/// transfers; other workloads may still be writing).
pub fn check_after_faults(m: &TransactionManager, o: &Outcomes) {
    let mine = |ids: BTreeSet<String>| -> BTreeSet<String> {
        ids.into_iter()
            .filter(|id| id.split_once('/').map(|p| p.0) == Some(o.tag.as_str()))
            .collect()
    };
    let visible = mine(audit(m));
    let lost: Vec<_> = o.acknowledged.difference(&visible).collect();
    assert!(lost.is_empty(), "acknowledged transfers lost: {lost:?}");
    let phantom: Vec<_> = visible
        .iter()
        .filter(|id| !o.acknowledged.contains(*id) && !o.unknown.contains(*id))
        .collect();
    assert!(
        phantom.is_empty(),
        "transfers visible that failed: {phantom:?}"
    );
    assert_eq!(mine(audit(m)), visible, "unknown outcomes are decided");
}
