//! Shared test harness: every transaction test runs against the in-memory and RocksDB stores.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{
    ConflictHandler, TableMetadata, TransactionConfig, TransactionManager, TxnResult,
};

/// A store and whatever keeps it alive.
pub struct Store {
    pub kvs: Arc<dyn KeyValueService>,
    _dir: Option<tempfile::TempDir>,
}

pub fn memory() -> Store {
    Store {
        kvs: Arc::new(MemoryKvs::new()),
        _dir: None,
    }
}

pub fn rocksdb() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("db"), &RocksDbConfig::default()).unwrap();
    Store {
        kvs: Arc::new(kvs),
        _dir: Some(dir),
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

pub fn read_u64(txn: &ortelius_txn::Transaction, t: &TableRef, c: &Cell) -> TxnResult<Option<u64>> {
    Ok(txn
        .get_one(t, c)?
        .map(|v| u64::from_be_bytes(v.try_into().unwrap())))
}

/// Generates `mod memory` and `mod rocksdb` with one `#[test]` per named test function
/// (each taking a `&Store`).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[test] fn $name() { super::$name(&super::common::memory()) } )*
        }
        mod rocksdb {
            $( #[test] fn $name() { super::$name(&super::common::rocksdb()) } )*
        }
    };
}
