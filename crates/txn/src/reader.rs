//! Snapshot reads: every raw version read from the store is post-filtered through the
//! transactions table. A version is visible to a reader at `read_ts` iff its writer committed
//! before `read_ts`. Undecided writers are waited for (their commit lock) and then rolled back
//! with `put_unless_exists(start -> aborted)`; invisible versions are re-read below themselves.

use std::collections::BTreeMap;

use ortelius_kvs::{
    Cell, ColumnRange, ColumnSelection, KvsError, RowResult, TableRef, Timestamp, Value,
    MAX_READ_TS, SWEEP_SENTINEL_TS,
};
use ortelius_timelock::LockError;

use crate::error::{TxnError, TxnResult};
use crate::manager::Inner;
use crate::txn_table::{Statuses, TxnStatus};

/// Reads give up after this many rounds of re-reading below invisible versions.
pub(crate) const MAX_POST_FILTER_ROUNDS: usize = 200;
/// From this round on, a read re-reads a cell below every invisible version it can decide at
/// once (see [`Reader::skip_invisible`]) rather than below one at a time.
const SKIP_FROM_ROUND: usize = 2;
/// Outcomes looked up per batch while skipping invisible versions.
const SKIP_BATCH: usize = 64;

#[derive(Clone, Copy, Debug)]
pub(crate) enum ReadMode {
    /// An ordinary snapshot read.
    Snapshot,
    /// Serializable read validation at commit: versions of `own_start` are skipped, and
    /// writers that started after `own_start` and are still undecided fail the check rather
    /// than being waited for (which could deadlock two validating committers).
    Validation { own_start: Timestamp },
}

pub(crate) struct Reader<'a> {
    pub inner: &'a Inner,
    pub read_ts: Timestamp,
    pub mode: ReadMode,
}

impl Reader<'_> {
    /// Decided outcomes of `starts`, rolling back writers found abandoned.
    fn resolve(&self, table: &TableRef, starts: &[Timestamp]) -> TxnResult<Statuses> {
        let txns = &self.inner.txns;
        let mut known = txns.load(starts)?;
        let mut missing: Vec<Timestamp> = starts
            .iter()
            .copied()
            .filter(|ts| !known.contains_key(ts))
            .collect();
        if missing.is_empty() {
            return Ok(known);
        }
        if let ReadMode::Validation { own_start } = self.mode {
            if let Some(later) = missing.iter().find(|ts| **ts > own_start) {
                return Err(TxnError::SerializableConflict {
                    table: table.clone(),
                    detail: format!(
                        "transaction {later}, which started after this one, is still undecided"
                    ),
                });
            }
        }
        // A writer mid-commit holds the lock on its own entry: let it finish first.
        let commit_locks: Vec<_> = missing.iter().map(|ts| txns.commit_lock(*ts)).collect();
        match self
            .inner
            .locks
            .wait_for_locks(&commit_locks, self.inner.config.lock_timeout)
        {
            // After a timeout the writer is stuck; rolling it back is still safe (one PUE wins).
            Ok(()) | Err(LockError::Timeout { .. }) => {}
            Err(e) => return Err(TxnError::Lock(e)),
        }
        known.extend(txns.load_uncached(&missing)?);
        missing.retain(|ts| !known.contains_key(ts));
        for ts in missing {
            match txns.put_unless_exists(ts, TxnStatus::Aborted) {
                Ok(()) => {
                    known.insert(ts, TxnStatus::Aborted);
                }
                Err(KvsError::KeyAlreadyExists { .. }) => {
                    // The writer (or another reader) decided first: use that outcome.
                    known.extend(txns.load_uncached(&[ts])?);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(known)
    }

    /// A sentinel is the newest version below our bound: a version we need was swept, unless
    /// the sentinel is orphaned (no committed version above it at all).
    fn check_sentinel(&self, table: &TableRef, cell: &Cell) -> TxnResult<()> {
        let all =
            self.inner
                .kvs
                .get_all_timestamps(table, std::slice::from_ref(cell), MAX_READ_TS)?;
        let writers: Vec<Timestamp> = all
            .get(cell)
            .into_iter()
            .flatten()
            .copied()
            .filter(|ts| *ts != SWEEP_SENTINEL_TS)
            .collect();
        let statuses = self.inner.txns.load(&writers)?;
        if statuses
            .values()
            .any(|s| matches!(s, TxnStatus::Committed(_)))
        {
            return Err(TxnError::SweepSentinel {
                table: table.clone(),
                cell: cell.clone(),
            });
        }
        Ok(())
    }

    /// Post-filters raw versions until every cell is either visible (tombstones included) or
    /// absent.
    pub fn resolve_raw(
        &self,
        table: &TableRef,
        mut raw: BTreeMap<Cell, Value>,
    ) -> TxnResult<BTreeMap<Cell, Value>> {
        let mut visible = BTreeMap::new();
        for round in 0..MAX_POST_FILTER_ROUNDS {
            if raw.is_empty() {
                return Ok(visible);
            }
            let own_start = match self.mode {
                ReadMode::Validation { own_start } => Some(own_start),
                ReadMode::Snapshot => None,
            };
            // Our own versions (validation only) are skipped below, never resolved: resolving
            // them would wait on our own commit lock and then roll ourselves back.
            let mut starts: Vec<Timestamp> = raw
                .values()
                .map(|v| v.timestamp)
                .filter(|ts| *ts != SWEEP_SENTINEL_TS && Some(*ts) != own_start)
                .collect();
            starts.sort_unstable();
            starts.dedup();
            let statuses = self.resolve(table, &starts)?;
            // Usually every version read was committed before our read timestamp: then they
            // are all visible as read, without moving them one by one into another map.
            let visible_as_read = |value: &Value| {
                value.timestamp != SWEEP_SENTINEL_TS
                    && Some(value.timestamp) != own_start
                    && matches!(statuses.get(&value.timestamp),
                        Some(TxnStatus::Committed(commit)) if *commit < self.read_ts)
            };
            if raw.values().all(visible_as_read) {
                if visible.is_empty() {
                    return Ok(raw);
                }
                visible.append(&mut raw);
                return Ok(visible);
            }
            let mut reload: Vec<(Cell, Timestamp)> = Vec::new();
            for (cell, value) in raw {
                if value.timestamp == SWEEP_SENTINEL_TS {
                    self.check_sentinel(table, &cell)?;
                    continue;
                }
                if Some(value.timestamp) == own_start {
                    reload.push((cell, value.timestamp));
                    continue;
                }
                match statuses.get(&value.timestamp) {
                    Some(TxnStatus::Committed(commit)) if *commit < self.read_ts => {
                        visible.insert(cell, value);
                    }
                    // Aborted, or committed at/after our read timestamp: look below it.
                    _ if round >= SKIP_FROM_ROUND => {
                        let bound = self.skip_invisible(table, &cell, value.timestamp)?;
                        reload.push((cell, bound));
                    }
                    _ => reload.push((cell, value.timestamp)),
                }
            }
            raw = if reload.is_empty() {
                BTreeMap::new()
            } else {
                self.inner.kvs.get(table, &reload)?
            };
        }
        Err(TxnError::TooManyPostFilterRounds {
            table: table.clone(),
            iterations: MAX_POST_FILTER_ROUNDS,
        })
    }

    /// The bound to re-read `cell` at, given that its version at `below` is invisible to this
    /// read: just above the newest version below `below` that may be visible (its writer
    /// committed before the read timestamp), or that the next round handles as usual (a
    /// sentinel, or a validating transaction's own version), past every version in between. Their outcomes are looked up in
    /// batches, and the undecided ones among them, which reading below one version at a time
    /// would decide one per round, are decided together. So a cell with a long run of invisible
    /// versions (a hot cell in a restored backup, whose transactions after the backup
    /// timestamp were cleaned) costs a few rounds rather than one per version.
    fn skip_invisible(
        &self,
        table: &TableRef,
        cell: &Cell,
        below: Timestamp,
    ) -> TxnResult<Timestamp> {
        let mut versions = self
            .inner
            .kvs
            .get_all_timestamps(table, std::slice::from_ref(cell), below)?
            .remove(cell)
            .unwrap_or_default();
        versions.sort_unstable_by(|a, b| b.cmp(a));
        versions.dedup();
        let visible = |status: Option<&TxnStatus>| matches!(status, Some(TxnStatus::Committed(commit)) if *commit < self.read_ts);
        let own_start = match self.mode {
            ReadMode::Validation { own_start } => Some(own_start),
            ReadMode::Snapshot => None,
        };
        let special = |ts: &Timestamp| *ts == SWEEP_SENTINEL_TS || Some(*ts) == own_start;
        for batch in versions.chunks(SKIP_BATCH) {
            let writers: Vec<Timestamp> = batch.iter().copied().filter(|ts| !special(ts)).collect();
            let mut known = self.inner.txns.load(&writers)?;
            // The undecided writers above the first version that may be visible.
            let undecided: Vec<Timestamp> = batch
                .iter()
                .copied()
                .take_while(|ts| !special(ts) && !visible(known.get(ts)))
                .filter(|ts| !known.contains_key(ts))
                .collect();
            if !undecided.is_empty() {
                known.extend(self.resolve(table, &undecided)?);
            }
            if let Some(ts) = batch
                .iter()
                .find(|ts| special(ts) || !matches!(known.get(ts), Some(s) if !visible(Some(s))))
            {
                return Ok(ts.saturating_add(1));
            }
        }
        // No version below `below` may be visible: re-read below the oldest, finding nothing.
        Ok(versions.last().copied().unwrap_or(below))
    }

    /// One cell's visible version (a tombstone included). Usually the store's newest version
    /// below the read timestamp was committed before it, by a writer whose outcome is cached:
    /// that version is the answer, without the maps of a many-cell read. Anything else (a
    /// sentinel, a validation read, an outcome to load or decide, a version to look below)
    /// takes [`Self::resolve_raw`].
    pub fn get_cell(&self, table: &TableRef, cell: &Cell) -> TxnResult<Option<Value>> {
        let Some(raw) = self.inner.kvs.get_one(table, cell, self.read_ts)? else {
            return Ok(None);
        };
        if matches!(self.mode, ReadMode::Snapshot)
            && raw.timestamp != SWEEP_SENTINEL_TS
            && matches!(self.inner.txns.cached(raw.timestamp),
                Some(TxnStatus::Committed(commit)) if commit < self.read_ts)
        {
            return Ok(Some(raw));
        }
        Ok(self
            .resolve_raw(table, BTreeMap::from([(cell.clone(), raw)]))?
            .into_values()
            .next())
    }

    pub fn get_cells(&self, table: &TableRef, cells: &[Cell]) -> TxnResult<BTreeMap<Cell, Value>> {
        let requests: Vec<(Cell, Timestamp)> =
            cells.iter().map(|c| (c.clone(), self.read_ts)).collect();
        let raw = self.inner.kvs.get(table, &requests)?;
        self.resolve_raw(table, raw)
    }

    pub fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
    ) -> TxnResult<BTreeMap<Cell, Value>> {
        let raw = self
            .inner
            .kvs
            .get_rows(table, rows, columns, self.read_ts)?;
        self.resolve_raw(table, raw)
    }

    pub fn get_column_range(
        &self,
        table: &TableRef,
        row: &[u8],
        columns: &ColumnRange,
    ) -> TxnResult<BTreeMap<Cell, Value>> {
        let raw = self
            .inner
            .kvs
            .get_rows_column_range(table, &[row.to_vec()], columns, self.read_ts)?
            .collect::<Result<BTreeMap<Cell, Value>, KvsError>>()?;
        self.resolve_raw(table, raw)
    }

    /// Post-filters a batch of consecutive raw rows of a scan, keeping their order.
    pub fn resolve_rows(
        &self,
        table: &TableRef,
        rows: Vec<RowResult>,
        reverse: bool,
    ) -> TxnResult<Vec<RowResult>> {
        // Usually every version read was committed before our read timestamp: the rows are
        // then visible as they are, and need not be taken apart cell by cell.
        let mut starts: Vec<Timestamp> = rows
            .iter()
            .flat_map(|r| r.columns.values().map(|v| v.timestamp))
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let plain = |ts: &Timestamp| {
            *ts != SWEEP_SENTINEL_TS
                && !matches!(self.mode, ReadMode::Validation { own_start } if own_start == *ts)
        };
        if starts.iter().all(plain) {
            let statuses = self.inner.txns.load(&starts)?;
            let visible = |ts: &Timestamp| matches!(statuses.get(ts), Some(TxnStatus::Committed(commit)) if *commit < self.read_ts);
            if starts.iter().all(visible) {
                return Ok(rows);
            }
        }
        let mut raw = BTreeMap::new();
        for row in rows {
            for (column, value) in row.columns {
                raw.insert(Cell::new(row.row.clone(), column)?, value);
            }
        }
        let mut out: Vec<RowResult> = Vec::new();
        for (cell, value) in self.resolve_raw(table, raw)? {
            let (row, column) = cell.into_parts();
            match out.last_mut() {
                Some(last) if last.row == row => {
                    last.columns.insert(column, value);
                }
                _ => out.push(RowResult {
                    row,
                    columns: BTreeMap::from([(column, value)]),
                }),
            }
        }
        if reverse {
            out.reverse();
        }
        Ok(out)
    }
}
