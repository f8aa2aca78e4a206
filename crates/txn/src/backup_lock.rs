//! The backup lock: while it is held, nothing deletes versions (DESIGN.md §4).
//!
//! It lives in the store — one cell of the atomic system table `_backup_lock`, changed only by
//! check-and-set — so any process can acquire, inspect or release it (the runbook acquires and
//! releases in separate commands), and it is part of a backup (a restore releases it).
//!
//! Guarantee: when [`BackupLock::acquire`] returns, no deletion is in flight and none starts
//! until release. Deleters register a leased entry in the same cell before each deletion batch
//! ([`BackupLock::begin_deletion`], refused while the lock is held) and remove it afterwards;
//! `acquire` first marks the lock held (so no new deletion can start), then waits until every
//! registered deletion has finished or its lease has run out (a crashed deleter cannot block a
//! backup for longer than one lease). An optional lease on the lock itself lets deleters resume
//! if the operator who took it vanished.
//!
//! Encoding (text, one field per line, so it can be read in a store dump):
//! `ortelius-backup-lock v1`, then `held <acquired_ms> <lease_expires_ms|-> <holder>` and
//! `reason <reason>` when held, then one `deleter <id> <expires_ms>` line per registration.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ortelius_kvs::{Cell, CheckAndSetRequest, KeyValueService, KvsError, TableRef, ATOMIC_TS};

/// The system table holding the backup lock.
pub const BACKUP_LOCK_TABLE: &str = "_backup_lock";
const HEADER: &str = "ortelius-backup-lock v1";
/// How often `acquire` re-checks in-flight deletions.
const POLL: Duration = Duration::from_millis(20);

/// Milliseconds since the Unix epoch (wall clock: the lock is shared across processes).
pub trait WallClock: Send + Sync {
    fn now_ms(&self) -> u64;
}

/// A duration in milliseconds, saturating (a lease of centuries is "never", not an overflow).
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The system wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemWallClock;

impl WallClock for SystemWallClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Who holds the lock, why, since when, and until when.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupLockHolder {
    pub holder: String,
    pub reason: String,
    pub acquired_at_ms: u64,
    /// `None`: held until released.
    pub lease_expires_ms: Option<u64>,
}

impl BackupLockHolder {
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.lease_expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// What `status` reports.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BackupLockStatus {
    /// The holder, if the lock is held and its lease (if any) has not run out.
    pub held: Option<BackupLockHolder>,
    /// A holder whose lease ran out (the lock no longer stops deletions).
    pub expired: Option<BackupLockHolder>,
    /// Deletion batches registered and not yet expired.
    pub deletions_in_flight: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupLockError {
    #[error("the backup lock is already held by {} (reason: {}) since {} ms after the epoch; release it first (`backup-lock --release`)", .0.holder, .0.reason, .0.acquired_at_ms)]
    AlreadyHeld(BackupLockHolder),
    #[error("the backup lock is not held; nothing to release")]
    NotHeld,
    #[error("the backup lock is held by {} (reason: {}), not by {expected}; it was left alone", .holder.holder, .holder.reason)]
    HeldByAnother {
        holder: BackupLockHolder,
        expected: String,
    },
    #[error("the backup lock is held by {} (reason: {}): deletions are paused until it is released", .0.holder, .0.reason)]
    DeletionsPaused(BackupLockHolder),
    #[error("deletions still in flight after waiting {0:?}; the lock was not acquired, try again")]
    DeletionsStillInFlight(Duration),
    #[error("invalid backup lock request: {0}")]
    Invalid(String),
    #[error("the stored backup lock is unreadable: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Store(#[from] KvsError),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State {
    held: Option<BackupLockHolder>,
    /// (registration id, lease expiry in ms)
    deleters: Vec<(u64, u64)>,
}

impl State {
    fn encode(&self) -> Vec<u8> {
        let mut out = String::from(HEADER);
        if let Some(h) = &self.held {
            let lease = h.lease_expires_ms.map_or("-".to_owned(), |e| e.to_string());
            out += &format!(
                "\nheld {} {} {}\nreason {}",
                h.acquired_at_ms, lease, h.holder, h.reason
            );
        }
        for (id, expires) in &self.deleters {
            out += &format!("\ndeleter {id} {expires}");
        }
        out.into_bytes()
    }

    fn decode(bytes: &[u8]) -> Result<Self, BackupLockError> {
        let corrupt = |what: &str| BackupLockError::Corrupt(what.to_owned());
        let text = std::str::from_utf8(bytes).map_err(|_| corrupt("not UTF-8"))?;
        let mut lines = text.lines();
        if lines.next() != Some(HEADER) {
            return Err(corrupt("unknown format"));
        }
        let mut state = State::default();
        for line in lines {
            let (kind, rest) = line.split_once(' ').ok_or_else(|| corrupt(line))?;
            match kind {
                "held" => {
                    let mut parts = rest.splitn(3, ' ');
                    let acquired_at_ms = parts
                        .next()
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| corrupt(line))?;
                    let lease_expires_ms = match parts.next().ok_or_else(|| corrupt(line))? {
                        "-" => None,
                        e => Some(e.parse().map_err(|_| corrupt(line))?),
                    };
                    let holder = parts.next().unwrap_or_default().to_owned();
                    state.held = Some(BackupLockHolder {
                        holder,
                        reason: String::new(),
                        acquired_at_ms,
                        lease_expires_ms,
                    });
                }
                "reason" => {
                    if let Some(h) = state.held.as_mut() {
                        h.reason = rest.to_owned();
                    }
                }
                "deleter" => {
                    let (id, expires) = rest.split_once(' ').ok_or_else(|| corrupt(line))?;
                    state.deleters.push((
                        id.parse().map_err(|_| corrupt(line))?,
                        expires.parse().map_err(|_| corrupt(line))?,
                    ));
                }
                _ => return Err(corrupt(line)),
            }
        }
        Ok(state)
    }

    /// The holder, if its lease has not run out.
    fn live_holder(&self, now_ms: u64) -> Option<&BackupLockHolder> {
        self.held.as_ref().filter(|h| !h.is_expired(now_ms))
    }
}

fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], " ")
}

/// The backup lock of one store.
#[derive(Clone)]
pub struct BackupLock {
    kvs: Arc<dyn KeyValueService>,
    table: TableRef,
    cell: Cell,
    clock: Arc<dyn WallClock>,
}

impl BackupLock {
    /// Opens the lock (creating its table if needed).
    pub fn new(
        kvs: Arc<dyn KeyValueService>,
        clock: Arc<dyn WallClock>,
    ) -> Result<Self, BackupLockError> {
        let table = TableRef::system(BACKUP_LOCK_TABLE)?;
        if !kvs.list_tables()?.contains(&table) {
            kvs.create_table(&table, b"")?;
        }
        Ok(Self {
            kvs,
            table,
            cell: Cell::new("backup", "lock")?,
            clock,
        })
    }

    fn read(&self) -> Result<(Option<Vec<u8>>, State), BackupLockError> {
        let raw = self
            .kvs
            .get(&self.table, &[(self.cell.clone(), ATOMIC_TS + 1)])?
            .remove(&self.cell)
            .map(|v| v.contents);
        let state = match &raw {
            Some(bytes) => State::decode(bytes)?,
            None => State::default(),
        };
        Ok((raw, state))
    }

    /// Replaces the state if it is still `expected`; false if someone changed it first.
    fn swap(&self, expected: Option<Vec<u8>>, new: &State) -> Result<bool, BackupLockError> {
        let request = CheckAndSetRequest {
            cell: self.cell.clone(),
            expected,
            new_value: new.encode(),
        };
        match self.kvs.check_and_set(&self.table, &request) {
            Ok(()) => Ok(true),
            Err(KvsError::CheckAndSetFailed { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Read-modify-write until the check-and-set lands. `change` returns the new state, or an
    /// error to stop.
    fn update<T>(
        &self,
        mut change: impl FnMut(&mut State, u64) -> Result<T, BackupLockError>,
    ) -> Result<T, BackupLockError> {
        loop {
            let (raw, mut state) = self.read()?;
            let result = change(&mut state, self.clock.now_ms())?;
            if self.swap(raw, &state)? {
                return Ok(result);
            }
        }
    }

    /// Acquires the lock, then waits (up to `wait`) for deletions in flight to finish. On
    /// timeout the lock is released again and `DeletionsStillInFlight` returned.
    pub fn acquire(
        &self,
        holder: &str,
        reason: &str,
        lease: Option<Duration>,
        wait: Duration,
    ) -> Result<BackupLockHolder, BackupLockError> {
        if holder.trim().is_empty() {
            return Err(BackupLockError::Invalid(
                "the holder name is empty".to_owned(),
            ));
        }
        let taken = self.update(|state, now| {
            if let Some(h) = state.live_holder(now) {
                return Err(BackupLockError::AlreadyHeld(h.clone()));
            }
            let h = BackupLockHolder {
                holder: one_line(holder),
                reason: one_line(reason),
                acquired_at_ms: now,
                lease_expires_ms: lease.map(|l| now.saturating_add(millis(l))),
            };
            state.held = Some(h.clone());
            Ok(h)
        })?;
        tracing::info!(
            holder = %taken.holder,
            reason = %taken.reason,
            lease_expires_ms = ?taken.lease_expires_ms,
            "backup lock taken; waiting for deletions in flight"
        );
        let started = Instant::now();
        loop {
            if self.status()?.deletions_in_flight == 0 {
                tracing::info!(holder = %taken.holder, "backup lock acquired: deletions paused");
                return Ok(taken);
            }
            if started.elapsed() >= wait {
                let _ = self.update(|state, _| {
                    if state.held.as_ref() == Some(&taken) {
                        state.held = None;
                    }
                    Ok(())
                });
                tracing::warn!(holder = %taken.holder, ?wait, "backup lock given up: deletions still in flight");
                return Err(BackupLockError::DeletionsStillInFlight(wait));
            }
            std::thread::sleep(POLL);
        }
    }

    /// Releases the lock, whoever took it (this may be another process, or a restored store).
    /// Returns the holder it released; `NotHeld` if it was not held (an expired holder is
    /// released too, and reported).
    pub fn release(&self) -> Result<BackupLockHolder, BackupLockError> {
        self.release_held_by(None)
    }

    /// [`release`](Self::release), but with `Some(holder)` only if `holder` holds the lock
    /// (its lease expired or not): `HeldByAnother` otherwise, and the lock is left alone.
    pub fn release_held_by(
        &self,
        holder: Option<&str>,
    ) -> Result<BackupLockHolder, BackupLockError> {
        let released = self.update(|state, _| {
            let held = state.held.as_ref().ok_or(BackupLockError::NotHeld)?;
            if let Some(expected) = holder.filter(|h| *h != held.holder) {
                return Err(BackupLockError::HeldByAnother {
                    holder: held.clone(),
                    expected: expected.to_owned(),
                });
            }
            state.held.take().ok_or(BackupLockError::NotHeld)
        })?;
        tracing::info!(
            holder = %released.holder,
            reason = %released.reason,
            held_ms = self.clock.now_ms().saturating_sub(released.acquired_at_ms),
            "backup lock released: deletions resume"
        );
        Ok(released)
    }

    pub fn status(&self) -> Result<BackupLockStatus, BackupLockError> {
        let (_, state) = self.read()?;
        let now = self.clock.now_ms();
        Ok(BackupLockStatus {
            held: state.live_holder(now).cloned(),
            expired: state.held.clone().filter(|h| h.is_expired(now)),
            deletions_in_flight: state.deleters.iter().filter(|(_, e)| *e > now).count(),
        })
    }

    /// Registers a deletion batch for up to `lease`; refused while the lock is held. Every
    /// deleter calls this before deleting and [`DeletionPermit::finish`] afterwards.
    pub fn begin_deletion(&self, lease: Duration) -> Result<DeletionPermit, BackupLockError> {
        let id = self.clock.now_ms().wrapping_mul(6_364_136_223_846_793_005)
            ^ u64::from(std::process::id())
            ^ next_nonce();
        self.update(|state, now| {
            if let Some(h) = state.live_holder(now) {
                return Err(BackupLockError::DeletionsPaused(h.clone()));
            }
            state.deleters.retain(|(_, e)| *e > now);
            state.deleters.push((id, now.saturating_add(millis(lease))));
            Ok(())
        })?;
        Ok(DeletionPermit {
            lock: self.clone(),
            id,
            finished: false,
        })
    }
}

fn next_nonce() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NONCE: AtomicU64 = AtomicU64::new(0);
    NONCE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
}

/// A registered deletion batch; finish it when the deletes are done (dropping it finishes it
/// too, best effort).
pub struct DeletionPermit {
    lock: BackupLock,
    id: u64,
    finished: bool,
}

impl DeletionPermit {
    pub fn finish(mut self) -> Result<(), BackupLockError> {
        self.finished = true;
        let id = self.id;
        self.lock.update(|state, _| {
            state.deleters.retain(|(d, _)| *d != id);
            Ok(())
        })
    }
}

impl Drop for DeletionPermit {
    fn drop(&mut self) {
        if !self.finished {
            let id = self.id;
            let _ = self.lock.update(|state, _| {
                state.deleters.retain(|(d, _)| *d != id);
                Ok(())
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn state_round_trips_through_its_text_encoding() {
        let state = State {
            held: Some(BackupLockHolder {
                holder: "ops on host-1".into(),
                reason: "nightly backup".into(),
                acquired_at_ms: 17,
                lease_expires_ms: Some(99),
            }),
            deleters: vec![(5, 100), (6, 200)],
        };
        assert_eq!(State::decode(&state.encode()).unwrap(), state);
        assert_eq!(
            State::decode(&State::default().encode()).unwrap(),
            State::default()
        );
        assert!(State::decode(b"garbage").is_err());
    }

    #[test]
    fn a_release_for_one_holder_leaves_anyone_else_s_lock_alone() {
        let kvs = Arc::new(ortelius_kvs::memory::MemoryKvs::new());
        let lock = BackupLock::new(kvs, Arc::new(SystemWallClock)).unwrap();
        assert!(matches!(
            lock.release_held_by(Some("backup")),
            Err(BackupLockError::NotHeld)
        ));
        lock.acquire("ops", "manual", None, Duration::ZERO).unwrap();
        let err = lock.release_held_by(Some("backup")).unwrap_err();
        assert!(
            matches!(err, BackupLockError::HeldByAnother { .. }),
            "{err}"
        );
        assert_eq!(lock.status().unwrap().held.unwrap().holder, "ops");
        assert_eq!(lock.release_held_by(Some("ops")).unwrap().holder, "ops");
        assert!(lock.status().unwrap().held.is_none());
    }

    #[test]
    fn a_lease_of_centuries_means_never_rather_than_an_overflow() {
        let kvs = Arc::new(ortelius_kvs::memory::MemoryKvs::new());
        let lock = BackupLock::new(kvs, Arc::new(SystemWallClock)).unwrap();
        let held = lock
            .acquire("ops", "test", Some(Duration::MAX), Duration::ZERO)
            .unwrap();
        assert_eq!(held.lease_expires_ms, Some(u64::MAX));
        lock.release().unwrap();
        let permit = lock.begin_deletion(Duration::MAX).unwrap();
        assert_eq!(lock.status().unwrap().deletions_in_flight, 1);
        permit.finish().unwrap();
    }
}
