//! The conformance suite against Cassandra (one node, RF 1), each test in a fresh keyspace of a
//! real node this test binary starts; and (`atomic_slot`) the ordering of mutations of a cell's
//! atomic version under client clock skew, on the same node.

#![allow(clippy::unwrap_used)]

mod atomic_slot;
mod common;

/// The store and the guard that drops its keyspace after the test.
struct Store(
    std::sync::Arc<ortelius_kvs_cassandra::CassandraKvs>,
    #[allow(dead_code)] common::DropKeyspace,
);

impl std::ops::Deref for Store {
    type Target = ortelius_kvs_cassandra::CassandraKvs;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn store() -> Store {
    let (kvs, guard) = common::store();
    Store(kvs, guard)
}

ortelius_kvs::kvs_conformance_tests!(store());
