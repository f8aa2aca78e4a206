//! Streaming scans: pages of cells fetched as the caller pulls, each page on a pooled
//! connection that goes back to the pool between pages (a slow consumer holds none).

use std::collections::{BTreeMap, VecDeque};

use ortelius_kvs::{
    Cell, ColumnRange, ColumnSelection, KvsResult, RangeRequest, RowResult, TableRef, Timestamp,
    Value,
};

use crate::pool::Phase;
use crate::sql::{self, RangeShape};
use crate::{col, PostgresKvs};

/// Versions (cells when reversed) per page.
const PAGE: i64 = 2000;

/// A version of a cell: row, column, value.
type Entry = (Vec<u8>, Vec<u8>, Value);

/// A row-range scan: pages in (row, column) order (both descending when reversed), assembled
/// into rows; a row cut by a page boundary is completed from the next page. Forward, a page
/// holds every version below the read timestamp in ascending order, so the last version of a
/// cell is its newest and replaces the others; reversed, a page holds only the newest version
/// of each cell (see [`sql::range_page`]).
pub(crate) struct RangeScan<'a> {
    kvs: &'a PostgresKvs,
    table: TableRef,
    request: RangeRequest,
    ts: Timestamp,
    /// The last version fetched (row, column, timestamp): the next page starts after it.
    cursor: Option<(Vec<u8>, Vec<u8>, i64)>,
    buffered: VecDeque<Entry>,
    exhausted: bool,
    /// The row being assembled.
    pending: Option<RowResult>,
    failed: bool,
}

impl<'a> RangeScan<'a> {
    pub fn new(
        kvs: &'a PostgresKvs,
        table: TableRef,
        request: RangeRequest,
        ts: Timestamp,
    ) -> Self {
        let empty_selection = matches!(&request.columns, ColumnSelection::Only(c) if c.is_empty());
        let inverted = !request.rows.start.is_empty()
            && !request.rows.end.is_empty()
            && request.rows.start >= request.rows.end;
        Self {
            kvs,
            table,
            request,
            ts,
            cursor: None,
            buffered: VecDeque::new(),
            exhausted: empty_selection || inverted,
            pending: None,
            failed: false,
        }
    }

    fn fetch(&mut self) -> KvsResult<()> {
        let rows = &self.request.rows;
        let columns: Option<Vec<&[u8]>> = match &self.request.columns {
            ColumnSelection::All => None,
            ColumnSelection::Only(c) => Some(c.iter().map(Vec::as_slice).collect()),
        };
        let shape = RangeShape {
            has_start: !rows.start.is_empty(),
            has_end: !rows.end.is_empty(),
            has_cursor: self.cursor.is_some(),
            only_columns: columns.is_some(),
            reverse: self.request.reverse,
        };
        let (ts, cursor) = (self.ts, &self.cursor);
        let found = self.kvs.on_table(
            &self.table,
            &self.kvs.plain,
            "get_range",
            Phase::NotApplied,
            |conn, rel| {
                let stmt = conn.prepare(&sql::range_page(rel, shape))?;
                let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&ts, &PAGE];
                if shape.has_start {
                    params.push(&rows.start);
                }
                if shape.has_end {
                    params.push(&rows.end);
                }
                if let Some((r, c, t)) = cursor {
                    params.push(r);
                    params.push(c);
                    if !shape.reverse {
                        params.push(t);
                    }
                }
                if let Some(cols) = &columns {
                    params.push(cols);
                }
                conn.client.query(&stmt, &params)
            },
        )?;
        self.exhausted = (found.len() as i64) < PAGE;
        for row in &found {
            let (r, c): (Vec<u8>, Vec<u8>) = (col(row, 0)?, col(row, 1)?);
            let ts: i64 = col(row, 2)?;
            let value = Value::new(col::<Vec<u8>>(row, 3)?, ts);
            self.buffered.push_back((r, c, value));
        }
        if let Some((r, c, value)) = self.buffered.back() {
            self.cursor = Some((r.clone(), c.clone(), value.timestamp));
        }
        Ok(())
    }

    fn next_row(&mut self) -> KvsResult<Option<RowResult>> {
        loop {
            if self.buffered.is_empty() && !self.exhausted {
                self.fetch()?;
            }
            let Some((row, column, value)) = self.buffered.pop_front() else {
                return Ok(self.pending.take());
            };
            match &mut self.pending {
                // A later version of a cell replaces an earlier one (forward pages).
                Some(p) if p.row == row => {
                    p.columns.insert(column, value);
                }
                _ => {
                    let done = self.pending.replace(RowResult {
                        row,
                        columns: BTreeMap::from([(column, value)]),
                    });
                    if done.is_some() {
                        return Ok(done);
                    }
                }
            }
        }
    }
}

impl Iterator for RangeScan<'_> {
    type Item = KvsResult<RowResult>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        match self.next_row() {
            Ok(row) => row.map(Ok),
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Column ranges of several rows, rows in caller order, columns ascending, paged per row.
pub(crate) struct ColumnRangeScan<'a> {
    kvs: &'a PostgresKvs,
    table: TableRef,
    rows: VecDeque<Vec<u8>>,
    columns: ColumnRange,
    ts: Timestamp,
    /// Last column fetched in the current row.
    cursor: Option<Vec<u8>>,
    buffered: VecDeque<(Cell, Value)>,
    failed: bool,
}

impl<'a> ColumnRangeScan<'a> {
    pub fn new(
        kvs: &'a PostgresKvs,
        table: TableRef,
        rows: Vec<Vec<u8>>,
        columns: ColumnRange,
        ts: Timestamp,
    ) -> Self {
        Self {
            kvs,
            table,
            rows: rows.into(),
            columns,
            ts,
            cursor: None,
            buffered: VecDeque::new(),
            failed: false,
        }
    }

    fn fetch(&mut self) -> KvsResult<()> {
        let Some(row) = self.rows.front().cloned() else {
            return Ok(());
        };
        let (start, end) = (&self.columns.start, &self.columns.end);
        let inverted = !start.is_empty() && !end.is_empty() && start >= end;
        if inverted {
            self.rows.pop_front();
            return Ok(());
        }
        let (ts, cursor) = (self.ts, &self.cursor);
        let found = self.kvs.on_table(
            &self.table,
            &self.kvs.plain,
            "get_rows_column_range",
            Phase::NotApplied,
            |conn, rel| {
                let stmt = conn.prepare(&sql::column_range_page(
                    rel,
                    !start.is_empty(),
                    !end.is_empty(),
                    cursor.is_some(),
                ))?;
                let mut params: Vec<&(dyn postgres::types::ToSql + Sync)> = vec![&row, &ts, &PAGE];
                if !start.is_empty() {
                    params.push(start);
                }
                if !end.is_empty() {
                    params.push(end);
                }
                if let Some(c) = cursor {
                    params.push(c);
                }
                conn.client.query(&stmt, &params)
            },
        )?;
        for r in &found {
            let column: Vec<u8> = col(r, 0)?;
            self.cursor = Some(column.clone());
            self.buffered.push_back((
                Cell::new(row.clone(), column)?,
                Value::new(col::<Vec<u8>>(r, 2)?, col(r, 1)?),
            ));
        }
        if (found.len() as i64) < PAGE {
            self.rows.pop_front();
            self.cursor = None;
        }
        Ok(())
    }
}

impl Iterator for ColumnRangeScan<'_> {
    type Item = KvsResult<(Cell, Value)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        loop {
            if let Some(item) = self.buffered.pop_front() {
                return Some(Ok(item));
            }
            if self.rows.is_empty() {
                return None;
            }
            if let Err(e) = self.fetch() {
                self.failed = true;
                return Some(Err(e));
            }
        }
    }
}
