//! Reused RocksDB iterators for point reads.
//!
//! Creating a RocksDB iterator costs more than the seek a point read needs: it builds a merging
//! iterator over the memtables and every level, in a fresh arena. A pooled iterator is instead
//! *refreshed* before each use, which moves it to the latest sequence number (rebuilding it only
//! when a flush or compaction has changed the set of files). A refreshed iterator sees exactly
//! what a new one would, so reads keep their meaning.
//!
//! An idle pooled iterator pins the memtables and files that were current when it was last
//! refreshed, so files made obsolete by a compaction stay on disk while it idles. Writes drop
//! iterators idle for longer than [`MAX_IDLE`], and [`IterPool::clear`] drops them all (before a
//! compaction or a checkpoint).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ortelius_kvs::KvsResult;
use rocksdb::{DBRawIterator, DB};

self_cell::self_cell!(
    /// An iterator together with the database it reads (so it can live in the pool).
    struct OwnedIter {
        owner: Arc<DB>,
        #[covariant]
        dependent: DBRawIterator,
    }
);

/// Shards of the pool; a thread always uses the same one, so readers rarely share a lock.
const SHARDS: usize = 16;
/// Iterators kept per shard at most; more concurrent readers create and drop their own.
const MAX_POOLED: usize = 4;
/// A pooled iterator unused for this long is dropped by the next write.
const MAX_IDLE: Duration = Duration::from_secs(1);

type Shard = Mutex<Vec<(OwnedIter, Instant)>>;

pub(crate) struct IterPool {
    db: Arc<DB>,
    shards: Vec<Shard>,
}

/// This thread's shard number (threads are numbered as they first read).
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    SHARD.with(|s| *s)
}

impl IterPool {
    pub(crate) fn new(db: Arc<DB>) -> Self {
        Self {
            db,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
        }
    }

    /// Runs `read` with an iterator showing the database's latest state.
    pub(crate) fn with_iter<T>(
        &self,
        read: impl FnOnce(&mut DBRawIterator<'_>) -> KvsResult<T>,
    ) -> KvsResult<T> {
        let shard = &self.shards[shard_of_thread()];
        let pooled = shard.lock().ok().and_then(|mut idle| idle.pop());
        let mut iter = match pooled {
            Some((mut iter, _)) => match iter.with_dependent_mut(|_, it| it.refresh()) {
                Ok(()) => iter,
                Err(_) => self.fresh(),
            },
            None => self.fresh(),
        };
        let out = iter.with_dependent_mut(|_, it| read(it))?;
        if let Ok(mut idle) = shard.lock() {
            if idle.len() < MAX_POOLED {
                idle.push((iter, Instant::now()));
            }
        }
        Ok(out)
    }

    fn fresh(&self) -> OwnedIter {
        OwnedIter::new(self.db.clone(), |db| db.raw_iterator())
    }

    /// Drops iterators idle for longer than [`MAX_IDLE`] from this thread's shard and the next
    /// one (so every shard is visited as writes go by), where no reader holds the lock.
    pub(crate) fn drop_idle(&self) {
        let first = shard_of_thread();
        for shard in [first, (first + 1) % SHARDS] {
            if let Ok(mut idle) = self.shards[shard].try_lock() {
                if idle
                    .first()
                    .is_some_and(|(_, used)| used.elapsed() > MAX_IDLE)
                {
                    idle.retain(|(_, used)| used.elapsed() <= MAX_IDLE);
                }
            }
        }
    }

    /// Drops every pooled iterator, unpinning the files they hold.
    pub(crate) fn clear(&self) {
        for shard in &self.shards {
            if let Ok(mut idle) = shard.lock() {
                idle.clear();
            }
        }
    }
}
