//! The timestamp service.
//!
//! Guarantee: a timestamp handed out after another one was returned is greater than it, across
//! calls, threads and restarts. The in-process implementation keeps a counter in memory and an
//! upper bound in the store (`_timestamp`, one cell at ts 0). Before it hands out a timestamp
//! above the bound it raises the bound by check-and-set — expecting the value it last wrote —
//! to the new timestamp plus [`TIMESTAMP_BOUND_BUFFER`], so a restart resumes above anything
//! ever handed out and most calls touch no storage. A failed check-and-set means another
//! allocator moved the bound: this one then refuses forever.
//!
//! On a store several processes can reach (PostgreSQL, etcd, Cassandra) that detection comes
//! too late: a second allocator could hand out timestamps below ones the first already returned
//! before either notices. There the allocator also holds a **lease** in the store (`("ts",
//! "owner")`, renewed by check-and-set every quarter lease). A second allocator that finds the
//! lease being renewed refuses at once; one that finds it unchanged for a whole lease (plus a
//! margin) takes it over, and the old holder, whose own clock says its lease ran out, has
//! stopped handing out timestamps by then. Processes that share a store use one timelock
//! server instead.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use ortelius_kvs::{
    Cell, CheckAndSetRequest, ErrorClass, KeyValueService, KvsError, TableRef, Timestamp, ATOMIC_TS,
};

/// The system table holding the persisted upper bound.
pub const TIMESTAMP_TABLE: &str = "_timestamp";
/// How far ahead of the last handed-out timestamp the persisted bound is raised.
pub const TIMESTAMP_BOUND_BUFFER: i64 = 1_000_000;
/// Most timestamps one request may ask for.
pub const MAX_TIMESTAMPS_PER_REQUEST: u32 = 10_000;
/// Timestamps stay below this (versions live at `0..i64::MAX`).
const LARGEST_TIMESTAMP: Timestamp = i64::MAX - 1;
/// How long an allocator's lease on a shared store lasts without renewal.
pub const ALLOCATOR_LEASE: Duration = Duration::from_secs(10);
/// What a released lease holds: the next allocator may take it at once.
const RELEASED: &[u8] = b"released";
/// The owner cell of a store whose timestamps come from a timelock server: this prefix and the
/// server cluster's id. No allocator in a process may then run on the store.
const TIMELOCK_OWNER: &str = "timelock ";

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
    #[error("another process ({holder}) is the timestamp authority of this store and keeps renewing its lease. Run one process per store and reach it through its management API, or configure a shared timelock server (timelock.servers) for every process")]
    OwnedElsewhere { holder: String },
    #[error("this store's timestamps come from the timelock server cluster {cluster}; configure timelock.servers (and its token) for every process that uses the store")]
    OwnedByTimelock { cluster: String },
    #[error("the store's persisted timestamp bound {bound} is above what the timelock server hands out; fast-forward the server past it first (this needs timelock.adminToken)")]
    TimelockBehindStore { bound: Timestamp },
    #[error("timestamp service unavailable (try again): {0}")]
    Unavailable(String),
    #[error("timestamp bound storage failed: {0}")]
    Storage(String),
}

impl TimestampError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<KvsError> for TimestampError {
    fn from(e: KvsError) -> Self {
        match e.class() {
            ErrorClass::Permanent => Self::Storage(e.to_string()),
            ErrorClass::Transient | ErrorClass::MaybeApplied => Self::Unavailable(e.to_string()),
        }
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
    /// The lease on a shared store, if this allocator needs one.
    lease: Option<Lease>,
}

/// This allocator's lease on a shared store.
struct Lease {
    id: String,
    generation: u64,
    /// What this allocator last wrote: the check-and-set expectation of the next renewal.
    written: Vec<u8>,
    /// Handing out stops at this instant unless a renewal succeeds first.
    valid_until: Instant,
    duration: Duration,
}

impl Lease {
    fn value(id: &str, generation: u64) -> Vec<u8> {
        format!("{id} {generation}").into_bytes()
    }
}

/// The generation of a lease value written by the allocator `id`, if it is one of its.
fn own_generation(value: &[u8], id: &str) -> Option<u64> {
    std::str::from_utf8(value)
        .ok()?
        .strip_prefix(id)?
        .strip_prefix(' ')?
        .parse()
        .ok()
}

/// How a [`PersistentTimestampService`] guards against other allocators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AllocatorOptions {
    /// Hold a lease of this length in the store (`None`: rely on the store being
    /// single-process, as an embedded RocksDB store is).
    pub lease: Option<Duration>,
    /// Take the lease even if another allocator seems to hold it: for a restore, which runs
    /// on a store nothing else uses (a restored store still carries the lease of the process
    /// it was copied from).
    pub take_over: bool,
}

impl AllocatorOptions {
    /// A lease exactly when the store can be reached by several processes.
    pub fn for_store(kvs: &dyn KeyValueService) -> Self {
        Self {
            lease: kvs.shared_between_processes().then_some(ALLOCATOR_LEASE),
            take_over: false,
        }
    }
}

struct Inner {
    kvs: Arc<dyn KeyValueService>,
    table: TableRef,
    cell: Cell,
    owner_cell: Cell,
    state: Mutex<State>,
}

/// The in-process timestamp service over a store's persisted bound.
pub struct PersistentTimestampService {
    inner: Arc<Inner>,
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

fn timelock_cluster(owner: &[u8]) -> Option<String> {
    std::str::from_utf8(owner)
        .ok()?
        .strip_prefix(TIMELOCK_OWNER)
        .map(str::to_owned)
}

/// Hands a store's timestamps to the timelock server cluster `cluster`, whose next timestamp
/// is above `server_fresh`: from then on no in-process allocator runs on the store. Waits out a
/// lease an in-process allocator left behind (as a second allocator would) and refuses one that
/// is being renewed. Fails with `TimelockBehindStore` when the store's persisted bound is at or
/// above `server_fresh`, so the server is fast-forwarded first and no timestamp is reused.
pub fn claim_for_timelock(
    kvs: Arc<dyn KeyValueService>,
    cluster: &str,
    server_fresh: Timestamp,
) -> Result<(), TimestampError> {
    let service = match PersistentTimestampService::with_options(
        kvs,
        AllocatorOptions {
            lease: Some(ALLOCATOR_LEASE),
            take_over: false,
        },
    ) {
        Ok(s) => s,
        Err(TimestampError::OwnedByTimelock { cluster: owner }) if owner == cluster => {
            return Ok(())
        }
        Err(e) => return Err(e),
    };
    let inner = &service.inner;
    let mut state = inner.lock()?;
    if state.upper >= server_fresh {
        return Err(TimestampError::TimelockBehindStore { bound: state.upper });
    }
    let Some(lease) = state.lease.take() else {
        return Err(TimestampError::Storage(
            "the allocator lease is missing".to_owned(),
        ));
    };
    inner
        .cas(
            &inner.owner_cell,
            Some(lease.written),
            format!("{TIMELOCK_OWNER}{cluster}").into_bytes(),
        )
        .map_err(TimestampError::from)?;
    // Nothing of this service is used any more (and `Drop` finds no lease to release).
    state.refused = Some(TimestampError::OwnedByTimelock {
        cluster: cluster.to_owned(),
    });
    Ok(())
}

fn allocator_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(nanos);
    format!("pid{}-{:016x}", std::process::id(), h.finish())
}

impl PersistentTimestampService {
    /// Loads the persisted bound (creating the `_timestamp` table if needed); the first
    /// timestamp handed out is above it. On a store shared between processes it first takes
    /// the allocator lease (see the module documentation).
    pub fn new(kvs: Arc<dyn KeyValueService>) -> Result<Self, TimestampError> {
        let options = AllocatorOptions::for_store(&*kvs);
        Self::with_options(kvs, options)
    }

    /// [`new`](Self::new) with explicit guards against other allocators.
    pub fn with_options(
        kvs: Arc<dyn KeyValueService>,
        options: AllocatorOptions,
    ) -> Result<Self, TimestampError> {
        let storage = |e: KvsError| TimestampError::Storage(e.to_string());
        let table = TableRef::system(TIMESTAMP_TABLE).map_err(storage)?;
        let cell = Cell::new("ts", "bound").map_err(storage)?;
        let owner_cell = Cell::new("ts", "owner").map_err(storage)?;
        if !kvs.list_tables()?.contains(&table) {
            kvs.create_table(&table, b"")?;
        }
        let inner = Arc::new(Inner {
            kvs,
            table,
            cell,
            owner_cell,
            state: Mutex::new(State {
                last: 0,
                upper: 0,
                persisted: None,
                refused: None,
                bound_writes: 0,
                lease: None,
            }),
        });
        if let Some(cluster) = inner
            .read(&inner.owner_cell)?
            .as_deref()
            .and_then(timelock_cluster)
        {
            return Err(TimestampError::OwnedByTimelock { cluster });
        }
        if let Some(duration) = options.lease {
            let lease = inner.take_lease(duration, options.take_over)?;
            inner.lock()?.lease = Some(lease);
            spawn_renewer(Arc::downgrade(&inner), duration);
        }
        // Read the bound only once the lease is ours: a previous holder may have raised it
        // until the moment it stopped.
        let persisted = inner.read(&inner.cell)?;
        let bound = persisted
            .as_deref()
            .map(decode_bound)
            .transpose()?
            .unwrap_or(0);
        {
            let mut state = inner.lock()?;
            state.last = bound;
            state.upper = bound;
            state.persisted = persisted;
        }
        Ok(Self { inner })
    }

    /// How many times this service has written the bound.
    pub fn bound_writes(&self) -> u64 {
        self.inner.lock().map(|s| s.bound_writes).unwrap_or(0)
    }
}

impl Drop for PersistentTimestampService {
    fn drop(&mut self) {
        // Best effort: a lease that is not released expires, and the next allocator waits.
        let Ok(mut state) = self.inner.lock() else {
            return;
        };
        if let Some(lease) = state.lease.take() {
            let _ = self.inner.kvs.check_and_set(
                &self.inner.table,
                &CheckAndSetRequest {
                    cell: self.inner.owner_cell.clone(),
                    expected: Some(lease.written),
                    new_value: RELEASED.to_vec(),
                },
            );
        }
    }
}

/// Renews the lease every quarter lease until the service is dropped or the lease is lost.
fn spawn_renewer(inner: Weak<Inner>, duration: Duration) {
    let spawned = std::thread::Builder::new()
        .name("ortelius-timestamp-lease".to_owned())
        .spawn(move || loop {
            std::thread::sleep(duration / 4);
            let Some(inner) = inner.upgrade() else { return };
            let Ok(mut state) = inner.lock() else { return };
            if state.refused.is_some() || state.lease.is_none() {
                return;
            }
            inner.renew_lease(&mut state);
        });
    // Without the thread the lease runs out and the service stops handing out timestamps
    // (`Unavailable`) rather than risking a second allocator.
    drop(spawned);
}

impl Inner {
    fn lock(&self) -> Result<MutexGuard<'_, State>, TimestampError> {
        self.state
            .lock()
            .map_err(|_| TimestampError::Storage("timestamp state lock poisoned".to_owned()))
    }

    fn read(&self, cell: &Cell) -> Result<Option<Vec<u8>>, TimestampError> {
        Ok(self
            .kvs
            .get(&self.table, &[(cell.clone(), ATOMIC_TS + 1)])?
            .remove(cell)
            .map(|v| v.contents))
    }

    fn cas(
        &self,
        cell: &Cell,
        expected: Option<Vec<u8>>,
        new_value: Vec<u8>,
    ) -> Result<(), KvsError> {
        self.kvs.check_and_set(
            &self.table,
            &CheckAndSetRequest {
                cell: cell.clone(),
                expected,
                new_value,
            },
        )
    }

    /// Takes the allocator lease: at once if it is free or released, after a whole lease of
    /// seeing it unrenewed otherwise; refuses if its holder renews it meanwhile.
    fn take_lease(&self, duration: Duration, take_over: bool) -> Result<Lease, TimestampError> {
        let id = allocator_id();
        let mine = Lease::value(&id, 0);
        // A margin for clocks that run at slightly different rates on different machines.
        let wait = duration + duration / 5;
        let mut unchanged_since: Option<(Vec<u8>, Instant)> = None;
        let started = Instant::now();
        loop {
            let current = self.read(&self.owner_cell)?;
            if let Some(cluster) = current.as_deref().and_then(timelock_cluster) {
                return Err(TimestampError::OwnedByTimelock { cluster });
            }
            let may_take = match &current {
                None => true,
                Some(v) if v == RELEASED || take_over => true,
                Some(v) => match &unchanged_since {
                    Some((seen, since)) if seen == v => since.elapsed() >= wait,
                    Some(_) => {
                        let holder = String::from_utf8_lossy(v).into_owned();
                        tracing::warn!(%holder, "timestamp allocator refused: another process holds the store's lease and renews it");
                        return Err(TimestampError::OwnedElsewhere { holder });
                    }
                    None => {
                        unchanged_since = Some((v.clone(), Instant::now()));
                        false
                    }
                },
            };
            if !may_take {
                std::thread::sleep(Duration::from_millis(200).min(duration / 4));
                continue;
            }
            let attempt = Instant::now();
            let taken = match self.cas(&self.owner_cell, current, mine.clone()) {
                Ok(()) => true,
                // Someone else took it between our read and write: look again.
                Err(KvsError::CheckAndSetFailed { .. }) => false,
                Err(e) if e.class() == ErrorClass::Permanent => return Err(e.into()),
                // The answer was lost: whether it took, the next read says.
                Err(e) => {
                    if attempt.duration_since(started) > wait * 2 {
                        return Err(e.into());
                    }
                    self.read(&self.owner_cell)?.as_deref() == Some(mine.as_slice())
                }
            };
            if taken {
                return Ok(Lease {
                    id,
                    generation: 0,
                    written: mine,
                    valid_until: attempt + duration,
                    duration,
                });
            }
            unchanged_since = None;
        }
    }

    /// One renewal; on success the lease is valid for a whole lease from the attempt's start.
    fn renew_lease(&self, state: &mut State) {
        let Some(lease) = state.lease.as_mut() else {
            return;
        };
        let attempt = Instant::now();
        let next = Lease::value(&lease.id, lease.generation + 1);
        match self.cas(&self.owner_cell, Some(lease.written.clone()), next.clone()) {
            Ok(()) => {
                lease.generation += 1;
                lease.written = next;
                lease.valid_until = attempt + lease.duration;
            }
            Err(KvsError::CheckAndSetFailed {
                actual: Some(actual),
                ..
            }) if own_generation(&actual, &lease.id).is_some_and(|g| g > lease.generation) => {
                // An earlier renewal whose answer was lost did land: the lease is still ours
                // (ids are unique; a taker writes its own). Expect that value from now on; the
                // lease is extended by the next renewal, not this one.
                lease.generation = own_generation(&actual, &lease.id).unwrap_or(lease.generation);
                lease.written = actual;
            }
            Err(KvsError::CheckAndSetFailed { actual, .. }) => {
                // Another allocator took over (we could not renew for a whole lease).
                let holder = actual.map_or("nobody".to_owned(), |a| {
                    String::from_utf8_lossy(&a).into_owned()
                });
                tracing::error!(%holder, "timestamp allocator lost its lease to another allocator; it refuses to hand out timestamps from now on");
                state.refused = Some(TimestampError::OwnedElsewhere { holder });
            }
            // Transient trouble: try again next time; handing out stops if it lasts.
            Err(_) => {}
        }
    }

    /// Checks this allocator may hand out timestamps now. A lease that ran out (the store was
    /// unreachable for a while) is renewed here first, so serving resumes as soon as the store
    /// answers rather than at the renewer's next turn.
    fn check_serving(&self, state: &mut State) -> Result<(), TimestampError> {
        if state.refused.is_none()
            && state
                .lease
                .as_ref()
                .is_some_and(|l| Instant::now() >= l.valid_until)
        {
            self.renew_lease(state);
        }
        if let Some(err) = &state.refused {
            return Err(err.clone());
        }
        if let Some(lease) = &state.lease {
            if Instant::now() >= lease.valid_until {
                return Err(TimestampError::Unavailable(
                    "this allocator could not renew its lease on the store in time; it hands out nothing until it can".to_owned(),
                ));
            }
        }
        Ok(())
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
        match self.cas(&self.cell, state.persisted.clone(), new_bytes.clone()) {
            Ok(()) => {}
            Err(KvsError::CheckAndSetFailed { actual, .. }) => {
                let err = TimestampError::MultipleAllocators {
                    expected: describe(state.persisted.as_deref()),
                    found: describe(actual.as_deref()),
                };
                tracing::error!(%err, "timestamp allocator refuses to hand out timestamps");
                state.refused = Some(err.clone());
                return Err(err);
            }
            Err(e) if e.class() == ErrorClass::Permanent => return Err(e.into()),
            // The reply was lost: find out whether the write landed before going on, so a
            // retry does not mistake our own write for another allocator's.
            Err(e) => match self.read(&self.cell) {
                Ok(now) if now.as_deref() == Some(new_bytes.as_slice()) => {}
                Ok(now) if now == state.persisted => return Err(e.into()),
                Ok(now) => {
                    let err = TimestampError::MultipleAllocators {
                        expected: describe(state.persisted.as_deref()),
                        found: describe(now.as_deref()),
                    };
                    tracing::error!(%err, "timestamp allocator refuses to hand out timestamps");
                    state.refused = Some(err.clone());
                    return Err(err);
                }
                Err(_) => return Err(e.into()),
            },
        }
        state.upper = new_bound;
        state.persisted = Some(new_bytes);
        state.bound_writes += 1;
        Ok(())
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
        let inner = &self.inner;
        let mut state = inner.lock()?;
        inner.check_serving(&mut state)?;
        let last = state
            .last
            .checked_add(i64::from(count))
            .filter(|l| *l <= LARGEST_TIMESTAMP)
            .ok_or(TimestampError::Exhausted)?;
        inner.raise_bound(&mut state, last)?;
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
        let inner = &self.inner;
        let mut state = inner.lock()?;
        inner.check_serving(&mut state)?;
        if to <= state.last {
            return Ok(FastForward::AlreadyBeyond {
                current: state.last,
            });
        }
        inner.raise_bound(&mut state, to)?;
        let from = state.last;
        state.last = to;
        Ok(FastForward::Advanced { from, to })
    }
}
