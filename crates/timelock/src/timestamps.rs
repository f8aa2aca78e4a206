//! The timestamp service.
//!
//! Guarantee: a timestamp handed out after another one was returned is greater than it, across
//! calls, threads and restarts. The in-process implementation keeps a counter in memory and an
//! upper bound in the store (`_timestamp`, one cell at ts 0). Before it hands out a timestamp
//! above the bound it raises the bound by check-and-set — expecting the value it last wrote —
//! to the new timestamp plus [`TIMESTAMP_BOUND_BUFFER`], so a restart resumes above anything
//! ever handed out and most calls touch no storage. A failed check-and-set means another
//! allocator moved the bound: this one then refuses forever.

use std::sync::{Arc, Mutex};

use ortelius_kvs::{
    Cell, CheckAndSetRequest, KeyValueService, KvsError, TableRef, Timestamp, ATOMIC_TS,
};

/// The system table holding the persisted upper bound.
pub const TIMESTAMP_TABLE: &str = "_timestamp";
/// How far ahead of the last handed-out timestamp the persisted bound is raised.
pub const TIMESTAMP_BOUND_BUFFER: i64 = 1_000_000;
/// Most timestamps one request may ask for.
pub const MAX_TIMESTAMPS_PER_REQUEST: u32 = 10_000;
/// Timestamps stay below this (versions live at `0..i64::MAX`).
const LARGEST_TIMESTAMP: Timestamp = i64::MAX - 1;

/// An inclusive range of fresh timestamps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestampRange {
    pub first: Timestamp,
    pub last: Timestamp,
}

impl TimestampRange {
    pub fn len(&self) -> u64 {
        self.last.abs_diff(self.first) + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a fast-forward did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FastForward {
    /// Every later timestamp is above `to`; before, the last one handed out was `from`.
    Advanced { from: Timestamp, to: Timestamp },
    /// Nothing to do: `current` (the last timestamp handed out) is already at or past the target.
    AlreadyBeyond { current: Timestamp },
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum TimestampError {
    #[error("another timestamp allocator moved this store's persisted timestamp bound (expected {expected}, found {found}); this allocator refuses to hand out timestamps. Run exactly one timestamp authority per store, then restart this process")]
    MultipleAllocators { expected: String, found: String },
    #[error("invalid timestamp request: {0}")]
    InvalidRequest(String),
    #[error("timestamps are exhausted: cannot go past {LARGEST_TIMESTAMP}")]
    Exhausted,
    #[error("the persisted timestamp bound is malformed: {0}")]
    CorruptBound(String),
    #[error("timestamp bound storage failed: {0}")]
    Storage(String),
}

impl From<KvsError> for TimestampError {
    fn from(e: KvsError) -> Self {
        Self::Storage(e.to_string())
    }
}

/// A source of fresh timestamps.
pub trait TimestampService: Send + Sync {
    /// `count` (1..=[`MAX_TIMESTAMPS_PER_REQUEST`]) contiguous fresh timestamps.
    fn fresh_timestamps(&self, count: u32) -> Result<TimestampRange, TimestampError>;

    fn fresh_timestamp(&self) -> Result<Timestamp, TimestampError> {
        Ok(self.fresh_timestamps(1)?.first)
    }

    /// Makes every later timestamp greater than `to` (max semantics: idempotent, a no-op
    /// backwards). Only safe while nothing else uses the store's timestamps (a restore).
    fn fast_forward(&self, to: Timestamp) -> Result<FastForward, TimestampError>;
}

struct State {
    /// The last timestamp handed out (or the bound read at start-up).
    last: Timestamp,
    /// Timestamps up to this one may be handed out without touching storage.
    upper: Timestamp,
    /// The bound's bytes as this allocator last saw or wrote them: the check-and-set expectation.
    persisted: Option<Vec<u8>>,
    /// Set forever once another allocator is detected.
    refused: Option<TimestampError>,
    /// How many times the bound was written (observability; tests use it to show coalescing).
    bound_writes: u64,
}

/// The in-process timestamp service over a store's persisted bound.
pub struct PersistentTimestampService {
    kvs: Arc<dyn KeyValueService>,
    table: TableRef,
    cell: Cell,
    state: Mutex<State>,
}

fn decode_bound(bytes: &[u8]) -> Result<Timestamp, TimestampError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| TimestampError::CorruptBound(format!("{} bytes instead of 8", bytes.len())))?;
    let bound = i64::from_be_bytes(arr);
    if bound < 0 {
        return Err(TimestampError::CorruptBound(format!(
            "negative bound {bound}"
        )));
    }
    Ok(bound)
}

fn describe(bytes: Option<&[u8]>) -> String {
    match bytes.map(decode_bound) {
        None => "no bound".to_owned(),
        Some(Ok(b)) => b.to_string(),
        Some(Err(e)) => e.to_string(),
    }
}

impl PersistentTimestampService {
    /// Loads the persisted bound (creating the `_timestamp` table if needed); the first
    /// timestamp handed out is above it.
    pub fn new(kvs: Arc<dyn KeyValueService>) -> Result<Self, TimestampError> {
        let table = TableRef::system(TIMESTAMP_TABLE)
            .map_err(|e| TimestampError::Storage(e.to_string()))?;
        let cell = Cell::new("ts", "bound").map_err(|e| TimestampError::Storage(e.to_string()))?;
        if !kvs.list_tables()?.contains(&table) {
            kvs.create_table(&table, b"")?;
        }
        let persisted = kvs
            .get(&table, &[(cell.clone(), ATOMIC_TS + 1)])?
            .remove(&cell)
            .map(|v| v.contents);
        let bound = persisted
            .as_deref()
            .map(decode_bound)
            .transpose()?
            .unwrap_or(0);
        Ok(Self {
            kvs,
            table,
            cell,
            state: Mutex::new(State {
                last: bound,
                upper: bound,
                persisted,
                refused: None,
                bound_writes: 0,
            }),
        })
    }

    /// How many times this service has written the bound.
    pub fn bound_writes(&self) -> u64 {
        self.state.lock().map(|s| s.bound_writes).unwrap_or(0)
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, State>, TimestampError> {
        self.state
            .lock()
            .map_err(|_| TimestampError::Storage("timestamp state lock poisoned".to_owned()))
    }

    /// Raises the persisted bound to cover `needed`, by check-and-set against what this
    /// allocator last saw. Leaves the in-memory limit unchanged on failure.
    fn raise_bound(&self, state: &mut State, needed: Timestamp) -> Result<(), TimestampError> {
        if needed <= state.upper {
            return Ok(());
        }
        let new_bound = needed
            .saturating_add(TIMESTAMP_BOUND_BUFFER)
            .min(LARGEST_TIMESTAMP);
        let new_bytes = new_bound.to_be_bytes().to_vec();
        let request = CheckAndSetRequest {
            cell: self.cell.clone(),
            expected: state.persisted.clone(),
            new_value: new_bytes.clone(),
        };
        match self.kvs.check_and_set(&self.table, &request) {
            Ok(()) => {
                state.upper = new_bound;
                state.persisted = Some(new_bytes);
                state.bound_writes += 1;
                Ok(())
            }
            Err(KvsError::CheckAndSetFailed { actual, .. }) => {
                let err = TimestampError::MultipleAllocators {
                    expected: describe(state.persisted.as_deref()),
                    found: describe(actual.as_deref()),
                };
                state.refused = Some(err.clone());
                Err(err)
            }
            Err(e) => Err(e.into()),
        }
    }
}

impl TimestampService for PersistentTimestampService {
    fn fresh_timestamps(&self, count: u32) -> Result<TimestampRange, TimestampError> {
        if count == 0 || count > MAX_TIMESTAMPS_PER_REQUEST {
            return Err(TimestampError::InvalidRequest(format!(
                "asked for {count} timestamps; ask for 1 to {MAX_TIMESTAMPS_PER_REQUEST}"
            )));
        }
        // Callers that arrive while the bound is being raised wait here and are then served
        // from the same raised bound: one storage write covers all of them.
        let mut state = self.lock()?;
        if let Some(err) = &state.refused {
            return Err(err.clone());
        }
        let last = state
            .last
            .checked_add(i64::from(count))
            .filter(|l| *l <= LARGEST_TIMESTAMP)
            .ok_or(TimestampError::Exhausted)?;
        self.raise_bound(&mut state, last)?;
        let first = state.last + 1;
        state.last = last;
        Ok(TimestampRange { first, last })
    }

    fn fast_forward(&self, to: Timestamp) -> Result<FastForward, TimestampError> {
        if to < 0 {
            return Err(TimestampError::InvalidRequest(format!(
                "cannot fast-forward to negative timestamp {to}"
            )));
        }
        if to >= LARGEST_TIMESTAMP {
            return Err(TimestampError::Exhausted);
        }
        let mut state = self.lock()?;
        if let Some(err) = &state.refused {
            return Err(err.clone());
        }
        if to <= state.last {
            return Ok(FastForward::AlreadyBeyond {
                current: state.last,
            });
        }
        self.raise_bound(&mut state, to)?;
        let from = state.last;
        state.last = to;
        Ok(FastForward::Advanced { from, to })
    }
}
