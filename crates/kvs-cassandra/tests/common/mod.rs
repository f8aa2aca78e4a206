//! A fresh store per test: a new keyspace on the single-node cluster this test binary started,
//! dropped again when the test ends.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ortelius_kvs_cassandra::{CassandraConfig, CassandraKvs, NodeAccess};
use ortelius_test_servers::CassandraCluster;

/// The config of a new keyspace on `cluster` with replication factor `rf`.
pub fn config_on(cluster: &CassandraCluster, prefix: &str, rf: u32) -> CassandraConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let mut c = CassandraConfig::new(
        cluster.servers(),
        &format!("{prefix}_{}_{n}", std::process::id()),
        rf,
    );
    c.nodes = (1..=cluster.nodes())
        .map(|i| NodeAccess {
            nodetool: cluster.nodetool_command(i),
            data_dir: cluster.data_dir(i),
        })
        .collect();
    c
}

pub fn config(prefix: &str) -> CassandraConfig {
    config_on(CassandraCluster::shared_single(), prefix, 1)
}

/// Drops its keyspace when the test ends.
pub struct DropKeyspace(pub Arc<CassandraKvs>);

impl Drop for DropKeyspace {
    fn drop(&mut self) {
        let _ = self.0.drop_keyspace();
    }
}

pub fn store() -> (Arc<CassandraKvs>, DropKeyspace) {
    let kvs = Arc::new(CassandraKvs::open(&config("t")).unwrap());
    (kvs.clone(), DropKeyspace(kvs))
}
