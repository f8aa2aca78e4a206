//! The transaction suite (protocol, concurrency, sweep, backup lock) on a three-member etcd
//! cluster this test binary starts, each test under a fresh key prefix.

mod common;

use std::sync::Arc;

use ortelius_txn::suite::Store;

fn store() -> Store {
    Store::new(Arc::new(common::store()), ())
}

ortelius_txn::txn_suite!(store());
