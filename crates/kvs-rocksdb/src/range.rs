//! Streaming reads over the RocksDB key layout: row-range scans (forward and reverse) and
//! per-row column ranges. Each reads the newest version below the bound of every cell, skipping
//! older versions with a few `next()` steps and then a seek (RocksDB's own heuristic).

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;

use ortelius_kvs::{
    Cell, CellView, ColumnRange, ColumnSelection, KvsError, KvsResult, RangeRequest, RowResult,
    Timestamp, Value,
};
use rocksdb::{DBRawIterator, DB};

use crate::iter_pool::{read_options, Seeks};

use ortelius_kvs::keycodec as keys;

/// `next()` steps tried before falling back to a seek when skipping versions.
const SEQUENTIAL_SKIPS: usize = 4;

fn storage(e: rocksdb::Error) -> KvsError {
    KvsError::storage(e)
}

fn malformed(key: &[u8]) -> KvsError {
    KvsError::Corruption {
        detail: format!("malformed version key {}", key.escape_ascii()),
    }
}

/// Moves the iterator forward to the first key `>= target`.
fn advance_to(iter: &mut DBRawIterator<'_>, target: &[u8]) {
    for _ in 0..SEQUENTIAL_SKIPS {
        match iter.key() {
            Some(k) if k < target => iter.next(),
            _ => return,
        }
    }
    if iter.key().is_some_and(|k| k < target) {
        iter.seek(target);
    }
}

/// Space reused across the cells and rows of one read, so that reading a cell allocates
/// nothing: the current cell's key prefix, and its column name where it must be unescaped.
#[derive(Default)]
pub(crate) struct Scratch {
    cell_prefix: Vec<u8>,
    column: Vec<u8>,
}

/// Takes a found cell's row prefix (its key's, escaped), column name, version timestamp and
/// contents, borrowed for the call.
pub(crate) type Found<'f> = dyn FnMut(&[u8], &[u8], Timestamp, &[u8]) -> ControlFlow<()> + 'f;

/// The keys a walk over cells reads.
pub(crate) enum Scope<'s> {
    /// One row (its key prefix), up to `upper` (exclusive) when set.
    Row {
        prefix: &'s [u8],
        upper: Option<&'s [u8]>,
    },
    /// Every key the iterator reaches (its bounds end the walk), row after row.
    Forward,
}

/// Reads the cells in `scope` from the iterator's position, handing `found` each column
/// accepted by `select` with the timestamp and contents of its newest version `< ts`, in key
/// order, borrowed for the call. Stops early when `found` breaks. Leaves the iterator after
/// the last key read.
pub(crate) fn collect_cells(
    iter: &mut DBRawIterator<'_>,
    scope: Scope<'_>,
    select: &dyn Fn(&[u8]) -> bool,
    ts: Timestamp,
    scratch: &mut Scratch,
    found: &mut Found<'_>,
) -> KvsResult<ControlFlow<()>> {
    let Scratch {
        cell_prefix,
        column,
    } = scratch;
    // The cell read last (older versions of it are skipped), the length of its row prefix,
    // and the steps taken past it.
    cell_prefix.clear();
    let mut row_end = 0;
    let mut skipped = 0;
    loop {
        let Some(key) = iter.key() else {
            iter.status().map_err(storage)?;
            return Ok(ControlFlow::Continue(()));
        };
        if !cell_prefix.is_empty() && key.starts_with(cell_prefix) {
            // Most cells have few versions: a few `next()` steps, then one seek.
            if skipped < SEQUENTIAL_SKIPS {
                skipped += 1;
                iter.next();
            } else {
                iter.seek(keys::past_terminator(cell_prefix.clone()));
            }
            continue;
        }
        let key_row_end = match scope {
            Scope::Row { prefix, upper } => {
                if !key.starts_with(prefix) || upper.is_some_and(|u| key >= u) {
                    return Ok(ControlFlow::Continue(()));
                }
                prefix.len()
            }
            // Still the row of the cell before, or the next one.
            Scope::Forward if row_end > 0 && key.get(..row_end) == cell_prefix.get(..row_end) => {
                row_end
            }
            Scope::Forward => keys::row_prefix_len(key)?,
        };
        let layout = keys::layout_in_row(key, key_row_end)?;
        row_end = layout.row_end;
        cell_prefix.clear();
        cell_prefix.extend_from_slice(&key[..layout.cell_end]);
        skipped = 0;
        let (row_prefix, escaped_column) = cell_prefix.split_at(row_end);
        let name = keys::name_in(escaped_column, column).ok_or_else(|| malformed(key))?;
        if !select(name) {
            // On this cell's newest version: step past it.
            iter.next();
            skipped = 1;
            continue;
        }
        let newest = keys::ts_of(key, layout.cell_end).ok_or_else(|| malformed(key))?;
        if newest < ts {
            // The newest version is visible: read it where the iterator stands.
            let contents = iter.value().unwrap_or_default();
            if found(row_prefix, name, newest, contents).is_break() {
                return Ok(ControlFlow::Break(()));
            }
            iter.next();
            skipped = 1;
            continue;
        }
        advance_to(iter, &keys::with_ts(cell_prefix, ts - 1));
        if let (Some(k), Some(v)) = (iter.key(), iter.value()) {
            if k.starts_with(cell_prefix) {
                let version_ts = keys::ts_of(k, cell_prefix.len()).ok_or_else(|| malformed(k))?;
                if found(row_prefix, name, version_ts, v).is_break() {
                    return Ok(ControlFlow::Break(()));
                }
            }
        }
    }
}

/// Reads the whole row the iterator is positioned in (at `row_prefix`); `None` when no
/// selected cell has a version below `ts`.
pub(crate) fn collect_row(
    iter: &mut DBRawIterator<'_>,
    row_prefix: &[u8],
    columns: &ColumnSelection,
    ts: Timestamp,
    scratch: &mut Scratch,
) -> KvsResult<Option<RowResult>> {
    let mut cells = BTreeMap::new();
    // `found` never stops the read.
    let _ = collect_cells(
        iter,
        Scope::Row {
            prefix: row_prefix,
            upper: None,
        },
        &|c| columns.contains(c),
        ts,
        scratch,
        &mut |_, column, version_ts, contents| {
            cells.insert(column.to_vec(), Value::new(contents, version_ts));
            ControlFlow::Continue(())
        },
    )?;
    if cells.is_empty() {
        return Ok(None);
    }
    Ok(Some(RowResult {
        row: keys::row_name(row_prefix),
        columns: cells,
    }))
}

/// The rows of one table's row range, walked forward or in reverse; sees the store as of its
/// creation.
struct Rows<'a> {
    iter: Option<DBRawIterator<'a>>,
    reverse: bool,
    started: bool,
    lower: Vec<u8>,
    /// Scratch space reused across rows: the current row's key prefix, and a cell's.
    row_prefix: Vec<u8>,
    scratch: Scratch,
}

impl<'a> Rows<'a> {
    fn new(db: &'a DB, table_id: u32, request: &RangeRequest) -> Self {
        let rows = &request.rows;
        let lower = if rows.start.is_empty() {
            keys::table_start(table_id)
        } else {
            keys::row_prefix(table_id, &rows.start)
        };
        let upper = if rows.end.is_empty() {
            keys::table_end(table_id)
        } else {
            keys::row_prefix(table_id, &rows.end)
        };
        let iter = (lower < upper).then(|| {
            let mut opts = read_options(Seeks::Anywhere);
            opts.set_iterate_lower_bound(lower.clone());
            opts.set_iterate_upper_bound(upper);
            db.raw_iterator_opt(opts)
        });
        Self {
            iter,
            reverse: request.reverse,
            started: false,
            lower,
            row_prefix: Vec::new(),
            scratch: Scratch::default(),
        }
    }

    /// Calls `read` on each following row, positioned at the row's first key with the row's
    /// key prefix, until it returns something; `None` at the end of the range.
    fn find<R>(
        &mut self,
        mut read: impl FnMut(&mut DBRawIterator<'a>, &[u8], &mut Scratch) -> KvsResult<Option<R>>,
    ) -> KvsResult<Option<R>> {
        let Some(iter) = self.iter.as_mut() else {
            return Ok(None);
        };
        if !self.started {
            self.started = true;
            if self.reverse {
                iter.seek_to_last();
            } else {
                iter.seek(&self.lower);
            }
        }
        loop {
            let Some(key) = iter.key() else {
                iter.status().map_err(storage)?;
                return Ok(None);
            };
            let row_prefix = &mut self.row_prefix;
            row_prefix.clear();
            row_prefix.extend_from_slice(&key[..keys::row_prefix_len(key)?]);
            if self.reverse {
                iter.seek(&*row_prefix);
                let found = read(iter, row_prefix, &mut self.scratch)?;
                // The last key before this row (no key equals a bare row prefix).
                iter.seek_for_prev(&*row_prefix);
                if found.is_some() {
                    return Ok(found);
                }
            } else if let Some(found) = read(iter, row_prefix, &mut self.scratch)? {
                return Ok(Some(found));
            }
        }
    }
}

/// A streaming row-range scan over one table; sees the store as of its creation.
pub(crate) struct RocksRangeIter<'a> {
    rows: Rows<'a>,
    columns: ColumnSelection,
    ts: Timestamp,
}

impl<'a> RocksRangeIter<'a> {
    pub(crate) fn new(db: &'a DB, table_id: u32, request: &RangeRequest, ts: Timestamp) -> Self {
        Self {
            rows: Rows::new(db, table_id, request),
            columns: request.columns.clone(),
            ts,
        }
    }
}

impl Iterator for RocksRangeIter<'_> {
    type Item = KvsResult<RowResult>;

    fn next(&mut self) -> Option<Self::Item> {
        let (columns, ts) = (&self.columns, self.ts);
        match self
            .rows
            .find(|iter, row_prefix, scratch| collect_row(iter, row_prefix, columns, ts, scratch))
        {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => None,
            Err(e) => {
                self.rows.iter = None;
                Some(Err(e))
            }
        }
    }
}

/// [`KeyValueService::scan_range`](ortelius_kvs::KeyValueService::scan_range) over one table:
/// names are borrowed from the key (or unescaped into reused space) and contents from the
/// iterator, so a row costs no allocation. Forward, the cells are read in one walk over the
/// keys; in reverse, row by row. `opened` runs before the first visit (after the scan's view
/// of the store is fixed), and its error ends the scan.
pub(crate) fn scan(
    db: &DB,
    table_id: u32,
    request: &RangeRequest,
    ts: Timestamp,
    opened: impl FnOnce() -> KvsResult<()>,
    visit: &mut dyn FnMut(CellView<'_>) -> ControlFlow<()>,
) -> KvsResult<()> {
    let mut rows = Rows::new(db, table_id, request);
    // The iterator sees the store as of its creation: the caller's check runs before the first
    // visit (a scan that finds nothing needs none).
    let mut opened = Some(opened);
    let mut settled = Ok(());
    let select = |c: &[u8]| request.columns.contains(c);
    let mut row_name = Vec::new();
    let mut malformed_row = None;
    let mut found = |row_prefix: &[u8], column: &[u8], timestamp, contents: &[u8]| {
        let Some(row) = keys::row_name_in(row_prefix, &mut row_name) else {
            malformed_row = Some(malformed(row_prefix));
            return ControlFlow::Break(());
        };
        if let Some(opened) = opened.take() {
            settled = opened();
            if settled.is_err() {
                return ControlFlow::Break(());
            }
        }
        visit(CellView {
            row,
            column,
            timestamp,
            contents,
        })
    };
    if request.reverse {
        rows.find(|iter, row_prefix, scratch| {
            let scope = Scope::Row {
                prefix: row_prefix,
                upper: None,
            };
            Ok(collect_cells(iter, scope, &select, ts, scratch, &mut found)?.break_value())
        })?;
    } else if let Some(iter) = rows.iter.as_mut() {
        iter.seek(&rows.lower);
        let _ = collect_cells(
            iter,
            Scope::Forward,
            &select,
            ts,
            &mut rows.scratch,
            &mut found,
        )?;
    }
    settled?;
    malformed_row.map_or(Ok(()), Err)
}

/// Streams a column range of several rows, row by row in caller order.
pub(crate) struct ColumnRangeIter<'a> {
    iter: DBRawIterator<'a>,
    table_id: u32,
    rows: VecDeque<Vec<u8>>,
    columns: ColumnRange,
    ts: Timestamp,
    buffer: VecDeque<(Cell, Value)>,
    failed: bool,
}

impl<'a> ColumnRangeIter<'a> {
    pub(crate) fn new(
        iter: DBRawIterator<'a>,
        table_id: u32,
        rows: Vec<Vec<u8>>,
        columns: ColumnRange,
        ts: Timestamp,
    ) -> Self {
        Self {
            iter,
            table_id,
            rows: rows.into(),
            columns,
            ts,
            buffer: VecDeque::new(),
            failed: false,
        }
    }

    fn fill(&mut self, row: Vec<u8>) -> KvsResult<()> {
        let row_prefix = keys::row_prefix(self.table_id, &row);
        let start = if self.columns.start.is_empty() {
            row_prefix.clone()
        } else {
            keys::cell_prefix(self.table_id, &row, &self.columns.start)
        };
        let upper = (!self.columns.end.is_empty())
            .then(|| keys::cell_prefix(self.table_id, &row, &self.columns.end));
        self.iter.seek(&start);
        let mut cells = Vec::new();
        // `found` never stops the read.
        let _ = collect_cells(
            &mut self.iter,
            Scope::Row {
                prefix: &row_prefix,
                upper: upper.as_deref(),
            },
            &|_| true,
            self.ts,
            &mut Scratch::default(),
            &mut |_, column, version_ts, contents| {
                cells.push((column.to_vec(), Value::new(contents, version_ts)));
                ControlFlow::Continue(())
            },
        )?;
        for (column, value) in cells {
            self.buffer
                .push_back((Cell::new(row.clone(), column)?, value));
        }
        Ok(())
    }
}

impl Iterator for ColumnRangeIter<'_> {
    type Item = KvsResult<(Cell, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            if let Some(cell) = self.buffer.pop_front() {
                return Some(Ok(cell));
            }
            let row = self.rows.pop_front()?;
            if let Err(e) = self.fill(row) {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}
