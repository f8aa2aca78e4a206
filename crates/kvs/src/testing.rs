//! Test support: a [`KeyValueService`] wrapper that records every call and injects faults.
//! Protocol tests use the trace to pin the order of steps and the faults to reach failure
//! paths (a storage error, or an error *after* the write happened — "outcome unknown").

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use crate::{
    CandidateCellsRequest, CandidatePage, Cell, CellIter, CellView, CellWrites, CheckAndSetRequest,
    ColumnRange, ColumnSelection, KeyValueService, KvsError, KvsResult, RangeRequest, RowIter,
    RowRange, TableRef, Timestamp, TimestampRangeDelete, Value,
};

/// When an injected fault fires relative to the real call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultTiming {
    /// Fail without calling the store (`Unavailable`: nothing was applied).
    Before,
    /// Fail without calling the store with an error of unknown cause (`Storage`, permanent).
    Broken,
    /// Call the store, then report failure anyway (`MaybeApplied`: the caller cannot know it
    /// worked).
    After,
}

#[derive(Clone, Debug)]
struct Fault {
    op: &'static str,
    table: Option<String>,
    timing: FaultTiming,
    remaining: usize,
}

/// One recorded call: operation name and qualified table name ("" for none).
pub type Call = (&'static str, String);

/// A call log that several recording wrappers (store, locks, timestamps) can share, so a test
/// sees how their calls interleave.
pub type CallLog = Arc<Mutex<Vec<Call>>>;

/// Wraps a store, recording calls and injecting faults.
pub struct RecordingKvs {
    inner: Arc<dyn KeyValueService>,
    calls: CallLog,
    faults: Mutex<Vec<Fault>>,
}

impl RecordingKvs {
    pub fn new(inner: Arc<dyn KeyValueService>) -> Self {
        Self::with_log(inner, CallLog::default())
    }

    /// Records into `log`, which other wrappers may share.
    pub fn with_log(inner: Arc<dyn KeyValueService>, log: CallLog) -> Self {
        Self {
            inner,
            calls: log,
            faults: Mutex::new(Vec::new()),
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Forgets recorded calls.
    pub fn clear_calls(&self) {
        if let Ok(mut c) = self.calls.lock() {
            c.clear();
        }
    }

    /// Makes the next `times` calls of `op` (on `table`, if given) fail.
    pub fn inject(
        &self,
        op: &'static str,
        table: Option<&TableRef>,
        timing: FaultTiming,
        times: usize,
    ) {
        if let Ok(mut f) = self.faults.lock() {
            f.push(Fault {
                op,
                table: table.map(TableRef::qualified_name),
                timing,
                remaining: times,
            });
        }
    }

    /// Drops every injected fault that has not fired yet (the store answers again).
    pub fn clear_faults(&self) {
        if let Ok(mut f) = self.faults.lock() {
            f.clear();
        }
    }

    fn take_fault(&self, op: &'static str, table: &str, timing: FaultTiming) -> bool {
        let Ok(mut faults) = self.faults.lock() else {
            return false;
        };
        for f in faults.iter_mut() {
            if f.op == op
                && f.timing == timing
                && f.remaining > 0
                && f.table.as_deref().is_none_or(|t| t == table)
            {
                f.remaining -= 1;
                return true;
            }
        }
        false
    }

    fn call<R>(
        &self,
        op: &'static str,
        table: Option<&TableRef>,
        f: impl FnOnce() -> KvsResult<R>,
    ) -> KvsResult<R> {
        let name = table.map(TableRef::qualified_name).unwrap_or_default();
        if let Ok(mut c) = self.calls.lock() {
            c.push((op, name.clone()));
        }
        if self.take_fault(op, &name, FaultTiming::Broken) {
            return Err(KvsError::Storage {
                detail: format!("injected storage failure in {op} on {name}"),
            });
        }
        if self.take_fault(op, &name, FaultTiming::Before) {
            return Err(KvsError::Unavailable {
                detail: format!("injected fault before {op} on {name}"),
            });
        }
        let result = f()?;
        if self.take_fault(op, &name, FaultTiming::After) {
            return Err(KvsError::MaybeApplied {
                operation: op,
                detail: format!("injected fault after {op} on {name}"),
            });
        }
        Ok(result)
    }
}

impl KeyValueService for RecordingKvs {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }
    fn shared_between_processes(&self) -> bool {
        self.inner.shared_between_processes()
    }
    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.call("create_table", Some(table), || {
            self.inner.create_table(table, metadata)
        })
    }
    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        self.call("drop_table", Some(table), || self.inner.drop_table(table))
    }
    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        self.call("truncate_table", Some(table), || {
            self.inner.truncate_table(table)
        })
    }
    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        self.call("list_tables", None, || self.inner.list_tables())
    }
    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        self.call("table_metadata", Some(table), || {
            self.inner.table_metadata(table)
        })
    }
    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.call("put_table_metadata", Some(table), || {
            self.inner.put_table_metadata(table, metadata)
        })
    }
    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        self.call("get", Some(table), || self.inner.get(table, cells))
    }
    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        self.call("get_rows", Some(table), || {
            self.inner.get_rows(table, rows, columns, ts)
        })
    }
    fn get_range<'a>(
        &'a self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<RowIter<'a>> {
        self.call("get_range", Some(table), || {
            self.inner.get_range(table, request, ts)
        })
    }
    fn scan_range(
        &self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
        visit: &mut dyn FnMut(CellView<'_>) -> ControlFlow<()>,
    ) -> KvsResult<()> {
        self.call("scan_range", Some(table), || {
            self.inner.scan_range(table, request, ts, visit)
        })
    }
    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>> {
        self.call("get_rows_column_range", Some(table), || {
            self.inner.get_rows_column_range(table, rows, columns, ts)
        })
    }
    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        self.call("get_latest_timestamps", Some(table), || {
            self.inner.get_latest_timestamps(table, cells)
        })
    }
    fn get_all_timestamps(
        &self,
        table: &TableRef,
        cells: &[Cell],
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Vec<Timestamp>>> {
        self.call("get_all_timestamps", Some(table), || {
            self.inner.get_all_timestamps(table, cells, ts)
        })
    }
    fn get_candidate_cells_for_sweeping(
        &self,
        table: &TableRef,
        request: &CandidateCellsRequest,
    ) -> KvsResult<CandidatePage> {
        self.call("get_candidate_cells_for_sweeping", Some(table), || {
            self.inner.get_candidate_cells_for_sweeping(table, request)
        })
    }
    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        self.call("put", Some(table), || self.inner.put(table, writes, ts))
    }
    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        self.call("multi_put", writes.first().map(|(t, _)| t), || {
            self.inner.multi_put(writes, ts)
        })
    }
    fn multi_put_reading_latest(
        &self,
        writes: &[(TableRef, CellWrites)],
        read_latest: &[bool],
        ts: Timestamp,
    ) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
        self.call(
            "multi_put_reading_latest",
            writes.first().map(|(t, _)| t),
            || self.inner.multi_put_reading_latest(writes, read_latest, ts),
        )
    }
    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        self.call("put_with_timestamps", Some(table), || {
            self.inner.put_with_timestamps(table, values)
        })
    }
    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        self.call("put_unless_exists", Some(table), || {
            self.inner.put_unless_exists(table, writes)
        })
    }
    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        self.call("check_and_set", Some(table), || {
            self.inner.check_and_set(table, request)
        })
    }
    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        self.call("delete", Some(table), || self.inner.delete(table, versions))
    }
    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        self.call("delete_range", Some(table), || {
            self.inner.delete_range(table, rows)
        })
    }
    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        self.call("delete_all_timestamps", Some(table), || {
            self.inner.delete_all_timestamps(table, deletes)
        })
    }
    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        self.call(
            "add_garbage_collection_sentinel_values",
            Some(table),
            || {
                self.inner
                    .add_garbage_collection_sentinel_values(table, cells)
            },
        )
    }
}

static LIVE_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK_BYTES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// A global allocator that counts live heap bytes and their peak, for memory figures in
/// benchmarks. Install it in the benchmark binary:
/// `#[global_allocator] static ALLOC: CountingAllocator = CountingAllocator;`
/// It counts Rust allocations only (not those of C/C++ libraries such as RocksDB).
pub struct CountingAllocator;

impl CountingAllocator {
    /// Heap bytes currently allocated.
    pub fn live_bytes() -> usize {
        LIVE_BYTES.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Runs `f` and returns the peak heap above the level at its start.
    pub fn peak_during(f: impl FnOnce()) -> usize {
        let base = Self::live_bytes();
        PEAK_BYTES.store(base, std::sync::atomic::Ordering::SeqCst);
        f();
        PEAK_BYTES
            .load(std::sync::atomic::Ordering::SeqCst)
            .saturating_sub(base)
    }
}

// Safety: forwards every call to the system allocator unchanged; only counts sizes.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is passed through to `System`.
        let p = unsafe { std::alloc::System.alloc(layout) };
        if !p.is_null() {
            let now = LIVE_BYTES.fetch_add(layout.size(), std::sync::atomic::Ordering::Relaxed)
                + layout.size();
            PEAK_BYTES.fetch_max(now, std::sync::atomic::Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: `ptr` was allocated by `alloc` above, i.e. by `System`, with this layout.
        unsafe { std::alloc::System.dealloc(ptr, layout) };
        LIVE_BYTES.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
    }
}

/// For benchmarks: runs `iters` operations spread over `threads` threads, each taking the
/// next operation number as it finishes one (`op(thread, number)`); returns the wall time.
/// Criterion's `iter_custom` takes it as the time of `iters` iterations.
pub fn parallel(iters: u64, threads: u64, op: impl Fn(usize, u64) + Sync) -> std::time::Duration {
    let next = std::sync::atomic::AtomicU64::new(0);
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (next, op) = (&next, &op);
            s.spawn(move || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= iters {
                    break;
                }
                op(t as usize, i);
            });
        }
    });
    started.elapsed()
}

/// `words` × 8 bytes of xorshift noise from `state` (which it advances): test data that
/// neither compression nor RocksDB's block compression shrinks.
pub fn noise(state: &mut u64, words: usize) -> Vec<u8> {
    (0..words)
        .flat_map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            state.to_le_bytes()
        })
        .collect()
}
