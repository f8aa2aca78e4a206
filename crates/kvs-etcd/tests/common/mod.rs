//! A fresh store per test: a new key prefix on the three-member etcd cluster this test binary
//! started.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use ortelius_kvs_etcd::{EtcdConfig, EtcdKvs};
use ortelius_test_servers::EtcdCluster;

/// The cluster shared by the tests of this binary.
pub fn cluster() -> &'static EtcdCluster {
    static SHARED: OnceLock<EtcdCluster> = OnceLock::new();
    SHARED.get_or_init(|| EtcdCluster::start(3, &[]))
}

pub fn config_on(cluster: &EtcdCluster, prefix: &str) -> EtcdConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    EtcdConfig::new(
        cluster.endpoints(),
        &format!("/test/{prefix}-{}-{n}", std::process::id()),
    )
}

pub fn config(prefix: &str) -> EtcdConfig {
    config_on(cluster(), prefix)
}

pub fn store() -> EtcdKvs {
    EtcdKvs::open(&config("t")).unwrap()
}
