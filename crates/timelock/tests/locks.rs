//! The in-process lock service: exclusivity, ordering, leases, waiting, immutable timestamps.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ortelius_kvs::{Cell, TableRef};
use ortelius_timelock::{
    InProcessLockService, LockDescriptor, LockError, LockService, ManualClock,
};

fn d(name: &str) -> LockDescriptor {
    LockDescriptor::named(name)
}

const LONG: Duration = Duration::from_secs(10);
const SHORT: Duration = Duration::from_millis(50);

fn service_with_clock() -> (InProcessLockService, ManualClock) {
    let clock = ManualClock::new();
    (
        InProcessLockService::new(Arc::new(clock.clone()), Duration::from_secs(20)),
        clock,
    )
}

#[test]
fn a_held_lock_blocks_others_until_unlocked() {
    let locks = InProcessLockService::default();
    let token = locks.lock(&[d("a")], LONG).unwrap();
    assert!(matches!(
        locks.lock(&[d("a")], SHORT),
        Err(LockError::Timeout { .. })
    ));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| locks.lock(&[d("a")], LONG));
        std::thread::sleep(SHORT);
        assert_eq!(locks.unlock(&[token]).unwrap(), vec![token]);
        waiter.join().unwrap().unwrap();
    });
    assert!(
        locks.unlock(&[token]).unwrap().is_empty(),
        "already released"
    );
}

#[test]
fn a_timed_out_request_keeps_nothing() {
    let locks = InProcessLockService::default();
    let b = locks.lock(&[d("b")], LONG).unwrap();
    assert!(locks.lock(&[d("a"), d("b")], SHORT).is_err());
    // "a" was acquired first (sorted order) and must have been released on timeout.
    locks.lock(&[d("a")], SHORT).unwrap();
    locks.unlock(&[b]).unwrap();
}

#[test]
fn opposite_orders_never_deadlock() {
    let locks = InProcessLockService::default();
    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for flip in [false, true] {
            let (locks, done) = (&locks, &done);
            s.spawn(move || {
                for _ in 0..500 {
                    let ds = if flip {
                        [d("x"), d("y")]
                    } else {
                        [d("y"), d("x")]
                    };
                    let t = locks.lock(&ds, LONG).unwrap();
                    locks.unlock(&[t]).unwrap();
                    done.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(done.load(Ordering::SeqCst), 1000);
}

#[test]
fn locks_are_mutually_exclusive_under_contention() {
    let locks = InProcessLockService::default();
    let inside = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..200 {
                    let t = locks.lock(&[d("m")], LONG).unwrap();
                    assert_eq!(
                        inside.fetch_add(1, Ordering::SeqCst),
                        0,
                        "two holders at once"
                    );
                    inside.fetch_sub(1, Ordering::SeqCst);
                    locks.unlock(&[t]).unwrap();
                }
            });
        }
    });
}

#[test]
fn an_unrefreshed_lease_expires_and_frees_the_lock() {
    let (locks, clock) = service_with_clock();
    let token = locks.lock(&[d("a")], LONG).unwrap();
    clock.advance(Duration::from_secs(15));
    assert_eq!(
        locks.refresh(&[token]).unwrap(),
        vec![token],
        "refresh extends the lease"
    );
    clock.advance(Duration::from_secs(15));
    assert!(
        locks.lock(&[d("a")], SHORT).is_err(),
        "still held thanks to the refresh"
    );
    clock.advance(Duration::from_secs(6));
    let other = locks.lock(&[d("a")], SHORT).unwrap();
    assert!(
        locks.refresh(&[token]).unwrap().is_empty(),
        "the expired token is gone"
    );
    assert_eq!(locks.refresh(&[token, other]).unwrap(), vec![other]);
}

#[test]
fn a_waiter_is_woken_when_a_lease_expires() {
    let (locks, clock) = service_with_clock();
    locks.lock(&[d("a")], LONG).unwrap();
    std::thread::scope(|s| {
        let waiter = s.spawn(|| locks.lock(&[d("a")], LONG));
        std::thread::sleep(SHORT);
        clock.advance(Duration::from_secs(21));
        waiter.join().unwrap().unwrap();
    });
}

#[test]
fn wait_for_locks_waits_without_taking() {
    let locks = InProcessLockService::default();
    let t = Cell::new("r", "c").unwrap();
    let table = TableRef::new("app", "t").unwrap();
    let row = LockDescriptor::row(&table, t.row());
    let token = locks.lock(std::slice::from_ref(&row), LONG).unwrap();
    assert!(matches!(
        locks.wait_for_locks(std::slice::from_ref(&row), SHORT),
        Err(LockError::Timeout { .. })
    ));
    std::thread::scope(|s| {
        let waiter = s.spawn(|| {
            let started = Instant::now();
            locks
                .wait_for_locks(std::slice::from_ref(&row), LONG)
                .unwrap();
            started.elapsed()
        });
        std::thread::sleep(SHORT);
        locks.unlock(&[token]).unwrap();
        assert!(waiter.join().unwrap() >= SHORT / 2);
    });
    // Waiting took nothing: the lock is free.
    locks.lock(std::slice::from_ref(&row), SHORT).unwrap();
    assert_ne!(
        row,
        LockDescriptor::cell(&table, &t),
        "row and cell descriptors differ"
    );
}

#[test]
fn immutable_timestamp_is_the_smallest_locked_one() {
    let (locks, clock) = service_with_clock();
    assert_eq!(locks.min_locked_timestamp().unwrap(), None);
    let t10 = locks.lock_immutable_timestamp(10).unwrap();
    let t5 = locks.lock_immutable_timestamp(5).unwrap();
    let t5b = locks.lock_immutable_timestamp(5).unwrap();
    assert_eq!(locks.min_locked_timestamp().unwrap(), Some(5));
    locks.unlock(&[t5]).unwrap();
    assert_eq!(
        locks.min_locked_timestamp().unwrap(),
        Some(5),
        "still held by a second token"
    );
    locks.unlock(&[t5b]).unwrap();
    assert_eq!(locks.min_locked_timestamp().unwrap(), Some(10));
    clock.advance(Duration::from_secs(21));
    assert_eq!(
        locks.min_locked_timestamp().unwrap(),
        None,
        "expired guards do not count"
    );
    assert!(locks.refresh(&[t10]).unwrap().is_empty());
}
