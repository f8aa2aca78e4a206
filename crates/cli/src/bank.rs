//! The bank workload: accounts with balances, concurrent transfers, and the invariant a
//! consistent snapshot must satisfy (money conserved, no balance below zero). Each transfer also
//! writes a marker row, so a restore can be checked transfer by transfer.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ortelius_kvs::{Cell, RangeRequest, TableRef, Timestamp};
use ortelius_txn::{
    ConflictHandler, RetryClass, TableMetadata, Transaction, TransactionManager, TxnError,
    TxnResult,
};

pub const INITIAL_BALANCE: u64 = 1_000;

pub fn accounts_table() -> Result<TableRef> {
    Ok(TableRef::new("bank", "accounts")?)
}

pub fn transfers_table() -> Result<TableRef> {
    Ok(TableRef::new("bank", "transfers")?)
}

fn account(i: u64) -> TxnResult<Cell> {
    Ok(Cell::new(format!("acct{i:08}"), "balance")?)
}

fn balance(txn: &Transaction, t: &TableRef, i: u64) -> TxnResult<u64> {
    match txn.get_one(t, &account(i)?)? {
        Some(v) => Ok(u64::from_be_bytes(v.as_slice().try_into().map_err(
            |_| TxnError::application(format!("account {i} holds a malformed balance")),
        )?)),
        None => Ok(0),
    }
}

/// Creates the tables and, if the bank is empty, `accounts` accounts with the initial balance.
pub fn init(m: &TransactionManager, accounts: u64) -> Result<()> {
    let (a, t) = (accounts_table()?, transfers_table()?);
    let meta = TableMetadata {
        conflict_handler: ConflictHandler::RetryOnWriteWrite,
        ..TableMetadata::default()
    };
    m.create_table(&a, meta)?;
    m.create_table(&t, meta)?;
    if m.run_read_only(|txn| txn.get_one(&a, &account(0)?))?
        .is_some()
    {
        return Ok(());
    }
    for chunk in (0..accounts).collect::<Vec<_>>().chunks(1000) {
        m.run(|txn| {
            for &i in chunk {
                txn.put(&a, &account(i)?, INITIAL_BALANCE.to_be_bytes())?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

/// Settings of a workload run.
pub struct Workload {
    pub accounts: u64,
    pub threads: u64,
    pub duration: Duration,
    /// Append "<transfer id>\n" here (synced) after each acknowledged transfer.
    pub ack_file: Option<std::path::PathBuf>,
}

/// Runs transfers until `duration` passes or `stop` is set; prints throughput every second when
/// `progress`. Returns the number of committed transfers.
pub fn run(m: &TransactionManager, w: &Workload, stop: &AtomicBool, progress: bool) -> Result<u64> {
    if w.accounts < 2 {
        bail!("the bank needs at least 2 accounts (--accounts)");
    }
    init(m, w.accounts)?;
    let (a, t) = (accounts_table()?, transfers_table()?);
    let acks = match &w.ack_file {
        Some(path) => Some(Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        )),
        None => None,
    };
    let committed = AtomicU64::new(0);
    let started = Instant::now();
    let deadline = started + w.duration;
    let failure: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for worker in 0..w.threads {
            let (a, t, acks, committed, failure) = (&a, &t, &acks, &committed, &failure);
            s.spawn(move || {
                let mut state = worker.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut seq = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let from = state % w.accounts;
                    let to = (from + 1 + (state >> 20) % (w.accounts - 1)) % w.accounts;
                    let amount = 1 + (state >> 40) % 100;
                    seq += 1;
                    let id = format!("w{worker}-{seq}-{}", std::process::id());
                    let result = m.run(|txn| {
                        let (fb, tb) = (balance(txn, a, from)?, balance(txn, a, to)?);
                        let moved = amount.min(fb);
                        txn.put(a, &account(from)?, (fb - moved).to_be_bytes())?;
                        txn.put(a, &account(to)?, (tb + moved).to_be_bytes())?;
                        txn.put(t, &Cell::new(id.as_str(), "t")?, moved.to_be_bytes())
                    });
                    match result {
                        Ok(()) => {}
                        Err(e) if goes_on_after(&e) => {
                            eprintln!("transfer {id} failed, going on: {e}");
                            std::thread::sleep(Duration::from_millis(100));
                            continue;
                        }
                        Err(e) => {
                            if let Ok(mut f) = failure.lock() {
                                f.get_or_insert(e.into());
                            }
                            stop.store(true, Ordering::SeqCst);
                            return;
                        }
                    }
                    committed.fetch_add(1, Ordering::Relaxed);
                    if let Some(acks) = acks {
                        if let Ok(mut f) = acks.lock() {
                            let written = f
                                .write_all(format!("{id}\n").as_bytes())
                                .and_then(|()| f.sync_data());
                            if let Err(e) = written {
                                if let Ok(mut fail) = failure.lock() {
                                    fail.get_or_insert(
                                        anyhow::Error::from(e)
                                            .context("cannot record an acknowledgement"),
                                    );
                                }
                                stop.store(true, Ordering::SeqCst);
                                return;
                            }
                        }
                    }
                }
            });
        }
        if progress {
            let mut last = 0;
            while Instant::now() < deadline && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(
                    Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
                );
                let now = committed.load(Ordering::Relaxed);
                eprintln!("transfers committed: {now} ({}/s)", now - last);
                last = now;
            }
        }
    });
    if let Some(e) = failure.into_inner().ok().flatten() {
        return Err(e.context("a transfer failed"));
    }
    Ok(committed.load(Ordering::Relaxed))
}

/// Whether the workload goes on after a failed transfer: a store that is failing over or
/// partly down fails transactions retriably (also after `run` gave up retrying) or leaves a
/// commit's outcome unknown, and neither is a reason to stop. Such a transfer is not
/// acknowledged, so verification never expects it.
fn goes_on_after(e: &TxnError) -> bool {
    matches!(e, TxnError::RetriesExhausted { .. }) || e.retry_class() != RetryClass::NotRetriable
}

/// What `verify` found.
pub struct Verdict {
    pub accounts: u64,
    pub total: u64,
    pub transfers: u64,
}

/// Checks the invariant in the snapshot of `txn`: every account present, money conserved.
pub fn verify(txn: &Transaction) -> Result<Verdict> {
    let (a, t) = (accounts_table()?, transfers_table()?);
    let mut accounts = 0;
    let mut total: u64 = 0;
    for row in txn.get_range(&a, &RangeRequest::all())? {
        for value in row?.columns.values() {
            let bytes: [u8; 8] = value
                .as_slice()
                .try_into()
                .context("a balance is not 8 bytes")?;
            total = total
                .checked_add(u64::from_be_bytes(bytes))
                .context("balances overflow")?;
            accounts += 1;
        }
    }
    let mut transfers = 0;
    for row in txn.get_range(&t, &RangeRequest::all())? {
        row?;
        transfers += 1;
    }
    if total != accounts * INITIAL_BALANCE {
        bail!(
            "invariant violated: {accounts} accounts hold {total}, expected {}",
            accounts * INITIAL_BALANCE
        );
    }
    Ok(Verdict {
        accounts,
        total,
        transfers,
    })
}

/// Transfer ids listed in an acknowledgement file.
pub fn read_acks(path: &Path) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    Ok(complete.lines().map(str::to_owned).collect())
}

/// Whether each transfer id is visible in `txn`'s snapshot.
pub fn transfers_present(txn: &Transaction, ids: &[String]) -> Result<usize> {
    let t = transfers_table()?;
    let cells = ids
        .iter()
        .map(|id| Cell::new(id.as_str(), "t"))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(txn.get(&t, &cells)?.len())
}

/// Transfers visible in `txn` whose commit timestamp is at or after `backup_ts` (must be none
/// after a restore cleaned from `backup_ts`).
pub fn transfers_committed_from(
    m: &TransactionManager,
    txn: &Transaction,
    backup_ts: Timestamp,
) -> Result<u64> {
    let t = transfers_table()?;
    let mut late = 0;
    for row in txn.get_range(&t, &RangeRequest::all())? {
        let row = row?;
        let cell = Cell::new(row.row.clone(), "t")?;
        let start = m
            .kvs()
            .get_latest_timestamps(&t, &[(cell.clone(), txn.start_ts())])?;
        if let Some(start) = start.get(&cell) {
            if let Some(ortelius_txn::TxnStatus::Committed(c)) =
                m.transactions_table().load(&[*start])?.get(start)
            {
                if *c >= backup_ts {
                    late += 1;
                }
            }
        }
    }
    Ok(late)
}
