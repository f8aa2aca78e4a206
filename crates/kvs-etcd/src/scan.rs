//! Range scans and sweep candidates: pages of keys (ascending, so row, column, newest version
//! first), read at the revision of the first page so a scan sees one consistent state.

use std::collections::{BTreeMap, VecDeque};

use ortelius_kvs::keycodec as keys;
use ortelius_kvs::{
    CandidateCell, CandidateCellsRequest, CandidatePage, Cell, ColumnSelection, KvsResult,
    RangeRequest, RowResult, Timestamp, Value, SWEEP_SENTINEL_TS,
};

use crate::EtcdKvs;

const PAGE: i64 = 1000;

/// Pages of one key range.
struct Pager<'a> {
    kvs: &'a EtcdKvs,
    next: Vec<u8>,
    end: Vec<u8>,
    revision: Option<i64>,
    done: bool,
    buffer: VecDeque<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Pager<'a> {
    fn new(kvs: &'a EtcdKvs, start: Vec<u8>, end: Vec<u8>) -> Self {
        let done = start >= end;
        Self {
            kvs,
            next: start,
            end,
            revision: None,
            done,
            buffer: VecDeque::new(),
        }
    }

    /// The next (layout key, value).
    fn next(&mut self) -> KvsResult<Option<(Vec<u8>, Vec<u8>)>> {
        if self.buffer.is_empty() && !self.done {
            let (page, more, revision) = self.kvs.range(
                self.next.clone(),
                self.end.clone(),
                PAGE,
                false,
                self.revision,
            )?;
            self.revision = Some(self.revision.unwrap_or(revision));
            if let Some(last) = page.last() {
                self.next = last.key().to_vec();
                self.next.push(0);
            }
            self.done = !more || page.is_empty();
            for kv in page {
                let inner = self.kvs.inner(kv.key())?.to_vec();
                self.buffer.push_back((inner, kv.value().to_vec()));
            }
        }
        Ok(self.buffer.pop_front())
    }
}

/// A forward row-range scan assembled into rows of visible cells.
pub(crate) struct RangeScan<'a> {
    pager: Pager<'a>,
    columns: ColumnSelection,
    ts: Timestamp,
    pending: Option<RowResult>,
    finished: bool,
}

impl<'a> RangeScan<'a> {
    pub fn new(kvs: &'a EtcdKvs, id: u32, request: RangeRequest, ts: Timestamp) -> Self {
        let rows = &request.rows;
        let start = if rows.start.is_empty() {
            keys::table_start(id)
        } else {
            keys::row_prefix(id, &rows.start)
        };
        let end = if rows.end.is_empty() {
            keys::table_end(id)
        } else {
            keys::row_prefix(id, &rows.end)
        };
        let empty = matches!(&request.columns, ColumnSelection::Only(c) if c.is_empty());
        Self {
            pager: Pager::new(kvs, kvs.key(&start), kvs.key(&end)),
            columns: request.columns,
            ts,
            pending: None,
            finished: empty,
        }
    }

    fn next_row(&mut self) -> KvsResult<Option<RowResult>> {
        loop {
            let Some((key, value)) = self.pager.next()? else {
                self.finished = true;
                return Ok(self.pending.take().filter(|r| !r.columns.is_empty()));
            };
            let d = keys::decode(&key)?;
            let done = match &self.pending {
                Some(p) if p.row == d.row => None,
                _ => self.pending.replace(RowResult {
                    row: d.row.clone(),
                    columns: BTreeMap::new(),
                }),
            };
            if d.ts < self.ts && self.columns.contains(&d.column) {
                if let Some(p) = self.pending.as_mut() {
                    p.columns.entry(d.column).or_insert(Value::new(value, d.ts));
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

/// One page of sweep candidates.
pub(crate) fn candidates(
    kvs: &EtcdKvs,
    id: u32,
    request: &CandidateCellsRequest,
) -> KvsResult<CandidatePage> {
    let batch = request.batch_size.clamp(1, 100_000);
    let start = match &request.start {
        Some(c) => keys::cell_prefix(id, c.row(), c.column()),
        None => keys::table_start(id),
    };
    let mut pager = Pager::new(kvs, kvs.key(&start), kvs.key(&keys::table_end(id)));
    let mut cells = Vec::new();
    let mut current: Option<(Cell, Vec<(Timestamp, bool)>)> = None;
    let finish = |cell: Cell, versions: Vec<(Timestamp, bool)>| -> Option<CandidateCell> {
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
    };
    while let Some((key, value)) = pager.next()? {
        let d = keys::decode(&key)?;
        let same = current
            .as_ref()
            .is_some_and(|(c, _)| c.row() == d.row.as_slice() && c.column() == d.column.as_slice());
        if !same {
            if let Some((cell, versions)) = current.take() {
                cells.extend(finish(cell, versions));
            }
            if cells.len() == batch {
                return Ok(CandidatePage {
                    cells,
                    next_start: Some(Cell::new(d.row, d.column)?),
                });
            }
            current = Some((Cell::new(d.row, d.column)?, Vec::new()));
        }
        if d.ts < request.max_ts_exclusive {
            if let Some((_, versions)) = current.as_mut() {
                versions.push((d.ts, value.is_empty()));
            }
        }
    }
    if let Some((cell, versions)) = current.take() {
        cells.extend(finish(cell, versions));
    }
    Ok(CandidatePage {
        cells,
        next_start: None,
    })
}
