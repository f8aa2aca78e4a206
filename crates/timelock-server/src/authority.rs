//! The authority a leader serves: timestamps above a durable high-water mark, leased locks
//! tagged with the leader's epoch, and an immutable timestamp held back after a change of
//! leader until every lock of the previous one could have expired.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ortelius_timelock::wire::{ErrorCode, RemoteToken};
use ortelius_timelock::{
    InProcessLockService, LockDescriptor, LockError, LockService, LockToken, DEFAULT_LEASE,
};

/// Timestamps stay below this.
const LARGEST: i64 = i64::MAX - 1;
/// How far ahead of the last handed-out timestamp the high-water mark is raised.
pub const HWM_BUFFER: i64 = 1_000_000;
/// Most timestamps one request may ask for.
pub const MAX_PER_REQUEST: u32 = 100_000;

/// Where the high-water mark (and the immutable-timestamp floor) is kept: a local file, or
/// etcd guarded by the leader key.
pub trait Durable: Send + Sync {
    /// Persists a higher mark; fails (and nothing may be handed out above the old mark) if
    /// this server cannot, or may no longer lead.
    fn raise(&self, hwm: i64) -> std::result::Result<(), String>;
    /// Records the current immutable timestamp, for the next leader's hold-back.
    fn record_floor(&self, floor: i64) -> std::result::Result<(), String>;
}

/// A refusal, as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

type Result<T> = std::result::Result<T, Refusal>;

/// One leadership term.
struct Term {
    epoch: u64,
    durable: Arc<dyn Durable>,
    last: i64,
    upper: i64,
    /// Nothing is served at or after this instant unless leadership is renewed.
    valid_until: Instant,
    /// Until this instant the immutable timestamp is at most `floor`.
    holdback_until: Instant,
    floor: i64,
    locks: Arc<InProcessLockService>,
}

/// What a term starts from.
pub struct TermStart {
    pub epoch: u64,
    pub durable: Arc<dyn Durable>,
    /// The persisted high-water mark: every timestamp ever handed out is at or below it.
    pub hwm: i64,
    /// The last recorded immutable timestamp (0 if none).
    pub floor: i64,
    pub valid_until: Instant,
}

/// The serving state of one server.
pub struct Authority {
    term: Mutex<Option<Term>>,
    lease: Duration,
}

impl Authority {
    /// `lease`: how long locks last without a refresh (clients refresh well within it).
    pub fn new(lease: Duration) -> Self {
        Self {
            term: Mutex::new(None),
            lease,
        }
    }

    fn state(&self) -> Result<MutexGuard<'_, Option<Term>>> {
        self.term
            .lock()
            .map_err(|_| Refusal::new(ErrorCode::Unavailable, "timelock state poisoned"))
    }

    /// Begins serving a new term. Timestamps start above `hwm`; the immutable timestamp is
    /// held at the previous leader's floor for one lock lease.
    pub fn begin_term(&self, start: TermStart) -> Result<()> {
        let mut state = self.state()?;
        let now = Instant::now();
        *state = Some(Term {
            epoch: start.epoch,
            durable: start.durable,
            last: start.hwm,
            upper: start.hwm,
            valid_until: start.valid_until,
            holdback_until: now + self.lease,
            floor: start.floor.min(start.hwm),
            locks: Arc::new(InProcessLockService::new(
                Arc::new(ortelius_timelock::SystemClock),
                self.lease,
            )),
        });
        Ok(())
    }

    /// Extends the current term's validity (leadership renewed).
    pub fn renew(&self, epoch: u64, valid_until: Instant) {
        if let Ok(mut state) = self.state() {
            if let Some(term) = state.as_mut().filter(|t| t.epoch == epoch) {
                term.valid_until = term.valid_until.max(valid_until);
            }
        }
    }

    /// Stops serving (leadership lost); every lock of the term is gone.
    pub fn end_term(&self) {
        if let Ok(mut state) = self.state() {
            *state = None;
        }
    }

    /// The epoch being served, if any.
    pub fn epoch(&self) -> Option<u64> {
        self.state().ok()?.as_ref().map(|t| t.epoch)
    }

    fn serving(state: &mut Option<Term>) -> Result<&mut Term> {
        let term = state.as_mut().ok_or_else(|| {
            Refusal::new(ErrorCode::NotLeader, "this timelock server does not lead")
        })?;
        if Instant::now() >= term.valid_until {
            return Err(Refusal::new(
                ErrorCode::NotLeader,
                "this timelock server's leadership may have expired",
            ));
        }
        Ok(term)
    }

    fn raise(term: &mut Term, needed: i64) -> Result<()> {
        if needed <= term.upper {
            return Ok(());
        }
        let new = needed.saturating_add(HWM_BUFFER).min(LARGEST);
        term.durable
            .raise(new)
            .map_err(|e| Refusal::new(ErrorCode::Unavailable, e))?;
        term.upper = new;
        Ok(())
    }

    /// `count` contiguous fresh timestamps.
    pub fn fresh(&self, count: u32) -> Result<(i64, i64)> {
        if count == 0 || count > MAX_PER_REQUEST {
            return Err(Refusal::new(
                ErrorCode::Invalid,
                format!("ask for 1 to {MAX_PER_REQUEST} timestamps, not {count}"),
            ));
        }
        let mut state = self.state()?;
        let term = Self::serving(&mut state)?;
        let last = term
            .last
            .checked_add(i64::from(count))
            .filter(|l| *l <= LARGEST)
            .ok_or_else(|| Refusal::new(ErrorCode::Exhausted, "timestamps are exhausted"))?;
        Self::raise(term, last)?;
        let first = term.last + 1;
        term.last = last;
        Ok((first, last))
    }

    /// Every later timestamp is above `to`; returns (advanced, previous, current).
    pub fn fast_forward(&self, to: i64) -> Result<(bool, i64, i64)> {
        if !(0..LARGEST).contains(&to) {
            return Err(Refusal::new(
                ErrorCode::Invalid,
                format!("cannot fast-forward to {to}"),
            ));
        }
        let mut state = self.state()?;
        let term = Self::serving(&mut state)?;
        if to <= term.last {
            return Ok((false, term.last, term.last));
        }
        Self::raise(term, to)?;
        let previous = std::mem::replace(&mut term.last, to);
        Ok((true, previous, to))
    }

    fn locks(&self) -> Result<(u64, Arc<InProcessLockService>)> {
        let mut state = self.state()?;
        let term = Self::serving(&mut state)?;
        Ok((term.epoch, term.locks.clone()))
    }

    fn lock_error(e: LockError) -> Refusal {
        match e {
            LockError::Timeout { .. } => Refusal::new(ErrorCode::LockTimeout, e.to_string()),
            other => Refusal::new(ErrorCode::Unavailable, other.to_string()),
        }
    }

    fn remote(epoch: u64, token: LockToken) -> RemoteToken {
        RemoteToken {
            epoch,
            id: token.raw(),
        }
    }

    /// The tokens of `tokens` granted in this term, as local tokens.
    fn local(epoch: u64, tokens: &[RemoteToken]) -> Vec<LockToken> {
        tokens
            .iter()
            .filter(|t| t.epoch == epoch)
            .map(|t| LockToken::from_raw(t.id))
            .collect()
    }

    pub fn lock(&self, descriptors: Vec<Vec<u8>>, timeout: Duration) -> Result<RemoteToken> {
        let (epoch, locks) = self.locks()?;
        let descriptors: Vec<LockDescriptor> = descriptors
            .into_iter()
            .map(LockDescriptor::from_bytes)
            .collect();
        let token = locks
            .lock(&descriptors, timeout)
            .map_err(Self::lock_error)?;
        // A lock granted in a term that ended meanwhile is worthless: refuse it.
        if self.epoch() != Some(epoch) {
            return Err(Refusal::new(ErrorCode::NotLeader, "leadership changed"));
        }
        Ok(Self::remote(epoch, token))
    }

    pub fn refresh(&self, tokens: &[RemoteToken]) -> Result<Vec<RemoteToken>> {
        let (epoch, locks) = self.locks()?;
        let valid = locks
            .refresh(&Self::local(epoch, tokens))
            .map_err(Self::lock_error)?;
        Ok(valid.into_iter().map(|t| Self::remote(epoch, t)).collect())
    }

    pub fn unlock(&self, tokens: &[RemoteToken]) -> Result<Vec<RemoteToken>> {
        let (epoch, locks) = self.locks()?;
        let released = locks
            .unlock(&Self::local(epoch, tokens))
            .map_err(Self::lock_error)?;
        Ok(released
            .into_iter()
            .map(|t| Self::remote(epoch, t))
            .collect())
    }

    pub fn wait_for_locks(&self, descriptors: Vec<Vec<u8>>, timeout: Duration) -> Result<()> {
        let (_, locks) = self.locks()?;
        let descriptors: Vec<LockDescriptor> = descriptors
            .into_iter()
            .map(LockDescriptor::from_bytes)
            .collect();
        locks
            .wait_for_locks(&descriptors, timeout)
            .map_err(Self::lock_error)
    }

    pub fn lock_immutable(&self, ts: i64) -> Result<RemoteToken> {
        let (epoch, locks) = self.locks()?;
        let token = locks
            .lock_immutable_timestamp(ts)
            .map_err(Self::lock_error)?;
        Ok(Self::remote(epoch, token))
    }

    /// A guard lock on a fresh timestamp, then a start timestamp: one round trip for clients.
    pub fn start_transaction(&self) -> Result<(RemoteToken, i64)> {
        let (guard, _) = self.fresh(1)?;
        let token = self.lock_immutable(guard)?;
        let (start, _) = self.fresh(1)?;
        Ok((token, start))
    }

    /// The smallest locked timestamp; during the hold-back after a change of leader, never
    /// above the previous leader's floor (its transactions may still be running).
    pub fn min_locked(&self) -> Result<Option<i64>> {
        let (floor, holdback_until, locks) = {
            let mut state = self.state()?;
            let term = Self::serving(&mut state)?;
            (term.floor, term.holdback_until, term.locks.clone())
        };
        let own = locks.min_locked_timestamp().map_err(Self::lock_error)?;
        if Instant::now() < holdback_until {
            return Ok(Some(own.map_or(floor, |o| o.min(floor))));
        }
        Ok(own)
    }

    /// Records the current immutable timestamp with the durable store (every second or so).
    pub fn record_floor(&self) {
        let Ok(Some(own)) = self.min_locked() else {
            // No locks: the next timestamp is the floor.
            if let Ok(state) = self.state() {
                if let Some(term) = state.as_ref() {
                    let _ = term.durable.record_floor(term.last + 1);
                }
            }
            return;
        };
        if let Ok(state) = self.state() {
            if let Some(term) = state.as_ref() {
                let _ = term.durable.record_floor(own);
            }
        }
    }

    /// The lock lease clients must refresh within.
    pub fn lease(&self) -> Duration {
        self.lease
    }
}

impl Default for Authority {
    fn default() -> Self {
        Self::new(DEFAULT_LEASE)
    }
}
