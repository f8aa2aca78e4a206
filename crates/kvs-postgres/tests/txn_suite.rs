//! The transaction suite (protocol, concurrency, sweep, backup lock) on PostgreSQL, each test
//! in a fresh schema of a real server that this test binary starts.

mod common;

use std::sync::Arc;

use ortelius_txn::suite::Store;

fn store() -> Store {
    Store::new(Arc::new(common::store()), ())
}

ortelius_txn::txn_suite!(store());
