//! The timestamp service (compare AtlasDB's AbstractTimestampServiceTests and
//! PersistentTimestampServiceTests).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::sync::Arc;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::testing::{FaultTiming, RecordingKvs};
use ortelius_kvs::{Cell, KeyValueService, TableRef, MAX_READ_TS};
use ortelius_timelock::{
    AllocatorOptions, FastForward, PersistentTimestampService, TimestampError, TimestampService,
    MAX_TIMESTAMPS_PER_REQUEST, TIMESTAMP_BOUND_BUFFER, TIMESTAMP_TABLE,
};

fn store() -> Arc<dyn KeyValueService> {
    Arc::new(MemoryKvs::new())
}

/// An allocator holding a lease of `lease` on `kvs`.
fn leased(kvs: Arc<RecordingKvs>, lease: std::time::Duration) -> PersistentTimestampService {
    PersistentTimestampService::with_options(
        kvs,
        AllocatorOptions {
            lease: Some(lease),
            take_over: false,
        },
    )
    .unwrap()
}

fn persisted_bound(kvs: &dyn KeyValueService) -> i64 {
    let t = TableRef::system(TIMESTAMP_TABLE).unwrap();
    let c = Cell::new("ts", "bound").unwrap();
    let v = kvs
        .get(&t, &[(c.clone(), MAX_READ_TS)])
        .unwrap()
        .remove(&c)
        .unwrap();
    i64::from_be_bytes(v.contents.try_into().unwrap())
}

#[test]
fn timestamps_are_returned_in_order() {
    let ts = PersistentTimestampService::new(store()).unwrap();
    let mut last = 0;
    for _ in 0..1000 {
        let t = ts.fresh_timestamp().unwrap();
        assert!(t > last);
        last = t;
    }
}

#[test]
fn ranges_are_contiguous_and_do_not_overlap() {
    let ts = PersistentTimestampService::new(store()).unwrap();
    let a = ts.fresh_timestamps(100).unwrap();
    let b = ts.fresh_timestamps(MAX_TIMESTAMPS_PER_REQUEST).unwrap();
    assert_eq!(a.len(), 100);
    assert_eq!(b.len(), u64::from(MAX_TIMESTAMPS_PER_REQUEST));
    assert!(b.first > a.last);
}

#[test]
fn zero_or_too_many_timestamps_are_rejected() {
    let ts = PersistentTimestampService::new(store()).unwrap();
    assert!(matches!(
        ts.fresh_timestamps(0),
        Err(TimestampError::InvalidRequest(_))
    ));
    assert!(matches!(
        ts.fresh_timestamps(MAX_TIMESTAMPS_PER_REQUEST + 1),
        Err(TimestampError::InvalidRequest(_))
    ));
}

#[test]
fn can_hand_out_more_timestamps_than_one_buffer() {
    let kvs = store();
    let ts = PersistentTimestampService::new(kvs.clone()).unwrap();
    let mut last = 0;
    let per_call = MAX_TIMESTAMPS_PER_REQUEST as i64;
    for _ in 0..(TIMESTAMP_BOUND_BUFFER / per_call * 2 + 3) {
        let r = ts.fresh_timestamps(MAX_TIMESTAMPS_PER_REQUEST).unwrap();
        assert_eq!(r.first, last + 1);
        last = r.last;
        assert!(
            persisted_bound(&*kvs) >= last,
            "bound persisted before handing out"
        );
    }
    assert!(ts.bound_writes() >= 3);
}

#[test]
fn restart_resumes_above_every_timestamp_handed_out() {
    let kvs = store();
    let before = {
        let ts = PersistentTimestampService::new(kvs.clone()).unwrap();
        ts.fresh_timestamps(500).unwrap().last
    };
    let ts = PersistentTimestampService::new(kvs).unwrap();
    assert!(ts.fresh_timestamp().unwrap() > before);
}

#[test]
fn failed_bound_write_hands_out_nothing_and_a_retry_works() {
    let inner = store();
    let kvs = Arc::new(RecordingKvs::new(inner));
    let ts = PersistentTimestampService::new(kvs.clone()).unwrap();
    kvs.inject("check_and_set", None, FaultTiming::Before, 1);
    assert!(matches!(
        ts.fresh_timestamp(),
        Err(TimestampError::Unavailable(_))
    ));
    let t = ts.fresh_timestamp().unwrap();
    assert_eq!(t, 1);
    assert!(persisted_bound(&*kvs) >= t);
}

#[test]
fn fast_forward_moves_the_next_timestamp_to_target_plus_one() {
    let kvs = store();
    let ts = PersistentTimestampService::new(kvs.clone()).unwrap();
    let before = ts.fresh_timestamp().unwrap();
    let target = 50 * TIMESTAMP_BOUND_BUFFER;
    assert_eq!(
        ts.fast_forward(target).unwrap(),
        FastForward::Advanced {
            from: before,
            to: target
        }
    );
    assert_eq!(ts.fresh_timestamp().unwrap(), target + 1);
    assert!(
        persisted_bound(&*kvs) > target,
        "a restart also resumes above the target"
    );
    let restarted = PersistentTimestampService::new(kvs).unwrap();
    assert!(restarted.fresh_timestamp().unwrap() > target);
}

#[test]
fn fast_forward_backwards_is_a_noop_that_says_so_and_repeats_are_idempotent() {
    let ts = PersistentTimestampService::new(store()).unwrap();
    ts.fast_forward(1000).unwrap();
    assert_eq!(
        ts.fast_forward(1000).unwrap(),
        FastForward::AlreadyBeyond { current: 1000 }
    );
    assert_eq!(
        ts.fast_forward(10).unwrap(),
        FastForward::AlreadyBeyond { current: 1000 }
    );
    assert_eq!(ts.fresh_timestamp().unwrap(), 1001);
    assert!(matches!(
        ts.fast_forward(-5),
        Err(TimestampError::InvalidRequest(_))
    ));
    assert!(matches!(
        ts.fast_forward(i64::MAX),
        Err(TimestampError::Exhausted)
    ));
}

#[test]
fn second_allocator_on_the_same_bound_is_refused_permanently() {
    let kvs = store();
    let first = PersistentTimestampService::new(kvs.clone()).unwrap();
    let second = PersistentTimestampService::new(kvs).unwrap();
    first.fresh_timestamp().unwrap();
    let err = second.fresh_timestamp().unwrap_err();
    assert!(
        matches!(err, TimestampError::MultipleAllocators { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("exactly one timestamp authority"));
    // Permanently: even fast-forward and later calls are refused.
    assert!(matches!(
        second.fresh_timestamp(),
        Err(TimestampError::MultipleAllocators { .. })
    ));
    assert!(matches!(
        second.fast_forward(1 << 40),
        Err(TimestampError::MultipleAllocators { .. })
    ));
    // The allocator whose write landed first carries on.
    assert!(first.fresh_timestamp().is_ok());
}

#[test]
fn allocator_that_lost_the_bound_is_refused_when_it_next_raises_it() {
    let kvs = store();
    let a = PersistentTimestampService::new(kvs.clone()).unwrap();
    a.fresh_timestamp().unwrap();
    // B starts after A wrote its bound, so B's first raise succeeds; A's next raise then fails.
    let b = PersistentTimestampService::new(kvs).unwrap();
    let from_b = b.fresh_timestamp().unwrap();
    assert!(from_b > TIMESTAMP_BOUND_BUFFER);
    let err = a
        .fast_forward(from_b + 2 * TIMESTAMP_BOUND_BUFFER)
        .unwrap_err();
    assert!(matches!(err, TimestampError::MultipleAllocators { .. }));
    assert!(a.fresh_timestamp().is_err());
}

#[test]
fn concurrent_callers_get_unique_increasing_timestamps_from_one_allocation() {
    let ts = PersistentTimestampService::new(store()).unwrap();
    let per_thread: Vec<Vec<i64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..2000)
                        .map(|_| ts.fresh_timestamp().unwrap())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut all = HashSet::new();
    for seq in &per_thread {
        assert!(
            seq.windows(2).all(|w| w[0] < w[1]),
            "each caller sees increasing timestamps"
        );
        for t in seq {
            assert!(all.insert(*t), "duplicate timestamp {t}");
        }
    }
    assert_eq!(
        ts.bound_writes(),
        1,
        "16 000 concurrent requests were served by one bound write"
    );
}

#[test]
fn a_lease_renewal_whose_answer_was_lost_but_landed_keeps_the_lease() {
    let kvs = Arc::new(RecordingKvs::new(store()));
    let lease = std::time::Duration::from_millis(400);
    let ts = leased(kvs.clone(), lease);
    // The bound is raised here: the check-and-sets after it are renewals.
    let first = ts.fresh_timestamp().unwrap();
    // The next renewal is written, but its answer is lost.
    kvs.inject("check_and_set", None, FaultTiming::After, 1);
    std::thread::sleep(lease * 2);
    // Renewals after it found their own later generation in the store: still this
    // allocator's lease, not another's.
    let next = ts.fresh_timestamp().unwrap();
    assert!(next > first);
}

#[test]
fn an_allocator_whose_lease_ran_out_hands_out_nothing_until_it_renews() {
    let kvs = Arc::new(RecordingKvs::new(store()));
    let lease = std::time::Duration::from_millis(300);
    let ts = leased(kvs.clone(), lease);
    let first = ts.fresh_timestamp().unwrap();
    // The bound covers a million more, but the store stops answering: no renewal lands.
    kvs.inject("check_and_set", None, FaultTiming::Before, usize::MAX);
    std::thread::sleep(lease * 2);
    for _ in 0..3 {
        let err = ts.fresh_timestamp().unwrap_err();
        assert!(matches!(err, TimestampError::Unavailable(_)), "{err}");
    }
    // Once the store answers, the next request renews the lease and is served.
    kvs.clear_faults();
    let next = ts.fresh_timestamp().unwrap();
    assert!(next > first);
}

#[test]
fn a_fast_forward_is_seen_by_every_later_request_while_threads_keep_taking_timestamps() {
    /// Stops the takers however the test's own thread leaves (a failed assertion included),
    /// so a failure fails the test instead of hanging it.
    struct StopOnDrop<'a>(&'a std::sync::atomic::AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
    let ts = PersistentTimestampService::new(store()).unwrap();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for _ in 0..4 {
            s.spawn(|| {
                let mut last = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = ts.fresh_timestamp().unwrap();
                    assert!(t > last, "{t} after {last}");
                    last = t;
                }
            });
        }
        let mut target = 0;
        for round in 1..=50i64 {
            target += round * (TIMESTAMP_BOUND_BUFFER / 7);
            match ts.fast_forward(target).unwrap() {
                FastForward::Advanced { from, to } => {
                    assert!(from < to);
                    assert_eq!(to, target);
                }
                FastForward::AlreadyBeyond { current } => assert!(current >= target),
            }
            let next = ts.fresh_timestamp().unwrap();
            assert!(next > target, "{next} after a fast-forward to {target}");
        }
    });
}
