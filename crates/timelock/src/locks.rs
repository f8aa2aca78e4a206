//! The lock service: exclusive, leased locks on opaque descriptors, plus immutable-timestamp
//! tracking.
//!
//! Descriptors of one request are acquired one by one in sorted order (as TimeLock does), so two
//! requests can never wait for each other in a cycle. A granted token's locks are held until
//! unlocked or until its lease runs out without a refresh; expired tokens are reclaimed lazily by
//! whoever looks next.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use foldhash::HashMap;
use ortelius_kvs::{Cell, TableRef, Timestamp};

use crate::clock::{Clock, SystemClock};
use crate::timestamps::{TimestampError, TimestampService};

/// How long a token stays valid after its last refresh, by default.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(20);
/// Longest single sleep while waiting, so lease expiry is noticed without a wake-up.
const WAIT_SLICE: Duration = Duration::from_millis(20);

/// What a lock protects: opaque bytes with constructors for the protocol's descriptors.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockDescriptor(Vec<u8>);

fn push_len_prefixed(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(&(part.len() as u32).to_be_bytes());
    out.extend_from_slice(part);
}

/// A descriptor of `kind` for `table` and `parts`: each length-prefixed, the table by its
/// qualified name (`namespace.name`, or `name`), built in one allocation.
fn table_descriptor(kind: u8, table: &TableRef, parts: &[&[u8]]) -> Vec<u8> {
    let (namespace, name) = (table.namespace(), table.name());
    let qualified_len = if namespace.is_empty() {
        name.len()
    } else {
        namespace.len() + 1 + name.len()
    };
    let parts_len: usize = parts.iter().map(|p| 4 + p.len()).sum();
    let mut d = Vec::with_capacity(1 + 4 + qualified_len + parts_len);
    d.push(kind);
    d.extend_from_slice(&(qualified_len as u32).to_be_bytes());
    if !namespace.is_empty() {
        d.extend_from_slice(namespace.as_bytes());
        d.push(b'.');
    }
    d.extend_from_slice(name.as_bytes());
    for part in parts {
        push_len_prefixed(&mut d, part);
    }
    d
}

impl LockDescriptor {
    /// The lock on a whole row of a table (row-level conflict handlers, the transactions-table
    /// row of a committing transaction).
    pub fn row(table: &TableRef, row: &[u8]) -> Self {
        Self(table_descriptor(b'R', table, &[row]))
    }

    /// The lock on one cell (cell-level conflict handlers).
    pub fn cell(table: &TableRef, cell: &Cell) -> Self {
        Self(table_descriptor(b'C', table, &[cell.row(), cell.column()]))
    }

    /// A lock with a name (e.g. a maintenance job).
    pub fn named(name: &str) -> Self {
        let mut d = vec![b'N'];
        d.extend_from_slice(name.as_bytes());
        Self(d)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// A descriptor from bytes made by one of the constructors (received over the wire).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }
}

/// A grant of locks (or of an immutable-timestamp lock).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockToken(u64);

impl LockToken {
    /// A token from its number (lock services other than the in-process one mint their own).
    pub fn from_raw(raw: u64) -> Self {
        Self(raw)
    }

    pub fn raw(self) -> u64 {
        self.0
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LockError {
    #[error(
        "timed out after {waited:?} waiting for a lock held by another transaction ({descriptor})"
    )]
    Timeout {
        descriptor: String,
        waited: Duration,
    },
    #[error("the lock service's state lock was poisoned by a panic")]
    Poisoned,
    /// The lock service cannot be reached or lost its state (a leader change): nothing was
    /// taken, and tokens it granted before may be gone.
    #[error("lock service unavailable (try again): {0}")]
    Unavailable(String),
}

impl LockError {
    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Exclusive, leased locks and immutable-timestamp tracking.
pub trait LockService: Send + Sync {
    /// Takes every descriptor exclusively (sorted order), waiting up to `timeout` in total.
    /// On timeout nothing stays held.
    fn lock(
        &self,
        descriptors: &[LockDescriptor],
        timeout: Duration,
    ) -> Result<LockToken, LockError>;
    /// Extends the leases of the tokens that are still valid and returns exactly those.
    fn refresh(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError>;
    /// Releases tokens; returns the ones that were still held.
    fn unlock(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError>;
    /// Waits until none of the descriptors is held, without taking them.
    fn wait_for_locks(
        &self,
        descriptors: &[LockDescriptor],
        timeout: Duration,
    ) -> Result<(), LockError>;
    /// Registers `ts` as the start guard of a write transaction (leased like a lock).
    fn lock_immutable_timestamp(&self, ts: Timestamp) -> Result<LockToken, LockError>;
    /// The smallest timestamp held by a valid immutable-timestamp lock, if any.
    fn min_locked_timestamp(&self) -> Result<Option<Timestamp>, LockError>;

    /// Starts a write transaction: locks a fresh timestamp as its immutable-timestamp guard,
    /// *then* takes its start timestamp, so no sweep can pass the start while it runs. Returns
    /// the guard's token and the start timestamp. A remote authority does both in one round
    /// trip; this default makes the three calls in order.
    fn start_transaction(
        &self,
        timestamps: &dyn TimestampService,
    ) -> Result<(LockToken, Timestamp), StartError> {
        let guard_ts = timestamps.fresh_timestamp()?;
        let token = self.lock_immutable_timestamp(guard_ts)?;
        match timestamps.fresh_timestamp() {
            Ok(start_ts) => Ok((token, start_ts)),
            Err(e) => {
                let _ = self.unlock(&[token]);
                Err(e.into())
            }
        }
    }
}

/// Why a transaction could not start.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Timestamp(#[from] TimestampError),
    #[error(transparent)]
    Lock(#[from] LockError),
}

struct Grant {
    descriptors: Vec<LockDescriptor>,
    /// `None` while the token is still acquiring (not reapable then).
    expires: Option<Instant>,
    /// The token's entry in `State::expiry`: its expiry when queued. A refresh moves only
    /// `expires`; the reaper queues the token again when the old entry comes due.
    queued: Option<Instant>,
    immutable_ts: Option<Timestamp>,
}

#[derive(Default)]
struct State {
    next_token: u64,
    /// Held locks only, so the map stays as small as the locks in use: a fast hash, seeded per
    /// process (`foldhash`), rather than SipHash, which took about 5k instructions per write
    /// transaction across the lock service and the manager's caches.
    owners: HashMap<LockDescriptor, u64>,
    grants: HashMap<u64, Grant>,
    /// One entry per granted token, at or before its expiry (see `Grant::queued`).
    expiry: BTreeSet<(Instant, u64)>,
    immutable: BTreeMap<Timestamp, usize>,
    /// Callers waiting for a release (a release wakes them only if there are any: a wake-up is
    /// a system call).
    waiting: usize,
}

impl State {
    fn new_token(&mut self, expires: Option<Instant>, immutable_ts: Option<Timestamp>) -> u64 {
        self.next_token += 1;
        let id = self.next_token;
        self.grants.insert(
            id,
            Grant {
                descriptors: Vec::new(),
                expires,
                queued: expires,
                immutable_ts,
            },
        );
        if let Some(at) = expires {
            self.expiry.insert((at, id));
        }
        if let Some(ts) = immutable_ts {
            *self.immutable.entry(ts).or_default() += 1;
        }
        id
    }

    /// Removes a token and frees what it held; true if it existed.
    fn release(&mut self, id: u64) -> bool {
        let Some(grant) = self.grants.remove(&id) else {
            return false;
        };
        if let Some(at) = grant.queued {
            self.expiry.remove(&(at, id));
        }
        for d in grant.descriptors {
            if let Entry::Occupied(owner) = self.owners.entry(d) {
                if *owner.get() == id {
                    owner.remove();
                }
            }
        }
        if let Some(ts) = grant.immutable_ts {
            if let Some(n) = self.immutable.get_mut(&ts) {
                *n -= 1;
                if *n == 0 {
                    self.immutable.remove(&ts);
                }
            }
        }
        true
    }

    /// Reclaims expired tokens; true if anything was freed.
    fn reap(&mut self, now: Instant) -> bool {
        let mut freed = false;
        while let Some(&(at, id)) = self.expiry.first() {
            if at > now {
                break;
            }
            self.expiry.pop_first();
            let Some(grant) = self.grants.get_mut(&id) else {
                continue;
            };
            grant.queued = None;
            match grant.expires {
                // Refreshed since it was queued: queue it at its current expiry.
                Some(expires) if expires > now => {
                    grant.queued = Some(expires);
                    self.expiry.insert((expires, id));
                }
                _ => freed |= self.release(id),
            }
        }
        freed
    }
}

/// The in-process lock service (embedded mode).
pub struct InProcessLockService {
    state: Mutex<State>,
    released: Condvar,
    clock: Arc<dyn Clock>,
    lease: Duration,
}

impl Default for InProcessLockService {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock), DEFAULT_LEASE)
    }
}

impl InProcessLockService {
    pub fn new(clock: Arc<dyn Clock>, lease: Duration) -> Self {
        Self {
            state: Mutex::new(State::default()),
            released: Condvar::new(),
            clock,
            lease,
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, State>, LockError> {
        self.state.lock().map_err(|_| LockError::Poisoned)
    }

    /// Reaps expired tokens and wakes waiters if that freed anything.
    fn reap(&self, state: &mut State) {
        if state.reap(self.clock.now()) {
            self.wake(state);
        }
    }

    /// Wakes the callers waiting for a release, if any.
    fn wake(&self, state: &State) {
        if state.waiting > 0 {
            self.released.notify_all();
        }
    }

    fn wait<'a>(
        &self,
        mut guard: MutexGuard<'a, State>,
        deadline: Instant,
    ) -> Result<MutexGuard<'a, State>, LockError> {
        let slice = deadline
            .saturating_duration_since(Instant::now())
            .min(WAIT_SLICE);
        guard.waiting += 1;
        let mut guard = self
            .released
            .wait_timeout(guard, slice)
            .map(|(g, _)| g)
            .map_err(|_| LockError::Poisoned)?;
        guard.waiting -= 1;
        Ok(guard)
    }
}

fn describe(d: &LockDescriptor) -> String {
    d.as_bytes().escape_ascii().to_string()
}

impl LockService for InProcessLockService {
    fn lock(
        &self,
        descriptors: &[LockDescriptor],
        timeout: Duration,
    ) -> Result<LockToken, LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut sorted = descriptors.to_vec();
        sorted.sort();
        sorted.dedup();
        let mut state = self.state()?;
        let id = state.new_token(None, None);
        for d in sorted {
            loop {
                self.reap(&mut state);
                if !state.owners.contains_key(&d) {
                    state.owners.insert(d.clone(), id);
                    if let Some(grant) = state.grants.get_mut(&id) {
                        grant.descriptors.push(d);
                    }
                    break;
                }
                if Instant::now() >= deadline {
                    state.release(id);
                    self.wake(&state);
                    return Err(LockError::Timeout {
                        descriptor: describe(&d),
                        waited: started.elapsed(),
                    });
                }
                state = self.wait(state, deadline)?;
            }
        }
        let expires = self.clock.now() + self.lease;
        if let Some(grant) = state.grants.get_mut(&id) {
            grant.expires = Some(expires);
            grant.queued = Some(expires);
            state.expiry.insert((expires, id));
        }
        Ok(LockToken(id))
    }

    fn refresh(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        let mut state = self.state()?;
        self.reap(&mut state);
        let expires = self.clock.now() + self.lease;
        let mut valid = Vec::new();
        for token in tokens {
            let Some(grant) = state.grants.get_mut(&token.0) else {
                continue;
            };
            // Still acquiring: not granted yet.
            if grant.expires.is_none() {
                continue;
            }
            grant.expires = Some(expires);
            valid.push(*token);
        }
        Ok(valid)
    }

    fn unlock(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        let mut state = self.state()?;
        self.reap(&mut state);
        let released: Vec<LockToken> = tokens
            .iter()
            .copied()
            .filter(|t| state.release(t.0))
            .collect();
        if !released.is_empty() {
            self.wake(&state);
        }
        Ok(released)
    }

    fn wait_for_locks(
        &self,
        descriptors: &[LockDescriptor],
        timeout: Duration,
    ) -> Result<(), LockError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let mut state = self.state()?;
        loop {
            self.reap(&mut state);
            let Some(held) = descriptors.iter().find(|d| state.owners.contains_key(*d)) else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(LockError::Timeout {
                    descriptor: describe(held),
                    waited: started.elapsed(),
                });
            }
            state = self.wait(state, deadline)?;
        }
    }

    fn lock_immutable_timestamp(&self, ts: Timestamp) -> Result<LockToken, LockError> {
        let mut state = self.state()?;
        let expires = self.clock.now() + self.lease;
        Ok(LockToken(state.new_token(Some(expires), Some(ts))))
    }

    fn min_locked_timestamp(&self) -> Result<Option<Timestamp>, LockError> {
        let mut state = self.state()?;
        self.reap(&mut state);
        Ok(state.immutable.keys().next().copied())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Descriptors cross the wire to a shared lock server: their bytes must not change.
    #[test]
    fn descriptors_keep_their_encoding() -> Result<(), ortelius_kvs::KvsError> {
        let user = TableRef::new("bank", "accounts")?;
        let system = TableRef::system("_transactions")?;
        let cell = Cell::new(b"r1".to_vec(), b"c".to_vec())?;
        assert_eq!(
            LockDescriptor::row(&user, b"r1").as_bytes(),
            b"R\0\0\0\x0dbank.accounts\0\0\0\x02r1"
        );
        assert_eq!(
            LockDescriptor::row(&system, b"\x01").as_bytes(),
            b"R\0\0\0\x0d_transactions\0\0\0\x01\x01"
        );
        assert_eq!(
            LockDescriptor::cell(&user, &cell).as_bytes(),
            b"C\0\0\0\x0dbank.accounts\0\0\0\x02r1\0\0\0\x01c"
        );
        Ok(())
    }
}
