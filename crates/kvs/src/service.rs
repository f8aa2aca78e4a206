//! The `KeyValueService` trait: AtlasDB's multi-version store contract.

use std::collections::BTreeMap;
use std::ops::ControlFlow;

use crate::error::KvsResult;
use crate::types::{
    CandidateCellsRequest, CandidatePage, Cell, CellView, CellWrites, CheckAndSetRequest,
    ColumnRange, ColumnSelection, RangeRequest, RowRange, RowResult, TableRef, Timestamp,
    TimestampRangeDelete, Value,
};

/// A streaming row iterator; rows are produced as the caller pulls, never the whole table at once.
pub type RowIter<'a> = Box<dyn Iterator<Item = KvsResult<RowResult>> + Send + 'a>;
/// A streaming cell iterator.
pub type CellIter<'a> = Box<dyn Iterator<Item = KvsResult<(Cell, Value)>> + Send + 'a>;

/// A multi-version map `(table, row, column, timestamp) -> bytes`.
///
/// Semantics every backend must share (checked by the conformance suite):
/// - Every read takes an **exclusive** timestamp bound and returns, per cell, the version with
///   the largest timestamp strictly below it. Absent cells are absent from results.
/// - An empty value is a tombstone; an empty value at ts -1 is a sweep sentinel.
/// - Operations on a table that does not exist fail with `TableNotFound`.
/// - Every argument is validated before anything is written; a failed call writes nothing
///   (except where a method says it is not atomic across cells).
/// - Returned bytes are copies: callers may not observe later writes through them.
pub trait KeyValueService: Send + Sync {
    /// A short name for messages ("memory", "rocksdb", ...).
    fn backend_name(&self) -> &'static str;

    /// Whether several processes can open this store at once (a networked store). A store
    /// that only one process can open (embedded RocksDB, memory) needs no guard against a
    /// second timestamp allocator beyond that.
    fn shared_between_processes(&self) -> bool {
        false
    }

    /// Creates the table if absent (idempotent) and stores `metadata` for it.
    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()>;
    /// Drops the table, its data and its metadata; dropping a missing table is a no-op.
    fn drop_table(&self, table: &TableRef) -> KvsResult<()>;
    /// Removes every version in the table, keeping the table and its metadata.
    fn truncate_table(&self, table: &TableRef) -> KvsResult<()>;
    /// Every table, sorted.
    fn list_tables(&self) -> KvsResult<Vec<TableRef>>;
    /// The metadata bytes stored with the table.
    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>>;
    /// Replaces the table's metadata.
    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()>;

    /// For each `(cell, bound)`, the latest version with timestamp `< bound`.
    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>>;
    /// [`get`](Self::get) of one cell: its latest version with timestamp `< bound`. A backend
    /// may answer it without building the request and the map (the hot path of a
    /// transaction's point read).
    fn get_one(&self, table: &TableRef, cell: &Cell, bound: Timestamp) -> KvsResult<Option<Value>> {
        Ok(self
            .get(table, &[(cell.clone(), bound)])?
            .into_values()
            .next())
    }
    /// The latest version `< ts` of every selected cell of each row.
    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>>;
    /// Streams rows of a row range with the latest version `< ts` of each selected cell.
    /// Rows with no selected visible cell are skipped.
    fn get_range<'a>(
        &'a self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<RowIter<'a>>;
    /// What [`get_range`](Self::get_range) returns, one cell at a time and borrowed rather than
    /// copied: `visit` sees every cell of every row `get_range` would return, in the same order
    /// (rows in the request's order, columns ascending within a row), until it returns
    /// `Break`. A backend that can hand out its own buffers (RocksDB) allocates nothing per
    /// cell; the default builds the rows of `get_range`.
    fn scan_range(
        &self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
        visit: &mut dyn FnMut(CellView<'_>) -> ControlFlow<()>,
    ) -> KvsResult<()> {
        for row in self.get_range(table, request, ts)? {
            let row = row?;
            for (column, value) in &row.columns {
                let cell = CellView {
                    row: &row.row,
                    column,
                    timestamp: value.timestamp,
                    contents: &value.contents,
                };
                if visit(cell).is_break() {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
    /// Streams, for each row in caller order, the cells of a column range (columns ascending)
    /// with their latest version `< ts`.
    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>>;
    /// Like [`get`](Self::get) but returns only the timestamp of the version found.
    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>>;
    /// Every version timestamp `< ts` of each cell, ascending; cells without any are absent.
    fn get_all_timestamps(
        &self,
        table: &TableRef,
        cells: &[Cell],
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Vec<Timestamp>>>;
    /// One page of cells having versions below `request.max_ts_exclusive`, in cell order.
    fn get_candidate_cells_for_sweeping(
        &self,
        table: &TableRef,
        request: &CandidateCellsRequest,
    ) -> KvsResult<CandidatePage>;

    /// Writes every cell at `ts` (`0..i64::MAX`). Rewriting the identical value is fine; a
    /// different value already at a cell and `ts` fails with `ValueAlreadyWritten` and writes
    /// nothing. Durable when it returns, as configured by the backend.
    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()>;
    /// [`put`](Self::put) into several tables at once, all-or-nothing: a transaction's data at
    /// its start timestamp. Only that transaction ever writes at `ts` (the timestamp authority
    /// hands each timestamp out once) and its retries write the same values, so a backend where
    /// finding a different value already at (cell, `ts`) costs a read of its own (Cassandra)
    /// may overwrite it instead of failing, as AtlasDB's `put` allows. A reused start
    /// timestamp is still caught at the commit point: the commit record is written only if
    /// none exists for that timestamp. On tables that check write-write conflicts the check
    /// also reads the newest version of each written cell (see
    /// [`multi_put_reading_latest`](Self::multi_put_reading_latest)), so another writer's
    /// version at a reused start timestamp that the read reaches is a conflict.
    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()>;
    /// A transaction's data write together with the read its write-write conflict check needs:
    /// for each table of `writes` whose flag in `read_latest` is set, the timestamp of each
    /// written cell's newest version as it was just before this write (what
    /// [`get_latest_timestamps`](Self::get_latest_timestamps) answers with bound
    /// [`MAX_READ_TS`](crate::MAX_READ_TS)), then [`multi_put`](Self::multi_put) of all of
    /// `writes`, in one request where the backend can. One map per table of `writes`, in order
    /// (empty where not read). A backend may instead send the reads alongside the write
    /// (Cassandra): then a read may land after the write, which never puts this write's own
    /// version in the answer, but may have overwritten a version already at (cell, `ts`), which
    /// the answer then misses. The data is written whatever the answer: a caller that finds a
    /// conflict in it aborts the write. Fails like `multi_put`, and when it fails nothing is
    /// written, or (`MaybeApplied`) the outcome is unknown as for `multi_put`.
    fn multi_put_reading_latest(
        &self,
        writes: &[(TableRef, CellWrites)],
        read_latest: &[bool],
        ts: Timestamp,
    ) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
        read_latest_then_multi_put(self, writes, read_latest, ts)
    }
    /// Writes values at their own timestamps (`0..i64::MAX` or the sentinel -1), same rules as
    /// [`put`](Self::put).
    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()>;
    /// Atomically per cell, writes each value at ts 0 unless the cell has a ts-0 version. Among
    /// concurrent callers on a cell exactly one wins. If any cell exists (even with an identical
    /// value) nothing is written and `KeyAlreadyExists` names the existing cells.
    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()>;
    /// Atomic compare-and-set of one cell at ts 0; `CheckAndSetFailed` carries the actual value.
    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()>;
    /// Deletes exact versions; absent versions are ignored.
    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()>;
    /// Deletes every version of every cell in a row range.
    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()>;
    /// Deletes the versions of each cell within [`TimestampRangeDelete::bounds`].
    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()>;
    /// Writes an empty value at ts -1 for each cell that has none yet (idempotent).
    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()>;
}

/// [`KeyValueService::multi_put_reading_latest`] in two requests: the reads, then the write.
/// The default, and the fallback of backends whose one-request form covers only some writes.
pub fn read_latest_then_multi_put<K: KeyValueService + ?Sized>(
    kvs: &K,
    writes: &[(TableRef, CellWrites)],
    read_latest: &[bool],
    ts: Timestamp,
) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
    let mut latest = Vec::with_capacity(writes.len());
    for (i, (table, cells)) in writes.iter().enumerate() {
        latest.push(if read_latest.get(i).copied().unwrap_or(false) {
            let cells: Vec<(Cell, Timestamp)> = cells
                .iter()
                .map(|(c, _)| (c.clone(), crate::MAX_READ_TS))
                .collect();
            kvs.get_latest_timestamps(table, &cells)?
        } else {
            BTreeMap::new()
        });
    }
    kvs.multi_put(writes, ts)?;
    Ok(latest)
}
