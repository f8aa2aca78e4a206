//! A transaction: a write buffer plus read state. Reads see the snapshot at `start_ts` merged
//! with the transaction's own writes; nothing reaches the store before commit.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use ortelius_kvs::{
    Cell, ColumnRange, ColumnSelection, RangeRequest, RowIter, RowRange, TableRef, Timestamp, Value,
};
use ortelius_timelock::LockToken;

use crate::error::{TxnError, TxnResult};
use crate::manager::Inner;
use crate::reader::{ReadMode, Reader};

/// One row of a transactional range scan: visible columns and their values, ascending.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub row: Vec<u8>,
    pub columns: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// A read that serializable validation re-executes at the commit timestamp.
#[derive(Clone, Debug)]
pub(crate) enum ReadSpec {
    Cells(Vec<Cell>),
    Rows(Vec<Vec<u8>>, ColumnSelection),
    /// A scan, clipped to the rows fetched so far.
    Range(RangeRequest),
    ColumnRange(Vec<u8>, ColumnRange),
}

/// A recorded read: what it asked and the non-deleted values the store showed (own writes
/// excluded).
#[derive(Clone, Debug)]
pub(crate) struct ReadRecord {
    pub table: TableRef,
    pub spec: ReadSpec,
    pub seen: BTreeMap<Cell, Vec<u8>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum State {
    Open,
    Committing,
    Committed,
    Aborted,
    Failed,
}

impl State {
    fn describe(self) -> &'static str {
        match self {
            State::Open => "open",
            State::Committing => "committing",
            State::Committed => "committed",
            State::Aborted => "aborted",
            State::Failed => "failed",
        }
    }
}

pub(crate) type WriteBuffer = BTreeMap<TableRef, BTreeMap<Cell, Vec<u8>>>;

/// A snapshot-isolated (optionally serializable) transaction. Thread-safe: reads and writes
/// take `&self`.
pub struct Transaction {
    pub(crate) inner: Arc<Inner>,
    pub(crate) start_ts: Timestamp,
    pub(crate) immutable_lock: Option<LockToken>,
    pub(crate) read_only: bool,
    pub(crate) serializable: bool,
    /// When it began: read-only transactions time out after `read_timeout`.
    pub(crate) started: std::time::Instant,
    pub(crate) state: Mutex<State>,
    pub(crate) writes: Mutex<WriteBuffer>,
    pub(crate) reads: Mutex<Vec<ReadRecord>>,
    /// The commit timestamp, once the commit fetched one.
    pub(crate) commit_ts: std::sync::OnceLock<Timestamp>,
}

fn poisoned() -> TxnError {
    TxnError::NotOpen {
        state: "poisoned by a panic in another thread",
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> TxnResult<MutexGuard<'_, T>> {
    m.lock().map_err(|_| poisoned())
}

fn non_empty(values: BTreeMap<Cell, Value>) -> BTreeMap<Cell, Vec<u8>> {
    // Inserted one by one, in order: collecting would gather the entries into a vector and
    // sort it first, which for the usual handful of cells costs more than the inserts.
    let mut out = BTreeMap::new();
    for (cell, value) in values {
        if !value.is_empty() {
            out.insert(cell, value.contents);
        }
    }
    out
}

impl Transaction {
    /// The snapshot timestamp: this transaction sees writes committed before it.
    pub fn start_ts(&self) -> Timestamp {
        self.start_ts
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub(crate) fn reader(&self) -> Reader<'_> {
        Reader {
            inner: &self.inner,
            read_ts: self.start_ts,
            mode: ReadMode::Snapshot,
        }
    }

    fn ensure_open(&self) -> TxnResult<()> {
        let state = *lock(&self.state)?;
        if state == State::Open {
            let timeout = self.inner.config.read_timeout;
            if self.read_only && self.started.elapsed() > timeout {
                return Err(TxnError::ReadTimeout {
                    start_ts: self.start_ts,
                    timeout,
                });
            }
            Ok(())
        } else {
            Err(TxnError::NotOpen {
                state: state.describe(),
            })
        }
    }

    fn check_table(&self, table: &TableRef) -> TxnResult<()> {
        if table.namespace().is_empty() && table.name().starts_with('_') {
            return Err(TxnError::SystemTable {
                table: table.clone(),
            });
        }
        Ok(())
    }

    /// Whether reads of `table` must be recorded for validation at commit.
    fn records_reads(&self, table: &TableRef) -> TxnResult<bool> {
        if self.read_only {
            return Ok(false);
        }
        let handler = self.inner.metadata(table)?.conflict_handler;
        Ok(handler.checks_read_write() || (self.serializable && handler.checks_write_write()))
    }

    /// Records a read for validation at commit, if this table's reads need it (`spec` and
    /// `seen`, what it found, are only built then).
    fn record(
        &self,
        table: &TableRef,
        spec: impl FnOnce() -> ReadSpec,
        seen: impl FnOnce() -> BTreeMap<Cell, Vec<u8>>,
    ) -> TxnResult<()> {
        if self.records_reads(table)? {
            lock(&self.reads)?.push(ReadRecord {
                table: table.clone(),
                spec: spec(),
                seen: seen(),
            });
        }
        Ok(())
    }

    /// This transaction's own writes to cells of `table` accepted by `wanted`, in cell order
    /// (copied under the lock: only the matching ones).
    fn local_writes(
        &self,
        table: &TableRef,
        wanted: impl Fn(&Cell) -> bool,
    ) -> TxnResult<Vec<(Cell, Vec<u8>)>> {
        Ok(lock(&self.writes)?
            .get(table)
            .into_iter()
            .flatten()
            .filter(|(cell, _)| wanted(cell))
            .map(|(cell, value)| (cell.clone(), value.clone()))
            .collect())
    }

    /// The current values of `cells` (absent when never written or deleted).
    pub fn get(&self, table: &TableRef, cells: &[Cell]) -> TxnResult<BTreeMap<Cell, Vec<u8>>> {
        self.ensure_open()?;
        self.check_table(table)?;
        // Each cell is either one this transaction wrote (its buffered value, maybe a delete)
        // or one to read from the store: all of them when it wrote nothing in this table.
        let mut local = Vec::new();
        let from_store: Cow<'_, [Cell]> = {
            let writes = lock(&self.writes)?;
            match writes.get(table) {
                None => Cow::Borrowed(cells),
                Some(written) => {
                    let mut from_store = Vec::with_capacity(cells.len());
                    for cell in cells {
                        match written.get(cell) {
                            Some(value) => local.push((cell.clone(), value.clone())),
                            None => from_store.push(cell.clone()),
                        }
                    }
                    Cow::Owned(from_store)
                }
            }
        };
        let seen = non_empty(self.reader().get_cells(table, &from_store)?);
        self.record(
            table,
            || ReadSpec::Cells(from_store.into_owned()),
            || seen.clone(),
        )?;
        let mut out = seen;
        for (cell, value) in local {
            if !value.is_empty() {
                out.insert(cell, value);
            }
        }
        Ok(out)
    }

    /// The current value of one cell: [`get`](Self::get) of one cell, without its maps.
    pub fn get_one(&self, table: &TableRef, cell: &Cell) -> TxnResult<Option<Vec<u8>>> {
        self.ensure_open()?;
        self.check_table(table)?;
        if let Some(value) = lock(&self.writes)?.get(table).and_then(|w| w.get(cell)) {
            return Ok((!value.is_empty()).then(|| value.clone()));
        }
        let cells = std::slice::from_ref(cell);
        let found = self
            .reader()
            .get_cell(table, cell)?
            .filter(|value| !value.is_empty())
            .map(|value| value.contents);
        self.record(
            table,
            || ReadSpec::Cells(cells.to_vec()),
            || found.iter().map(|v| (cell.clone(), v.clone())).collect(),
        )?;
        Ok(found)
    }

    /// Every selected cell of each row.
    pub fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
    ) -> TxnResult<BTreeMap<Cell, Vec<u8>>> {
        self.ensure_open()?;
        self.check_table(table)?;
        let seen = non_empty(self.reader().get_rows(table, rows, columns)?);
        self.record(
            table,
            || ReadSpec::Rows(rows.to_vec(), columns.clone()),
            || seen.clone(),
        )?;
        let mut out = seen;
        let wanted =
            |cell: &Cell| rows.iter().any(|r| r == cell.row()) && columns.contains(cell.column());
        for (cell, value) in self.local_writes(table, wanted)? {
            if value.is_empty() {
                out.remove(&cell);
            } else {
                out.insert(cell, value);
            }
        }
        Ok(out)
    }

    /// The cells of one row within a column range, ascending.
    pub fn get_column_range(
        &self,
        table: &TableRef,
        row: &[u8],
        columns: &ColumnRange,
    ) -> TxnResult<Vec<(Cell, Vec<u8>)>> {
        self.ensure_open()?;
        self.check_table(table)?;
        let seen = non_empty(self.reader().get_column_range(table, row, columns)?);
        self.record(
            table,
            || ReadSpec::ColumnRange(row.to_vec(), columns.clone()),
            || seen.clone(),
        )?;
        let mut out = seen;
        let wanted = |cell: &Cell| cell.row() == row && columns.contains(cell.column());
        for (cell, value) in self.local_writes(table, wanted)? {
            if value.is_empty() {
                out.remove(&cell);
            } else {
                out.insert(cell, value);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// Streams the rows of a range (forward or reverse) as of this transaction's snapshot,
    /// with its own writes merged in. The store is read in batches as the caller pulls.
    pub fn get_range<'t>(
        &'t self,
        table: &TableRef,
        request: &RangeRequest,
    ) -> TxnResult<RangeScan<'t>> {
        self.ensure_open()?;
        self.check_table(table)?;
        let mut local: Vec<Row> = Vec::new();
        let wanted = |cell: &Cell| {
            request.rows.contains(cell.row()) && request.columns.contains(cell.column())
        };
        for (cell, value) in self.local_writes(table, wanted)? {
            let (row, column) = cell.into_parts();
            match local.last_mut() {
                Some(last) if last.row == row => {
                    last.columns.insert(column, value);
                }
                _ => local.push(Row {
                    row,
                    columns: BTreeMap::from([(column, value)]),
                }),
            }
        }
        if request.reverse {
            local.reverse();
        }
        let record = if self.records_reads(table)? {
            let mut reads = lock(&self.reads)?;
            reads.push(ReadRecord {
                table: table.clone(),
                spec: ReadSpec::Range(clip(request, None)),
                seen: BTreeMap::new(),
            });
            Some(reads.len() - 1)
        } else {
            None
        };
        let store = self.inner.kvs.get_range(table, request, self.start_ts)?;
        Ok(RangeScan {
            txn: self,
            table: table.clone(),
            request: request.clone(),
            store: Some(store),
            store_rows: VecDeque::new(),
            local: local.into(),
            record,
        })
    }

    fn write(&self, table: &TableRef, cell: &Cell, value: Vec<u8>) -> TxnResult<()> {
        self.ensure_open()?;
        self.check_table(table)?;
        if self.read_only {
            return Err(TxnError::WriteInReadOnly {
                table: table.clone(),
            });
        }
        self.inner.metadata(table)?;
        lock(&self.writes)?
            .entry(table.clone())
            .or_default()
            .insert(cell.clone(), value);
        Ok(())
    }

    /// Buffers a write; it reaches the store only at commit.
    pub fn put(&self, table: &TableRef, cell: &Cell, value: impl Into<Vec<u8>>) -> TxnResult<()> {
        let value = value.into();
        if value.is_empty() {
            return Err(TxnError::EmptyValue {
                table: table.clone(),
                cell: cell.clone(),
            });
        }
        self.write(table, cell, value)
    }

    /// Buffers a delete (a tombstone).
    pub fn delete(&self, table: &TableRef, cell: &Cell) -> TxnResult<()> {
        self.write(table, cell, Vec::new())
    }

    /// Commits: the commit sequence of `commit.rs`. Afterwards the transaction is closed.
    pub fn commit(&self) -> TxnResult<()> {
        {
            let mut state = lock(&self.state)?;
            if *state != State::Open {
                return Err(TxnError::NotOpen {
                    state: state.describe(),
                });
            }
            *state = State::Committing;
        }
        let result = crate::commit::commit(self);
        *lock(&self.state)? = if result.is_ok() {
            State::Committed
        } else {
            State::Failed
        };
        self.release_immutable_lock();
        result
    }

    /// The commit timestamp, once a commit fetched one — also when that commit then failed or
    /// its outcome is unknown. `None` before, and for transactions that wrote nothing.
    pub fn commit_ts(&self) -> Option<Timestamp> {
        self.commit_ts.get().copied()
    }

    /// Discards the buffered writes and closes the transaction.
    pub fn abort(&self) {
        if let Ok(mut state) = self.state.lock() {
            if *state == State::Open {
                *state = State::Aborted;
            }
        }
        self.release_immutable_lock();
    }

    fn release_immutable_lock(&self) {
        if let Some(token) = self.immutable_lock {
            if let Ok(mut guards) = self.inner.open_guards.lock() {
                guards.remove(&token);
            }
            // Best effort: an unreleased guard expires with its lease.
            let _ = self.inner.locks.unlock(&[token]);
        }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        self.abort();
    }
}

/// The request clipped to rows already fetched (`last` = last fetched row), for validation.
pub(crate) fn clip(request: &RangeRequest, last: Option<&[u8]>) -> RangeRequest {
    let mut clipped = request.clone();
    if let Some(last) = last {
        if request.reverse {
            clipped.rows = RowRange {
                start: last.to_vec(),
                end: request.rows.end.clone(),
            };
        } else {
            let mut after = last.to_vec();
            after.push(0);
            clipped.rows = RowRange {
                start: request.rows.start.clone(),
                end: after,
            };
        }
    }
    clipped
}

/// Rows of the store fetched per post-filtering batch.
const SCAN_BATCH_ROWS: usize = 64;

/// A streaming transactional range scan.
pub struct RangeScan<'t> {
    txn: &'t Transaction,
    table: TableRef,
    request: RangeRequest,
    store: Option<RowIter<'t>>,
    store_rows: VecDeque<Row>,
    local: VecDeque<Row>,
    record: Option<usize>,
}

impl RangeScan<'_> {
    /// Fetches and post-filters the next batch of store rows.
    fn refill(&mut self) -> TxnResult<()> {
        let Some(store) = self.store.as_mut() else {
            return Ok(());
        };
        let mut raw = Vec::new();
        for row in store.by_ref() {
            raw.push(row?);
            if raw.len() == SCAN_BATCH_ROWS {
                break;
            }
        }
        let exhausted = raw.len() < SCAN_BATCH_ROWS;
        let last = raw.last().map(|r| r.row.clone());
        if exhausted {
            self.store = None;
        }
        let rows = self
            .txn
            .reader()
            .resolve_rows(&self.table, raw, self.request.reverse)?;
        let mut fetched = Vec::new();
        for row in rows {
            let columns: BTreeMap<Vec<u8>, Vec<u8>> = row
                .columns
                .into_iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(c, v)| (c, v.contents))
                .collect();
            if !columns.is_empty() {
                fetched.push(Row {
                    row: row.row,
                    columns,
                });
            }
        }
        if let Some(index) = self.record {
            let mut reads = lock(&self.txn.reads)?;
            if let Some(record) = reads.get_mut(index) {
                record.spec = ReadSpec::Range(clip(
                    &self.request,
                    if exhausted { None } else { last.as_deref() },
                ));
                for row in &fetched {
                    for (column, value) in &row.columns {
                        record
                            .seen
                            .insert(Cell::new(row.row.clone(), column.clone())?, value.clone());
                    }
                }
            }
        }
        self.store_rows.extend(fetched);
        Ok(())
    }

    fn next_row(&mut self) -> TxnResult<Option<Row>> {
        loop {
            if self.store_rows.is_empty() && self.store.is_some() {
                self.refill()?;
                continue;
            }
            let reverse = self.request.reverse;
            let take_local = match (self.store_rows.front(), self.local.front()) {
                (None, None) => return Ok(None),
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(l)) => {
                    if reverse {
                        l.row >= s.row
                    } else {
                        l.row <= s.row
                    }
                }
            };
            let row = if take_local {
                let mut local = self.local.pop_front().ok_or_else(poisoned)?;
                let mut merged = match self.store_rows.front() {
                    Some(s) if s.row == local.row => self
                        .store_rows
                        .pop_front()
                        .map(|r| r.columns)
                        .unwrap_or_default(),
                    _ => BTreeMap::new(),
                };
                for (column, value) in std::mem::take(&mut local.columns) {
                    if value.is_empty() {
                        merged.remove(&column);
                    } else {
                        merged.insert(column, value);
                    }
                }
                Row {
                    row: local.row,
                    columns: merged,
                }
            } else {
                self.store_rows.pop_front().ok_or_else(poisoned)?
            };
            if !row.columns.is_empty() {
                return Ok(Some(row));
            }
        }
    }
}

impl Iterator for RangeScan<'_> {
    type Item = TxnResult<Row>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_row() {
            Ok(row) => row.map(Ok),
            Err(e) => {
                self.store = None;
                self.store_rows.clear();
                self.local.clear();
                Some(Err(e))
            }
        }
    }
}
