//! What the instruction-counting examples share.

use std::path::Path;
use std::sync::Arc;

use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{TableMetadata, TransactionConfig, TransactionManager};

/// Row `i`'s key, spread over the key space as the benches spread theirs.
pub fn row(i: u64) -> [u8; 8] {
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

/// The number in the environment variable `name`, or `default`.
pub fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Creates the table `bench.t` holding rows `0..keys` (one 100-byte cell `v` each, at ts 1),
/// compacted.
#[allow(dead_code)] // not every example loads a store this way
pub fn load(kvs: &RocksDbKvs, keys: u64) -> TableRef {
    let table = TableRef::new("bench", "t").unwrap();
    kvs.create_table(&table, b"").unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|&i| (Cell::new(row(i), "v").unwrap(), vec![7u8; 100]))
            .collect();
        kvs.put(&table, &writes, 1).unwrap();
    }
    kvs.compact();
    table
}

/// A transaction manager on a new store in `dir` whose table `bench.t` holds rows `0..keys`
/// (one 100-byte cell `v` each), written by transactions of 5000 cells.
#[allow(dead_code)] // not every example uses transactions
pub fn transactional(dir: &Path, keys: u64) -> (TransactionManager, TableRef) {
    let kvs: Arc<dyn KeyValueService> =
        Arc::new(RocksDbKvs::open(dir, &RocksDbConfig::default()).unwrap());
    let manager = TransactionManager::embedded(kvs, TransactionConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    manager
        .create_table(&table, TableMetadata::default())
        .unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(5000) {
        manager
            .run(|txn| {
                for &i in chunk {
                    txn.put(&table, &Cell::new(row(i), "v").unwrap(), vec![7u8; 100])?;
                }
                Ok(())
            })
            .unwrap();
    }
    (manager, table)
}
