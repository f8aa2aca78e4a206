//! The conformance suite against the RocksDB backend, each test on a fresh store in a temp dir.
#![allow(clippy::unwrap_used)]

use std::ops::Deref;

use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

/// A store that lives as long as its temporary directory.
struct TempStore {
    kvs: RocksDbKvs,
    _dir: tempfile::TempDir,
}

impl Deref for TempStore {
    type Target = RocksDbKvs;
    fn deref(&self) -> &RocksDbKvs {
        &self.kvs
    }
}

fn store() -> TempStore {
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("db"), &RocksDbConfig::default()).unwrap();
    TempStore { kvs, _dir: dir }
}

ortelius_kvs::kvs_conformance_tests!(store());
