//! The backup lock's lifecycle on every backend: acquire, second acquire, release from another
//! handle (another process, or a restored store), status, leases, and the guarantee that no
//! deletion is in flight once `acquire` returns.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::common::*;
use crate::{BackupLock, BackupLockError, SystemWallClock, WallClock};

#[derive(Default)]
struct ManualWallClock(AtomicU64);

impl WallClock for ManualWallClock {
    fn now_ms(&self) -> u64 {
        1_000_000 + self.0.load(Ordering::SeqCst)
    }
}

fn lock(store: &Store) -> BackupLock {
    BackupLock::new(store.kvs.clone(), Arc::new(SystemWallClock)).unwrap()
}

const WAIT: Duration = Duration::from_secs(5);

pub fn the_lock_starts_open(store: &Store) {
    let status = lock(store).status().unwrap();
    assert_eq!(
        (status.held, status.expired, status.deletions_in_flight),
        (None, None, 0)
    );
}

pub fn a_second_acquire_fails_and_names_the_holder(store: &Store) {
    let l = lock(store);
    let held = l
        .acquire("ops@host1", "nightly backup", None, WAIT)
        .unwrap();
    assert_eq!(l.status().unwrap().held, Some(held));
    let err = l.acquire("ops@host2", "other", None, WAIT).unwrap_err();
    assert!(
        matches!(&err, BackupLockError::AlreadyHeld(h) if h.holder == "ops@host1"),
        "{err}"
    );
    assert!(err.to_string().contains("nightly backup") && err.to_string().contains("--release"));
    assert!(matches!(
        l.acquire(" ", "r", None, WAIT),
        Err(BackupLockError::Invalid(_))
    ));
}

pub fn another_handle_can_inspect_and_release_the_lock(store: &Store) {
    lock(store)
        .acquire("runbook step 1", "backup", None, WAIT)
        .unwrap();
    let other = lock(store);
    assert_eq!(
        other.status().unwrap().held.unwrap().holder,
        "runbook step 1"
    );
    let released = other.release().unwrap();
    assert_eq!(released.reason, "backup");
    assert_eq!(lock(store).status().unwrap().held, None);
    lock(store).acquire("again", "r", None, WAIT).unwrap();
}

pub fn releasing_an_open_lock_says_so(store: &Store) {
    assert!(matches!(
        lock(store).release(),
        Err(BackupLockError::NotHeld)
    ));
}

pub fn a_lease_lets_deletions_resume_and_shows_in_status(store: &Store) {
    let clock = Arc::new(ManualWallClock::default());
    let l = BackupLock::new(store.kvs.clone(), clock.clone()).unwrap();
    let held = l
        .acquire("operator", "backup", Some(Duration::from_secs(60)), WAIT)
        .unwrap();
    assert_eq!(held.lease_expires_ms, Some(held.acquired_at_ms + 60_000));
    assert!(matches!(
        l.begin_deletion(Duration::from_secs(10)),
        Err(BackupLockError::DeletionsPaused(_))
    ));
    clock.0.store(61_000, Ordering::SeqCst); // the operator vanished
    let status = l.status().unwrap();
    assert_eq!(
        (status.held, status.expired.map(|h| h.holder)),
        (None, Some("operator".to_owned()))
    );
    l.begin_deletion(Duration::from_secs(10))
        .unwrap()
        .finish()
        .unwrap();
    l.acquire("next operator", "backup", None, WAIT).unwrap();
}

pub fn acquire_waits_for_a_deletion_in_flight_and_blocks_new_ones(store: &Store) {
    let l = lock(store);
    let permit = l.begin_deletion(Duration::from_secs(30)).unwrap();
    assert_eq!(l.status().unwrap().deletions_in_flight, 1);
    let acquired = AtomicBool::new(false);
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let h = lock(store).acquire("backup", "r", None, WAIT).unwrap();
            acquired.store(true, Ordering::SeqCst);
            h
        });
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            !acquired.load(Ordering::SeqCst),
            "acquire returned while a deletion was in flight"
        );
        // Already marked held: no new deletion may start while the backup waits.
        assert!(matches!(
            l.begin_deletion(Duration::from_secs(1)),
            Err(BackupLockError::DeletionsPaused(_))
        ));
        permit.finish().unwrap();
        waiter.join().unwrap();
    });
    assert!(acquired.load(Ordering::SeqCst));
    assert_eq!(l.status().unwrap().deletions_in_flight, 0);
}

pub fn a_crashed_deleter_blocks_acquire_only_until_its_lease_ends(store: &Store) {
    let l = lock(store);
    // Timed from before the deletion registers, so a slow store (an LWT on Cassandra) cannot
    // eat into the lease and make a correct wait look too short; a second is far longer than
    // registering and acquiring take without waiting.
    let started = Instant::now();
    std::mem::forget(l.begin_deletion(Duration::from_secs(1)).unwrap()); // never finishes
    l.acquire("backup", "r", None, WAIT).unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(990),
        "did not wait for the registered deletion ({:?})",
        started.elapsed()
    );
}

pub fn acquire_gives_up_and_releases_when_deletions_never_finish(store: &Store) {
    let l = lock(store);
    let _permit = l.begin_deletion(Duration::from_secs(60)).unwrap();
    let err = l
        .acquire("backup", "r", None, Duration::from_millis(100))
        .unwrap_err();
    assert!(
        matches!(err, BackupLockError::DeletionsStillInFlight(_)),
        "{err}"
    );
    assert_eq!(
        l.status().unwrap().held,
        None,
        "a failed acquire leaves the lock open"
    );
}
