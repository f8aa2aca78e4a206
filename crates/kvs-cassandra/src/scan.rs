//! Scans in token order (= row order under ByteOrderedPartitioner), page by page as the caller
//! pulls: every version of every cell comes back (newest first within a cell), and the reader
//! keeps the newest one below its bound.

use std::collections::{BTreeMap, VecDeque};
use std::ops::ControlFlow;

use ortelius_kvs::{
    CandidateCell, CandidateCellsRequest, Cell, ColumnSelection, KvsResult, RangeRequest, RowRange,
    RowResult, TableRef, Timestamp, Value, SWEEP_SENTINEL_TS,
};
use scylla::response::PagingState;
use scylla::statement::prepared::PreparedStatement;

use crate::cql::{self, inv};
use crate::{rows, CassandraKvs, Kind};

/// One stored version: row, column, timestamp, value.
type Version = (Vec<u8>, Vec<u8>, Timestamp, Vec<u8>);
/// A version without its value: row, column, timestamp, whether the value is empty.
pub(crate) type VersionShape = (Vec<u8>, Vec<u8>, Timestamp, bool);

/// Pages of a token-ordered scan.
struct Pager<'a> {
    kvs: &'a CassandraKvs,
    table: TableRef,
    stmt: PreparedStatement,
    values: Vec<Vec<u8>>,
    paging: PagingState,
    done: bool,
    buffer: VecDeque<Version>,
}

impl<'a> Pager<'a> {
    fn new(kvs: &'a CassandraKvs, table: TableRef, start: &[u8], end: &[u8]) -> KvsResult<Self> {
        let q = kvs.table(&table)?;
        let stmt = kvs.prepare(
            &cql::scan(&q, !start.is_empty(), !end.is_empty()),
            Kind::Read,
        )?;
        let mut values = Vec::new();
        if !start.is_empty() {
            values.push(start.to_vec());
        }
        if !end.is_empty() {
            values.push(end.to_vec());
        }
        Ok(Self {
            kvs,
            table,
            stmt,
            values,
            paging: PagingState::start(),
            done: false,
            buffer: VecDeque::new(),
        })
    }

    fn next(&mut self) -> KvsResult<Option<Version>> {
        while self.buffer.is_empty() && !self.done {
            let (result, next) = self
                .kvs
                .block_on(self.kvs.session.execute_single_page(
                    &self.stmt,
                    self.values.clone(),
                    self.paging.clone(),
                ))
                .map_err(|e| self.kvs.fail(&self.table, "scan", false, &e))?;
            for (row, column, c2, value) in rows::<(Vec<u8>, Vec<u8>, i64, Vec<u8>)>(result)? {
                self.buffer.push_back((row, column, inv(c2), value));
            }
            match next.into_paging_control_flow() {
                ControlFlow::Break(()) => self.done = true,
                ControlFlow::Continue(p) => self.paging = p,
            }
        }
        Ok(self.buffer.pop_front())
    }
}

/// A forward row-range scan, assembled into rows of visible cells.
pub(crate) struct RangeScan<'a> {
    pager: Pager<'a>,
    request: RangeRequest,
    ts: Timestamp,
    pending: Option<RowResult>,
    finished: bool,
}

impl<'a> RangeScan<'a> {
    pub fn new(
        kvs: &'a CassandraKvs,
        table: TableRef,
        request: RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<Self> {
        let rows = &request.rows;
        let empty = (!rows.start.is_empty() && !rows.end.is_empty() && rows.start >= rows.end)
            || matches!(&request.columns, ColumnSelection::Only(c) if c.is_empty());
        Ok(Self {
            pager: Pager::new(kvs, table, &rows.start, &rows.end)?,
            request,
            ts,
            pending: None,
            finished: empty,
        })
    }

    fn next_row(&mut self) -> KvsResult<Option<RowResult>> {
        loop {
            let Some((row, column, ts, value)) = self.pager.next()? else {
                self.finished = true;
                return Ok(self.pending.take().filter(|r| !r.columns.is_empty()));
            };
            let done = match &self.pending {
                Some(p) if p.row == row => None,
                _ => self.pending.replace(RowResult {
                    row: row.clone(),
                    columns: BTreeMap::new(),
                }),
            };
            if ts < self.ts && self.request.columns.contains(&column) {
                if let Some(p) = self.pending.as_mut() {
                    // Newest first within a cell: keep the first visible version.
                    p.columns.entry(column).or_insert(Value::new(value, ts));
                }
            }
            if let Some(done) = done.filter(|r| !r.columns.is_empty()) {
                return Ok(Some(done));
            }
        }
    }
}

impl Iterator for RangeScan<'_> {
    type Item = KvsResult<RowResult>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        match self.next_row() {
            Ok(row) => row.map(Ok),
            Err(e) => {
                self.finished = true;
                Some(Err(e))
            }
        }
    }
}

/// Every version from a row on, for sweep.
pub(crate) struct VersionScan<'a> {
    pager: Pager<'a>,
}

impl<'a> VersionScan<'a> {
    pub fn new(
        kvs: &'a CassandraKvs,
        table: TableRef,
        start: Vec<u8>,
        end: Vec<u8>,
    ) -> KvsResult<Self> {
        Ok(Self {
            pager: Pager::new(kvs, table, &start, &end)?,
        })
    }

    /// The next version, its value reduced to whether it is empty.
    pub fn next_version(&mut self) -> KvsResult<Option<VersionShape>> {
        Ok(self
            .pager
            .next()?
            .map(|(row, column, ts, value)| (row, column, ts, value.is_empty())))
    }
}

/// A sweep candidate from a cell's versions below the bound (newest first).
pub(crate) fn candidate(
    cell: Cell,
    versions: Vec<(Timestamp, bool)>,
    request: &CandidateCellsRequest,
) -> Option<CandidateCell> {
    let &(_, latest_is_empty) = versions.first()?;
    let mut timestamps: Vec<Timestamp> = versions
        .into_iter()
        .map(|(ts, _)| ts)
        .filter(|ts| request.include_sentinels || *ts != SWEEP_SENTINEL_TS)
        .collect();
    if timestamps.is_empty() {
        return None;
    }
    timestamps.reverse();
    Some(CandidateCell {
        cell,
        timestamps,
        latest_is_empty,
    })
}

/// The rows (partitions) of a row range.
pub(crate) fn keys_in_range(
    kvs: &CassandraKvs,
    table: &TableRef,
    q: &str,
    rows: &RowRange,
) -> KvsResult<Vec<Vec<u8>>> {
    let stmt = kvs.prepare(
        &cql::keys(q, !rows.start.is_empty(), !rows.end.is_empty()),
        Kind::Read,
    )?;
    let mut values = Vec::new();
    if !rows.start.is_empty() {
        values.push(rows.start.clone());
    }
    if !rows.end.is_empty() {
        values.push(rows.end.clone());
    }
    let keys: Vec<(Vec<u8>,)> = kvs.select_all(table, &stmt, values)?;
    Ok(keys.into_iter().map(|(k,)| k).collect())
}
