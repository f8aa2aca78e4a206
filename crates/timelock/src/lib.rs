//! The time authority of Ortelius: timestamps and locks.
//!
//! - [`TimestampService`]: fresh timestamps, strictly increasing across calls and restarts. The
//!   in-process implementation, [`PersistentTimestampService`], persists an upper bound in the
//!   store with check-and-set *before* handing out timestamps above it, and refuses forever
//!   once it sees that another allocator moved the bound.
//! - [`LockService`]: exclusive, leased locks on byte descriptors (acquired in sorted order),
//!   waiting for locks without taking them, and immutable-timestamp tracking (the smallest
//!   timestamp locked by a running write transaction).
//!
//! Both are traits so the transaction layer runs unchanged against a remote authority later.

mod clock;
mod locks;
mod timestamps;
pub mod wire;

pub use clock::{Clock, ManualClock, SystemClock};
pub use locks::{
    InProcessLockService, LockDescriptor, LockError, LockService, LockToken, StartError,
    DEFAULT_LEASE,
};
pub use timestamps::{
    claim_for_timelock, AllocatorOptions, FastForward, PersistentTimestampService, TimestampError,
    TimestampRange, TimestampService, ALLOCATOR_LEASE, MAX_TIMESTAMPS_PER_REQUEST,
    TIMESTAMP_BOUND_BUFFER, TIMESTAMP_TABLE,
};
