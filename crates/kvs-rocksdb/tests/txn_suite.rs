//! The transaction suite (protocol, concurrency, sweep, backup lock) on RocksDB, each test on a
//! fresh store in a temporary directory; plus what only an embedded store can show.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::suite::Store;
use ortelius_txn::{BackupLock, SystemWallClock};

fn store() -> Store {
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("db"), &RocksDbConfig::default()).unwrap();
    Store::new(Arc::new(kvs), dir)
}

ortelius_txn::txn_suite!(store());

const WAIT: Duration = Duration::from_secs(5);

#[test]
fn a_held_lock_survives_reopening_the_store_and_can_be_released_there() {
    let dir = tempfile::tempdir().unwrap();
    let open = || -> Arc<dyn ortelius_kvs::KeyValueService> {
        Arc::new(RocksDbKvs::open(dir.path(), &Default::default()).unwrap())
    };
    {
        BackupLock::new(open(), Arc::new(SystemWallClock))
            .unwrap()
            .acquire("backup", "before checkpoint", None, WAIT)
            .unwrap();
    }
    let l = BackupLock::new(open(), Arc::new(SystemWallClock)).unwrap();
    assert_eq!(
        l.status().unwrap().held.unwrap().reason,
        "before checkpoint"
    );
    l.release().unwrap();
}
