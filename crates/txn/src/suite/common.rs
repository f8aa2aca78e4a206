//! Shared helpers of the suite.
#![allow(dead_code)]

use std::any::Any;
use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::{Cell, KeyValueService, TableRef};

use crate::{ConflictHandler, TableMetadata, TransactionConfig, TransactionManager, TxnResult};

/// A fresh store for one test, and whatever keeps it alive (a temporary directory, a schema
/// that is dropped afterwards, ...).
pub struct Store {
    pub kvs: Arc<dyn KeyValueService>,
    _guard: Box<dyn Any + Send + Sync>,
}

impl Store {
    pub fn new(kvs: Arc<dyn KeyValueService>, guard: impl Any + Send + Sync) -> Self {
        Self {
            kvs,
            _guard: Box::new(guard),
        }
    }

    /// An in-memory store.
    pub fn memory() -> Self {
        Self::new(Arc::new(MemoryKvs::new()), ())
    }
}

pub fn config() -> TransactionConfig {
    TransactionConfig {
        lock_timeout: Duration::from_secs(5),
        max_retries: 200,
        ..TransactionConfig::default()
    }
}

pub fn manager(store: &Store) -> TransactionManager {
    TransactionManager::embedded(store.kvs.clone(), config()).unwrap()
}

pub fn table(m: &TransactionManager, name: &str, handler: ConflictHandler) -> TableRef {
    let t = TableRef::new("test", name).unwrap();
    m.create_table(
        &t,
        TableMetadata {
            conflict_handler: handler,
            ..TableMetadata::default()
        },
    )
    .unwrap();
    t
}

pub fn cell(row: &str, col: &str) -> Cell {
    Cell::new(row.as_bytes(), col.as_bytes()).unwrap()
}

pub fn put_u64(m: &TransactionManager, t: &TableRef, c: &Cell, v: u64) {
    m.run(|txn| txn.put(t, c, v.to_be_bytes())).unwrap();
}

pub fn read_u64(txn: &crate::Transaction, t: &TableRef, c: &Cell) -> TxnResult<Option<u64>> {
    Ok(txn
        .get_one(t, c)?
        .map(|v| u64::from_be_bytes(v.try_into().unwrap())))
}
