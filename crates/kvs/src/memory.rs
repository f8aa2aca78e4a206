//! The in-memory backend: for tests and examples. One `RwLock` over every table; each cell keeps
//! its versions in a map by timestamp.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::error::{KvsError, KvsResult};
use crate::service::{CellIter, KeyValueService, RowIter};
use crate::types::{
    validate_read_ts, validate_version_ts, CandidateCell, CandidateCellsRequest, CandidatePage,
    Cell, CellWrites, CheckAndSetRequest, ColumnRange, ColumnSelection, RangeRequest, RowRange,
    RowResult, TableRef, Timestamp, TimestampRangeDelete, Value, ATOMIC_TS, SWEEP_SENTINEL_TS,
};

type Versions = BTreeMap<Timestamp, Vec<u8>>;

#[derive(Default)]
struct Table {
    metadata: Vec<u8>,
    cells: BTreeMap<Cell, Versions>,
}

impl Table {
    fn latest_below(&self, cell: &Cell, ts: Timestamp) -> Option<Value> {
        latest_below(self.cells.get(cell)?, ts)
    }

    /// Cells of `row` in column order, from the smallest possible key of the row.
    fn row_cells<'a>(&'a self, row: &'a [u8]) -> impl Iterator<Item = (&'a Cell, &'a Versions)> {
        self.cells
            .range(row_start(row)..)
            .take_while(move |(cell, _)| cell.row() == row)
    }
}

fn latest_below(versions: &Versions, ts: Timestamp) -> Option<Value> {
    versions
        .range(..ts)
        .next_back()
        .map(|(&t, v)| Value::new(v.clone(), t))
}

/// The smallest key of a row (no valid cell has an empty column, so this sorts first).
fn row_start(row: &[u8]) -> Cell {
    Cell {
        row: row.to_vec(),
        column: Vec::new(),
    }
}

/// How many rows one refill of a streaming range read collects under the lock.
const RANGE_BATCH_ROWS: usize = 256;

/// An in-memory [`KeyValueService`].
#[derive(Default)]
pub struct MemoryKvs {
    tables: RwLock<BTreeMap<TableRef, Table>>,
}

impl MemoryKvs {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> KvsResult<RwLockReadGuard<'_, BTreeMap<TableRef, Table>>> {
        self.tables.read().map_err(|_| poisoned())
    }

    fn write(&self) -> KvsResult<RwLockWriteGuard<'_, BTreeMap<TableRef, Table>>> {
        self.tables.write().map_err(|_| poisoned())
    }

    fn with_table<R>(&self, table: &TableRef, f: impl FnOnce(&Table) -> R) -> KvsResult<R> {
        let tables = self.read()?;
        let t = tables.get(table).ok_or_else(|| not_found(table))?;
        Ok(f(t))
    }

    fn with_table_mut<R>(
        &self,
        table: &TableRef,
        f: impl FnOnce(&mut Table) -> KvsResult<R>,
    ) -> KvsResult<R> {
        let mut tables = self.write()?;
        let t = tables.get_mut(table).ok_or_else(|| not_found(table))?;
        f(t)
    }

    /// Collects up to [`RANGE_BATCH_ROWS`] rows after `cursor` for a streaming range read.
    fn range_batch(
        &self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
        cursor: &RangeCursor,
    ) -> KvsResult<(Vec<RowResult>, RangeCursor)> {
        self.with_table(table, |t| {
            let rows = &request.rows;
            let lower = match cursor {
                RangeCursor::After(row) if !request.reverse => Bound::Excluded(row_end(row)),
                _ => Bound::Included(row_start(&rows.start)),
            };
            let upper = match cursor {
                RangeCursor::After(row) if request.reverse => Bound::Excluded(row_start(row)),
                _ if rows.end.is_empty() => Bound::Unbounded,
                _ => Bound::Excluded(row_start(&rows.end)),
            };
            if is_empty_range(&lower, &upper) {
                return (Vec::new(), RangeCursor::Done);
            }
            let range = t.cells.range((lower, upper));
            let mut out: Vec<RowResult> = Vec::new();
            let mut next = RangeCursor::Done;
            let add = |cell: &Cell, versions: &Versions, out: &mut Vec<RowResult>| {
                if !request.columns.contains(cell.column()) {
                    return;
                }
                if let Some(v) = latest_below(versions, ts) {
                    match out.last_mut() {
                        Some(r) if r.row == cell.row() => {
                            r.columns.insert(cell.column().to_vec(), v);
                        }
                        _ => out.push(RowResult {
                            row: cell.row().to_vec(),
                            columns: BTreeMap::from([(cell.column().to_vec(), v)]),
                        }),
                    }
                }
            };
            let mut rows_seen = 0usize;
            let mut last_row: Option<&[u8]> = None;
            if request.reverse {
                for (cell, versions) in range.rev() {
                    if last_row != Some(cell.row()) {
                        if rows_seen == RANGE_BATCH_ROWS {
                            next = RangeCursor::After(last_row.unwrap_or_default().to_vec());
                            break;
                        }
                        rows_seen += 1;
                        last_row = Some(cell.row());
                    }
                    add(cell, versions, &mut out);
                }
            } else {
                for (cell, versions) in range {
                    if last_row != Some(cell.row()) {
                        if rows_seen == RANGE_BATCH_ROWS {
                            next = RangeCursor::After(last_row.unwrap_or_default().to_vec());
                            break;
                        }
                        rows_seen += 1;
                        last_row = Some(cell.row());
                    }
                    add(cell, versions, &mut out);
                }
            }
            (out, next)
        })
    }
}

/// The first key after every cell of `row`: the row followed by a zero byte, empty column.
fn row_end(row: &[u8]) -> Cell {
    let mut next = row.to_vec();
    next.push(0);
    row_start(&next)
}

/// Whether `(lower, upper)` selects nothing; `BTreeMap::range` panics on such bounds.
fn is_empty_range(lower: &Bound<Cell>, upper: &Bound<Cell>) -> bool {
    match (lower, upper) {
        (Bound::Included(l), Bound::Included(u)) => l > u,
        (Bound::Included(l) | Bound::Excluded(l), Bound::Excluded(u))
        | (Bound::Excluded(l), Bound::Included(u)) => l >= u,
        _ => false,
    }
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "the in-memory store's lock was poisoned by a panic".to_owned(),
    }
}

fn not_found(table: &TableRef) -> KvsError {
    KvsError::TableNotFound {
        table: table.clone(),
    }
}

enum RangeCursor {
    Start,
    After(Vec<u8>),
    Done,
}

struct MemoryRangeIter<'a> {
    kvs: &'a MemoryKvs,
    table: TableRef,
    request: RangeRequest,
    ts: Timestamp,
    cursor: RangeCursor,
    buffer: VecDeque<RowResult>,
}

impl Iterator for MemoryRangeIter<'_> {
    type Item = KvsResult<RowResult>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(row) = self.buffer.pop_front() {
                return Some(Ok(row));
            }
            if matches!(self.cursor, RangeCursor::Done) {
                return None;
            }
            match self
                .kvs
                .range_batch(&self.table, &self.request, self.ts, &self.cursor)
            {
                Ok((rows, next)) => {
                    self.buffer.extend(rows);
                    self.cursor = next;
                }
                Err(e) => {
                    self.cursor = RangeCursor::Done;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// Checks a put batch against existing versions: identical rewrites pass, different values fail.
fn check_rewrites<'a>(
    table_ref: &TableRef,
    table: &Table,
    writes: impl Iterator<Item = (&'a Cell, Timestamp, &'a [u8])>,
) -> KvsResult<()> {
    for (cell, ts, value) in writes {
        if let Some(existing) = table.cells.get(cell).and_then(|v| v.get(&ts)) {
            if existing.as_slice() != value {
                return Err(KvsError::ValueAlreadyWritten {
                    table: table_ref.clone(),
                    cell: cell.clone(),
                    timestamp: ts,
                });
            }
        }
    }
    Ok(())
}

impl KeyValueService for MemoryKvs {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let mut tables = self.write()?;
        tables.entry(table.clone()).or_default().metadata = metadata.to_vec();
        Ok(())
    }

    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        self.write()?.remove(table);
        Ok(())
    }

    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            t.cells.clear();
            Ok(())
        })
    }

    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        Ok(self.read()?.keys().cloned().collect())
    }

    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        self.with_table(table, |t| t.metadata.clone())
    }

    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            t.metadata = metadata.to_vec();
            Ok(())
        })
    }

    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        self.with_table(table, |t| {
            cells
                .iter()
                .filter_map(|(cell, ts)| Some((cell.clone(), t.latest_below(cell, *ts)?)))
                .collect()
        })
    }

    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        validate_read_ts(ts)?;
        self.with_table(table, |t| {
            let mut out = BTreeMap::new();
            for row in rows {
                for (cell, versions) in t.row_cells(row) {
                    if columns.contains(cell.column()) {
                        if let Some(v) = latest_below(versions, ts) {
                            out.insert(cell.clone(), v);
                        }
                    }
                }
            }
            out
        })
    }

    fn get_range<'a>(
        &'a self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<RowIter<'a>> {
        validate_read_ts(ts)?;
        self.with_table(table, |_| ())?;
        Ok(Box::new(MemoryRangeIter {
            kvs: self,
            table: table.clone(),
            request: request.clone(),
            ts,
            cursor: RangeCursor::Start,
            buffer: VecDeque::new(),
        }))
    }

    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>> {
        validate_read_ts(ts)?;
        let cells = self.with_table(table, |t| {
            let mut out = Vec::new();
            for row in rows {
                for (cell, versions) in t.row_cells(row) {
                    if columns.contains(cell.column()) {
                        if let Some(v) = latest_below(versions, ts) {
                            out.push(Ok((cell.clone(), v)));
                        }
                    }
                }
            }
            out
        })?;
        Ok(Box::new(cells.into_iter()))
    }

    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        Ok(self
            .get(table, cells)?
            .into_iter()
            .map(|(c, v)| (c, v.timestamp))
            .collect())
    }

    fn get_all_timestamps(
        &self,
        table: &TableRef,
        cells: &[Cell],
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Vec<Timestamp>>> {
        validate_read_ts(ts)?;
        self.with_table(table, |t| {
            cells
                .iter()
                .filter_map(|cell| {
                    let all: Vec<Timestamp> =
                        t.cells.get(cell)?.range(..ts).map(|(k, _)| *k).collect();
                    (!all.is_empty()).then(|| (cell.clone(), all))
                })
                .collect()
        })
    }

    fn get_candidate_cells_for_sweeping(
        &self,
        table: &TableRef,
        request: &CandidateCellsRequest,
    ) -> KvsResult<CandidatePage> {
        validate_read_ts(request.max_ts_exclusive)?;
        let batch = request.batch_size.max(1);
        self.with_table(table, |t| {
            let start = match &request.start {
                Some(c) => Bound::Included(c.clone()),
                None => Bound::Unbounded,
            };
            let mut cells = Vec::new();
            for (cell, versions) in t.cells.range((start, Bound::Unbounded)) {
                if cells.len() == batch {
                    return CandidatePage {
                        cells,
                        next_start: Some(cell.clone()),
                    };
                }
                if let Some(candidate) = candidate(cell, versions, request) {
                    cells.push(candidate);
                }
            }
            CandidatePage {
                cells,
                next_start: None,
            }
        })
    }

    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        self.with_table_mut(table, |t| {
            check_rewrites(table, t, writes.iter().map(|(c, v)| (c, ts, v.as_slice())))?;
            for (cell, value) in writes {
                t.cells
                    .entry(cell.clone())
                    .or_default()
                    .insert(ts, value.clone());
            }
            Ok(())
        })
    }

    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        let mut tables = self.write()?;
        for (table, cells) in writes {
            let t = tables.get(table).ok_or_else(|| not_found(table))?;
            check_rewrites(table, t, cells.iter().map(|(c, v)| (c, ts, v.as_slice())))?;
        }
        for (table, cells) in writes {
            let t = tables.get_mut(table).ok_or_else(|| not_found(table))?;
            for (cell, value) in cells {
                t.cells
                    .entry(cell.clone())
                    .or_default()
                    .insert(ts, value.clone());
            }
        }
        Ok(())
    }

    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        for (_, v) in values {
            validate_version_ts(v.timestamp, true)?;
        }
        self.with_table_mut(table, |t| {
            check_rewrites(
                table,
                t,
                values
                    .iter()
                    .map(|(c, v)| (c, v.timestamp, v.contents.as_slice())),
            )?;
            for (cell, value) in values {
                t.cells
                    .entry(cell.clone())
                    .or_default()
                    .insert(value.timestamp, value.contents.clone());
            }
            Ok(())
        })
    }

    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            let existing: Vec<Cell> = writes
                .iter()
                .filter(|(c, _)| t.cells.get(c).is_some_and(|v| v.contains_key(&ATOMIC_TS)))
                .map(|(c, _)| c.clone())
                .collect();
            if !existing.is_empty() {
                return Err(KvsError::KeyAlreadyExists {
                    table: table.clone(),
                    cells: existing,
                });
            }
            for (cell, value) in writes {
                t.cells
                    .entry(cell.clone())
                    .or_default()
                    .insert(ATOMIC_TS, value.clone());
            }
            Ok(())
        })
    }

    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            let actual = t
                .cells
                .get(&request.cell)
                .and_then(|v| v.get(&ATOMIC_TS))
                .cloned();
            if actual != request.expected {
                return Err(KvsError::CheckAndSetFailed {
                    table: table.clone(),
                    cell: request.cell.clone(),
                    actual,
                });
            }
            t.cells
                .entry(request.cell.clone())
                .or_default()
                .insert(ATOMIC_TS, request.new_value.clone());
            Ok(())
        })
    }

    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            for (cell, ts) in versions {
                if let Some(v) = t.cells.get_mut(cell) {
                    v.remove(ts);
                    if v.is_empty() {
                        t.cells.remove(cell);
                    }
                }
            }
            Ok(())
        })
    }

    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            t.cells.retain(|cell, _| !rows.contains(cell.row()));
            Ok(())
        })
    }

    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            for (cell, range) in deletes {
                let (min, max) = range.bounds();
                if let Some(v) = t.cells.get_mut(cell) {
                    v.retain(|ts, _| !(min..=max).contains(ts));
                    if v.is_empty() {
                        t.cells.remove(cell);
                    }
                }
            }
            Ok(())
        })
    }

    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        self.with_table_mut(table, |t| {
            for cell in cells {
                t.cells
                    .entry(cell.clone())
                    .or_default()
                    .entry(SWEEP_SENTINEL_TS)
                    .or_default();
            }
            Ok(())
        })
    }
}

/// The sweep candidate for one cell, if it has versions below the bound.
fn candidate(
    cell: &Cell,
    versions: &Versions,
    request: &CandidateCellsRequest,
) -> Option<CandidateCell> {
    let below: Vec<(Timestamp, bool)> = versions
        .range(..request.max_ts_exclusive)
        .map(|(ts, v)| (*ts, v.is_empty()))
        .collect();
    let latest_is_empty = below.last()?.1;
    let timestamps: Vec<Timestamp> = below
        .into_iter()
        .map(|(ts, _)| ts)
        .filter(|ts| request.include_sentinels || *ts != SWEEP_SENTINEL_TS)
        .collect();
    (!timestamps.is_empty()).then(|| CandidateCell {
        cell: cell.clone(),
        timestamps,
        latest_is_empty,
    })
}
