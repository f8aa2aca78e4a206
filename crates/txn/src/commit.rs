//! The commit sequence (AtlasDB's `commitWrites`), one small function per step, run in this
//! order:
//!
//! 1. take commit locks: row or cell locks per the tables' conflict handlers, plus the lock on
//!    this transaction's own transactions-table row (readers wait on it);
//! 3. check the immutable-timestamp and commit locks are still held;
//! 4. write the data at `start_ts`, in the same store request as the first read of step 2 (the
//!    newest version of each written cell as it was just before the write), or alongside it;
//! 2. check write-write conflicts (only meaningful under the locks): on a conflict, record this
//!    transaction as aborted, as after any failure once data is written;
//! 5. fetch the commit timestamp (after the data: anyone starting later must see it);
//! 6. serializable only: re-run the recorded reads at the commit timestamp;
//! 7. check the locks once more;
//! 8. `put_unless_exists(start_ts -> commit_ts)`: **the commit point**;
//! 9. release the locks (always).
//!
//! AtlasDB checks conflicts (2) before it writes (4). Here the check's first read rides on the
//! write, as a Percolator prewrite checks and writes in one request: on a networked store it
//! saves a round trip of every write transaction. It is the same check: under the commit
//! locks no other writer can commit to these cells between the read and the write, and
//! readers treat data without a commit record the same either way (they wait on the commit
//! lock). The cost is on conflicts only: the losing transaction's data is written, then
//! marked aborted, and sweep removes it.

use std::collections::BTreeSet;

use ortelius_kvs::{
    Cell, CellWrites, ErrorClass, KvsError, TableRef, Timestamp, SWEEP_SENTINEL_TS,
};
use ortelius_timelock::{LockDescriptor, LockError, LockToken};

use crate::error::{TxnError, TxnResult};
use crate::metrics::Outcome;
use crate::reader::{ReadMode, Reader};
use crate::transaction::{lock, ReadSpec, Transaction};
use crate::txn_table::TxnStatus;

/// The buffered writes as the store takes them: per table with writes (in table order), its
/// cells in cell order. Moved out of the transaction's buffer, not copied.
pub(crate) type Batch = Vec<(TableRef, CellWrites)>;

pub(crate) fn commit(txn: &Transaction) -> TxnResult<()> {
    let writes: Batch = std::mem::take(&mut *lock(&txn.writes)?)
        .into_iter()
        .filter(|(_, cells)| !cells.is_empty())
        .map(|(table, cells)| (table, cells.into_iter().collect()))
        .collect();
    let started = std::time::Instant::now();
    let result = commit_writes(txn, &writes);
    let written = writes.iter().map(|(table, _)| table);
    txn.inner
        .metrics
        .commit(written, &Outcome::of(&result), started.elapsed());
    result
}

/// Whether `batch` writes `cell` of `table`.
fn writes_cell(batch: &Batch, table: &TableRef, cell: &Cell) -> bool {
    batch
        .iter()
        .any(|(t, cells)| t == table && cells.binary_search_by(|(c, _)| c.cmp(cell)).is_ok())
}

fn commit_writes(txn: &Transaction, writes: &Batch) -> TxnResult<()> {
    if writes.is_empty() {
        // Nothing to write: a read-only commit is already consistent (also when serializable).
        return Ok(());
    }
    let commit_locks = acquire_commit_locks(txn, writes)?;
    let mut data_written = false;
    let result = (|| {
        check_locks_held(txn, commit_locks)?;
        let latest = write_data(txn, writes)?;
        data_written = true;
        check_write_write_conflicts(txn, writes, latest)?;
        let commit_ts = fetch_commit_ts(txn)?;
        let _ = txn.commit_ts.set(commit_ts);
        validate_reads(txn, writes, commit_ts)?;
        check_locks_held(txn, commit_locks)?;
        put_commit_record(txn, commit_ts)
    })();
    if data_written
        && matches!(&result, Err(e) if e.retry_class() != crate::RetryClass::CommitOutcomeUnknown)
    {
        abort_written_data(txn);
    }
    release_locks(txn, commit_locks);
    result
}

/// Step 1.
pub(crate) fn acquire_commit_locks(txn: &Transaction, writes: &Batch) -> TxnResult<LockToken> {
    let mut descriptors = vec![txn.inner.txns.commit_lock(txn.start_ts)];
    for (table, cells) in writes {
        let handler = txn.inner.metadata(table)?.conflict_handler;
        if handler.locks_rows() {
            let rows: BTreeSet<&[u8]> = cells.iter().map(|(cell, _)| cell.row()).collect();
            descriptors.extend(rows.into_iter().map(|row| LockDescriptor::row(table, row)));
        }
        if handler.locks_cells() {
            descriptors.extend(
                cells
                    .iter()
                    .map(|(cell, _)| LockDescriptor::cell(table, cell)),
            );
        }
    }
    txn.inner
        .locks
        .lock(&descriptors, txn.inner.config.lock_timeout)
        .map_err(|e| match e {
            LockError::Timeout { .. } => TxnError::LockAcquisitionTimeout(e),
            other => TxnError::Lock(other),
        })
}

/// Step 2, after the data is written: for every written cell of a checked table, the newest
/// committed writer must have committed before we started. `latest` is the first read, done
/// with the write (the newest version of each cell just before it); looking further down
/// passes our own version, which is skipped. Abandoned writers found on the way are rolled
/// back.
pub(crate) fn check_write_write_conflicts(
    txn: &Transaction,
    writes: &Batch,
    latest: Vec<std::collections::BTreeMap<Cell, Timestamp>>,
) -> TxnResult<()> {
    let txns = &txn.inner.txns;
    for ((table, _), first_read) in writes.iter().zip(latest) {
        if !checks_write_write(txn, table)? {
            continue;
        }
        let mut latest = first_read;
        let mut after_our_write = false;
        loop {
            let starts: Vec<Timestamp> = latest
                .values()
                .copied()
                .filter(|ts| *ts != SWEEP_SENTINEL_TS)
                .collect();
            let statuses = txns.load(&starts)?;
            let mut next = Vec::new();
            for (cell, their_start) in latest {
                if their_start == SWEEP_SENTINEL_TS {
                    continue;
                }
                if their_start == txn.start_ts && after_our_write {
                    // Our own data: look below it. (The first read never holds it, even
                    // where it may land after our write: a version at our start timestamp
                    // there is another's.)
                    next.push((cell, their_start));
                    continue;
                }
                match statuses.get(&their_start) {
                    Some(TxnStatus::Committed(their_commit)) => {
                        if *their_commit > txn.start_ts {
                            return Err(TxnError::WriteWriteConflict {
                                table: table.clone(),
                                cell,
                                their_start_ts: their_start,
                                their_commit_ts: Some(*their_commit),
                            });
                        }
                    }
                    Some(TxnStatus::Aborted) => next.push((cell, their_start)),
                    None => {
                        // We hold the lock any writer of this cell needs, so this writer lost
                        // its locks: roll it back, then look at the same version again.
                        match txns.put_unless_exists(their_start, TxnStatus::Aborted) {
                            Ok(()) | Err(KvsError::KeyAlreadyExists { .. }) => {
                                txns.load_uncached(&[their_start])?;
                                next.push((cell, their_start + 1));
                            }
                            Err(e) => return Err(e.into()),
                        }
                    }
                }
            }
            if next.is_empty() {
                break;
            }
            latest = txn.inner.kvs.get_latest_timestamps(table, &next)?;
            after_our_write = true;
        }
    }
    Ok(())
}

fn checks_write_write(txn: &Transaction, table: &TableRef) -> TxnResult<bool> {
    Ok(txn
        .inner
        .metadata(table)?
        .conflict_handler
        .checks_write_write())
}

/// Steps 3 and 7: the immutable-timestamp guard and the commit locks must still be held.
pub(crate) fn check_locks_held(txn: &Transaction, commit_locks: LockToken) -> TxnResult<()> {
    let tokens: Vec<LockToken> = txn
        .immutable_lock
        .into_iter()
        .chain([commit_locks])
        .collect();
    let held = txn.inner.locks.refresh(&tokens).map_err(TxnError::Lock)?;
    if held.len() == tokens.len() {
        Ok(())
    } else {
        Err(TxnError::LocksExpired {
            start_ts: txn.start_ts,
        })
    }
}

/// Step 4: every buffered write (deletes are empty values) at the start timestamp, with the
/// first read of step 2: per written table in order, the newest version of each cell just
/// before the write (read only for tables that check write-write conflicts).
pub(crate) fn write_data(
    txn: &Transaction,
    writes: &Batch,
) -> TxnResult<Vec<std::collections::BTreeMap<Cell, Timestamp>>> {
    let read_latest = writes
        .iter()
        .map(|(table, _)| checks_write_write(txn, table))
        .collect::<TxnResult<Vec<bool>>>()?;
    Ok(txn
        .inner
        .kvs
        .multi_put_reading_latest(writes, &read_latest, txn.start_ts)?)
}

/// Step 5.
pub(crate) fn fetch_commit_ts(txn: &Transaction) -> TxnResult<Timestamp> {
    txn.inner.fresh_timestamp()
}

/// Step 6: serializable read validation. Every recorded read of a table that checks
/// read-write conflicts is run again as of `commit_ts`; any difference outside the cells this
/// transaction wrote means another transaction committed a conflicting write in between.
pub(crate) fn validate_reads(
    txn: &Transaction,
    writes: &Batch,
    commit_ts: Timestamp,
) -> TxnResult<()> {
    let reads = std::mem::take(&mut *lock(&txn.reads)?);
    let reader = Reader {
        inner: &txn.inner,
        read_ts: commit_ts,
        mode: ReadMode::Validation {
            own_start: txn.start_ts,
        },
    };
    for record in reads {
        let table = &record.table;
        let now = match &record.spec {
            ReadSpec::Cells(cells) => reader.get_cells(table, cells)?,
            ReadSpec::Rows(rows, columns) => reader.get_rows(table, rows, columns)?,
            ReadSpec::ColumnRange(row, columns) => reader.get_column_range(table, row, columns)?,
            ReadSpec::Range(request) => {
                let mut all = std::collections::BTreeMap::new();
                let mut batch = Vec::new();
                for row in txn.inner.kvs.get_range(table, request, commit_ts)? {
                    batch.push(row?);
                    if batch.len() == 256 {
                        all.extend(flatten(reader.resolve_rows(
                            table,
                            std::mem::take(&mut batch),
                            false,
                        )?)?);
                    }
                }
                all.extend(flatten(reader.resolve_rows(table, batch, false)?)?);
                all
            }
        };
        let written = |cell: &Cell| writes_cell(writes, table, cell);
        let now: std::collections::BTreeMap<&Cell, &Vec<u8>> = now
            .iter()
            .filter(|(c, v)| !v.is_empty() && !written(c))
            .map(|(c, v)| (c, &v.contents))
            .collect();
        let then: std::collections::BTreeMap<&Cell, &Vec<u8>> =
            record.seen.iter().filter(|(c, _)| !written(c)).collect();
        if now != then {
            let changed = now
                .keys()
                .chain(then.keys())
                .find(|c| now.get(*c) != then.get(*c))
                .map(|c| c.to_string())
                .unwrap_or_default();
            return Err(TxnError::SerializableConflict {
                table: table.clone(),
                detail: format!(
                    "{changed} changed between start {} and commit {commit_ts}",
                    txn.start_ts
                ),
            });
        }
    }
    Ok(())
}

fn flatten(rows: Vec<ortelius_kvs::RowResult>) -> TxnResult<Vec<(Cell, ortelius_kvs::Value)>> {
    let mut out = Vec::new();
    for row in rows {
        for (column, value) in row.columns {
            out.push((Cell::new(row.row.clone(), column)?, value));
        }
    }
    Ok(out)
}

/// Step 8: the commit point.
pub(crate) fn put_commit_record(txn: &Transaction, commit_ts: Timestamp) -> TxnResult<()> {
    let txns = &txn.inner.txns;
    match txns.put_unless_exists(txn.start_ts, TxnStatus::Committed(commit_ts)) {
        Ok(()) => Ok(()),
        Err(KvsError::KeyAlreadyExists { .. }) => {
            match txns.load_uncached(&[txn.start_ts])?.get(&txn.start_ts) {
                // Our own write landed (a store that retried internally).
                Some(TxnStatus::Committed(ts)) if *ts == commit_ts => Ok(()),
                _ => Err(TxnError::RolledBackByOther {
                    start_ts: txn.start_ts,
                }),
            }
        }
        // The store says the write never happened (e.g. the connection was lost before the
        // request went out): nothing is committed, and the caller may retry.
        Err(source) if source.class() == ErrorClass::Transient => Err(source.into()),
        Err(source) => Err(TxnError::CommitOutcomeUnknown {
            start_ts: txn.start_ts,
            commit_ts,
            source: Box::new(source),
        }),
    }
}

/// After a failure with data written but no commit: decide "aborted" now so readers need not
/// wait for our locks to expire. Best effort: if it fails, readers roll us back themselves.
fn abort_written_data(txn: &Transaction) {
    let _ = txn
        .inner
        .txns
        .put_unless_exists(txn.start_ts, TxnStatus::Aborted);
}

/// Step 9.
pub(crate) fn release_locks(txn: &Transaction, commit_locks: LockToken) {
    // Best effort: unreleased locks expire with their lease.
    let _ = txn.inner.locks.unlock(&[commit_locks]);
}
