//! The transaction suite (protocol, concurrency, sweep, backup lock) on Cassandra (one node,
//! RF 1), each test in a fresh keyspace of a real node this test binary starts.

mod common;

use ortelius_txn::suite::Store;

fn store() -> Store {
    let (kvs, guard) = common::store();
    Store::new(kvs, guard)
}

ortelius_txn::txn_suite!(store());
