//! Reused RocksDB iterators for point reads.
//!
//! Creating a RocksDB iterator costs more than the seek a point read needs: it builds a merging
//! iterator over the memtables and every level, in a fresh arena. A pooled iterator is instead
//! *refreshed* before each use, which moves it to the latest sequence number (rebuilding it only
//! when a flush or compaction has changed the set of files). A refreshed iterator sees exactly
//! what a new one would, so reads keep their meaning. An iterator last refreshed at the
//! sequence number that is still the latest (nothing was written since) already shows the
//! latest state, and is used without a refresh.
//!
//! An idle pooled iterator pins the memtables and files that were current when it was last
//! refreshed, so files made obsolete by a compaction stay on disk while it idles. Each write
//! visits one shard in turn and drops its iterators idle for longer than [`MAX_IDLE`], and
//! [`IterPool::clear`] drops them all (before a compaction).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ortelius_kvs::KvsResult;
use rocksdb::{DBRawIterator, ReadOptions, DB};

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

/// A pooled iterator: the sequence number whose state it shows, and when it was last used.
struct Pooled {
    iter: OwnedIter,
    sequence: u64,
    used: Instant,
}

type Shard = Mutex<Vec<Pooled>>;

pub(crate) struct IterPool {
    db: Arc<DB>,
    /// What the pool's iterators may be used for.
    seeks: Seeks,
    shards: Vec<Shard>,
    /// The shard the next [`IterPool::drop_idle`] visits.
    next_to_prune: AtomicUsize,
}

/// This thread's shard number (threads are numbered as they first read).
fn shard_of_thread() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
    SHARD.with(|s| *s)
}

/// What a pool's iterators are used for, which decides their read options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seeks {
    /// Seeks to one cell's versions, stepping only through that cell: a seek skips every
    /// memtable and SST file whose prefix bloom filter does not hold the cell (see
    /// [`crate::cell_prefix_extractor`]). After the cell's last version such an iterator may
    /// stand on any key, so its user checks the cell prefix.
    WithinCell,
    /// Seeks and steps across cells and rows, in total order.
    Anywhere,
}

/// Read options for an iterator used for `seeks`.
pub(crate) fn read_options(seeks: Seeks) -> ReadOptions {
    let mut opts = ReadOptions::default();
    opts.set_total_order_seek(seeks == Seeks::Anywhere);
    opts
}

impl IterPool {
    pub(crate) fn new(db: Arc<DB>, seeks: Seeks) -> Self {
        Self {
            db,
            seeks,
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            next_to_prune: AtomicUsize::new(0),
        }
    }

    /// Runs `read` with an iterator showing the database's latest state.
    pub(crate) fn with_iter<T>(
        &self,
        read: impl FnOnce(&mut DBRawIterator<'_>) -> KvsResult<T>,
    ) -> KvsResult<T> {
        let shard = &self.shards[shard_of_thread()];
        let pooled = shard.lock().ok().and_then(|mut idle| idle.pop());
        // Read before the refresh: the iterator then shows at least this state, and exactly
        // this state if it is still the latest next time (no write can be seen unpublished).
        let sequence = self.db.latest_sequence_number();
        let mut iter = match pooled {
            Some(pooled)
                if pooled.sequence == sequence
                    && pooled.iter.borrow_dependent().status().is_ok() =>
            {
                pooled.iter
            }
            Some(mut pooled) => match pooled.iter.with_dependent_mut(|_, it| it.refresh()) {
                Ok(()) => pooled.iter,
                Err(_) => self.fresh(),
            },
            None => self.fresh(),
        };
        let out = iter.with_dependent_mut(|_, it| read(it))?;
        if let Ok(mut idle) = shard.lock() {
            if idle.len() < MAX_POOLED {
                idle.push(Pooled {
                    iter,
                    sequence,
                    used: Instant::now(),
                });
            }
        }
        Ok(out)
    }

    fn fresh(&self) -> OwnedIter {
        OwnedIter::new(self.db.clone(), |db| {
            db.raw_iterator_opt(read_options(self.seeks))
        })
    }

    /// Drops the iterators idle for longer than [`MAX_IDLE`] from the next shard in turn (so a
    /// single writing thread visits them all), unless a reader holds its lock right now.
    pub(crate) fn drop_idle(&self) {
        let shard = self.next_to_prune.fetch_add(1, Ordering::Relaxed) % SHARDS;
        if let Ok(mut idle) = self.shards[shard].try_lock() {
            if idle.first().is_some_and(|p| p.used.elapsed() > MAX_IDLE) {
                idle.retain(|p| p.used.elapsed() <= MAX_IDLE);
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pooled(pool: &IterPool) -> usize {
        pool.shards.iter().map(|s| s.lock().unwrap().len()).sum()
    }

    #[test]
    fn a_pooled_iterator_sees_the_writes_made_since_it_was_last_used() {
        let dir = tempfile::tempdir().unwrap();
        let db = Arc::new(DB::open_default(dir.path()).unwrap());
        let pool = IterPool::new(db.clone(), Seeks::Anywhere);
        let first_key = || {
            pool.with_iter(|it| {
                it.seek_to_first();
                Ok(it.key().map(<[u8]>::to_vec))
            })
            .unwrap()
        };
        assert_eq!(first_key(), None);
        // Nothing written since: the pooled iterator is used as it is.
        assert_eq!(first_key(), None);
        assert_eq!(pooled(&pool), 1);
        db.put(b"k", b"v").unwrap();
        assert_eq!(first_key(), Some(b"k".to_vec()));
        db.put(b"a", b"v").unwrap();
        assert_eq!(first_key(), Some(b"a".to_vec()));
    }

    #[test]
    fn writes_from_one_thread_drop_every_shard_s_idle_iterators() {
        let dir = tempfile::tempdir().unwrap();
        let pool = IterPool::new(
            Arc::new(DB::open_default(dir.path()).unwrap()),
            Seeks::Anywhere,
        );
        // Readers on several threads leave iterators in several shards.
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    pool.with_iter(|it| {
                        it.seek_to_first();
                        Ok(())
                    })
                    .unwrap()
                });
            }
        });
        assert_eq!(pooled(&pool), 6);
        for _ in 0..SHARDS {
            pool.drop_idle();
        }
        assert_eq!(pooled(&pool), 6, "recently used iterators are kept");
        std::thread::sleep(MAX_IDLE + Duration::from_millis(100));
        // One thread's writes: each visits the next shard.
        for _ in 0..SHARDS {
            pool.drop_idle();
        }
        assert_eq!(
            pooled(&pool),
            0,
            "idle iterators are dropped from every shard"
        );
    }
}
