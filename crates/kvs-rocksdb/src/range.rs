//! Streaming reads over the RocksDB key layout: row-range scans (forward and reverse) and
//! per-row column ranges. Each reads the newest version below the bound of every cell, skipping
//! older versions with a few `next()` steps and then a seek (RocksDB's own heuristic).

use std::collections::{BTreeMap, VecDeque};

use ortelius_kvs::{
    Cell, ColumnRange, ColumnSelection, KvsError, KvsResult, RangeRequest, RowResult, Timestamp,
    Value,
};
use rocksdb::{DBRawIterator, ReadOptions, DB};

use ortelius_kvs::keycodec as keys;

/// `next()` steps tried before falling back to a seek when skipping versions.
const SEQUENTIAL_SKIPS: usize = 4;

fn storage(e: rocksdb::Error) -> KvsError {
    KvsError::storage(e)
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

/// Reads the cells of one row, from the iterator's position up to `upper` (exclusive; `None`
/// = the end of the row), handing `found` each column accepted by `select` with its newest
/// version `< ts`, in column order. Leaves the iterator after the last key read. `cell_prefix`
/// is scratch space, reused across cells and rows to save an allocation per cell.
pub(crate) fn collect_cells(
    iter: &mut DBRawIterator<'_>,
    row_prefix: &[u8],
    upper: Option<&[u8]>,
    select: &dyn Fn(&[u8]) -> bool,
    ts: Timestamp,
    cell_prefix: &mut Vec<u8>,
    found: &mut dyn FnMut(Vec<u8>, Value),
) -> KvsResult<()> {
    loop {
        let Some(key) = iter.key() else {
            return iter.status().map_err(storage);
        };
        if !key.starts_with(row_prefix) || upper.is_some_and(|u| key >= u) {
            return Ok(());
        }
        let layout = keys::layout(key)?;
        cell_prefix.clear();
        cell_prefix.extend_from_slice(&key[..layout.cell_end]);
        let column = keys::column_of(key, layout);
        if select(&column) {
            let version_ts = keys::ts_of(key, layout.cell_end).unwrap_or(ts);
            if version_ts >= ts {
                advance_to(iter, &keys::with_ts(cell_prefix, ts - 1));
            }
            if let (Some(k), Some(v)) = (iter.key(), iter.value()) {
                if k.starts_with(cell_prefix) {
                    let version_ts =
                        keys::ts_of(k, cell_prefix.len()).ok_or_else(|| KvsError::Corruption {
                            detail: format!("malformed version key {}", k.escape_ascii()),
                        })?;
                    found(column, Value::new(v, version_ts));
                }
            }
        }
        skip_cell(iter, cell_prefix);
    }
}

/// Moves past every remaining version of the cell with this prefix: a few `next()` steps (most
/// cells have few versions), then one seek.
fn skip_cell(iter: &mut DBRawIterator<'_>, cell_prefix: &[u8]) {
    for _ in 0..SEQUENTIAL_SKIPS {
        match iter.key() {
            Some(k) if k.starts_with(cell_prefix) => iter.next(),
            _ => return,
        }
    }
    if iter.key().is_some_and(|k| k.starts_with(cell_prefix)) {
        iter.seek(keys::past_terminator(cell_prefix.to_vec()));
    }
}

/// Reads the whole row the iterator is positioned in (at `row_prefix`); `None` when no
/// selected cell has a version below `ts`. `cell_prefix` is scratch space.
pub(crate) fn collect_row(
    iter: &mut DBRawIterator<'_>,
    row_prefix: &[u8],
    columns: &ColumnSelection,
    ts: Timestamp,
    cell_prefix: &mut Vec<u8>,
) -> KvsResult<Option<RowResult>> {
    let mut cells = BTreeMap::new();
    collect_cells(
        iter,
        row_prefix,
        None,
        &|c| columns.contains(c),
        ts,
        cell_prefix,
        &mut |column, value| {
            cells.insert(column, value);
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

/// A streaming row-range scan over one table; sees the store as of its creation.
pub(crate) struct RocksRangeIter<'a> {
    iter: Option<DBRawIterator<'a>>,
    columns: ColumnSelection,
    ts: Timestamp,
    reverse: bool,
    started: bool,
    lower: Vec<u8>,
    /// Scratch space reused across rows: the current row's key prefix, and a cell's.
    row_prefix: Vec<u8>,
    cell_prefix: Vec<u8>,
}

impl<'a> RocksRangeIter<'a> {
    pub(crate) fn new(db: &'a DB, table_id: u32, request: &RangeRequest, ts: Timestamp) -> Self {
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
            let mut opts = ReadOptions::default();
            opts.set_iterate_lower_bound(lower.clone());
            opts.set_iterate_upper_bound(upper);
            db.raw_iterator_opt(opts)
        });
        Self {
            iter,
            columns: request.columns.clone(),
            ts,
            reverse: request.reverse,
            started: false,
            lower,
            row_prefix: Vec::new(),
            cell_prefix: Vec::new(),
        }
    }

    fn next_row(&mut self) -> KvsResult<Option<RowResult>> {
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
            row_prefix.extend_from_slice(&key[..keys::layout(key)?.row_end]);
            let cell_prefix = &mut self.cell_prefix;
            if self.reverse {
                iter.seek(&*row_prefix);
                let row = collect_row(iter, row_prefix, &self.columns, self.ts, cell_prefix)?;
                // The last key before this row (no key equals a bare row prefix).
                iter.seek_for_prev(&*row_prefix);
                if row.is_some() {
                    return Ok(row);
                }
            } else if let Some(row) =
                collect_row(iter, row_prefix, &self.columns, self.ts, cell_prefix)?
            {
                return Ok(Some(row));
            }
        }
    }
}

impl Iterator for RocksRangeIter<'_> {
    type Item = KvsResult<RowResult>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_row() {
            Ok(Some(row)) => Some(Ok(row)),
            Ok(None) => None,
            Err(e) => {
                self.iter = None;
                Some(Err(e))
            }
        }
    }
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
        collect_cells(
            &mut self.iter,
            &row_prefix,
            upper.as_deref(),
            &|_| true,
            self.ts,
            &mut Vec::new(),
            &mut |column, value| cells.push((column, value)),
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
