//! The in-memory table catalogue: each table's id in the key space and its metadata.
//!
//! Every read and write looks up its table's id, from every thread. A lock around the map
//! would have each lookup write the lock's cache line (taking and releasing a read lock), so
//! with threads on several cores that line moves between them on every call. Instead the
//! catalogue is an immutable map replaced whole on each change, and a thread keeps its own
//! reference to the map it last saw, checked against a generation number that lookups only
//! read.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ortelius_kvs::{KvsError, KvsResult, TableRef};

#[derive(Clone)]
pub(crate) struct TableInfo {
    pub id: u32,
    pub metadata: Vec<u8>,
}

pub(crate) type Tables = BTreeMap<TableRef, TableInfo>;

/// Catalogues a thread keeps at most (one per open store; the oldest is forgotten).
const KEPT_PER_THREAD: usize = 4;

thread_local! {
    /// (catalogue id, generation, map) of the catalogues this thread looked up last.
    static SEEN: RefCell<Vec<(u64, u64, Arc<Tables>)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) struct Catalog {
    /// Tells this catalogue's entries apart in the threads' caches (unique in the process).
    id: u64,
    current: RwLock<Arc<Tables>>,
    /// Raised after every replacement of `current`.
    generation: AtomicU64,
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "the RocksDB store's table catalogue lock was poisoned by a panic".to_owned(),
    }
}

impl Catalog {
    pub(crate) fn new(tables: Tables) -> Self {
        static NEXT_ID: AtomicU64 = AtomicU64::new(0);
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            current: RwLock::new(Arc::new(tables)),
            generation: AtomicU64::new(0),
        }
    }

    /// The current map (for listing and metadata; not the hot path).
    pub(crate) fn tables(&self) -> KvsResult<Arc<Tables>> {
        Ok(self.current.read().map_err(|_| poisoned())?.clone())
    }

    /// The id of `table`, from this thread's copy of the map when no change happened since.
    pub(crate) fn id(&self, table: &TableRef) -> KvsResult<Option<u32>> {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = SEEN.with(|seen| {
            seen.borrow()
                .iter()
                .find(|(id, seen_generation, _)| *id == self.id && *seen_generation == generation)
                .map(|(_, _, tables)| tables.get(table).map(|t| t.id))
        });
        if let Some(found) = cached {
            return Ok(found);
        }
        // Read after the generation: a map newer than it is only looked at again next time.
        let tables = self.tables()?;
        let found = tables.get(table).map(|t| t.id);
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            seen.retain(|(id, _, _)| *id != self.id);
            if seen.len() >= KEPT_PER_THREAD {
                seen.remove(0);
            }
            seen.push((self.id, generation, tables));
        });
        Ok(found)
    }

    /// Applies `change` to a copy of the map and publishes it. Callers serialise changes.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Tables)) -> KvsResult<()> {
        let mut current = self.current.write().map_err(|_| poisoned())?;
        let mut tables = Tables::clone(&current);
        change(&mut tables);
        *current = Arc::new(tables);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn info(id: u32) -> TableInfo {
        TableInfo {
            id,
            metadata: Vec::new(),
        }
    }

    #[test]
    fn a_change_is_seen_by_every_thread_that_cached_the_map_before() {
        let a = TableRef::new("ns", "a").unwrap();
        let b = TableRef::new("ns", "b").unwrap();
        let catalog = Catalog::new(BTreeMap::from([(a.clone(), info(1))]));
        let other = Catalog::new(BTreeMap::from([(a.clone(), info(9))]));
        // Another thread caches both stores' maps, then one store changes.
        let (to_worker, from_main) = std::sync::mpsc::channel::<()>();
        let (to_main, from_worker) = std::sync::mpsc::channel::<()>();
        std::thread::scope(|s| {
            let (catalog, other, a, b) = (&catalog, &other, &a, &b);
            s.spawn(move || {
                assert_eq!(catalog.id(a).unwrap(), Some(1));
                assert_eq!(other.id(a).unwrap(), Some(9), "each store its own map");
                assert_eq!(catalog.id(b).unwrap(), None);
                to_main.send(()).unwrap();
                from_main.recv().unwrap();
                assert_eq!(catalog.id(b).unwrap(), Some(2), "the new table is found");
                assert_eq!(catalog.id(a).unwrap(), None, "the dropped table is gone");
                assert_eq!(other.id(a).unwrap(), Some(9));
            });
            from_worker.recv().unwrap();
            catalog
                .update(|t| {
                    t.remove(a);
                    t.insert(b.clone(), info(2));
                })
                .unwrap();
            to_worker.send(()).unwrap();
        });
    }
}
