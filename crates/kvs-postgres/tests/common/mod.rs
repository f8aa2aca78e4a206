//! A fresh store per test: a new schema on the PostgreSQL server this test binary started.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ortelius_kvs_postgres::{PostgresConfig, PostgresKvs, Secret};
use ortelius_test_servers::{postgres as server, Postgres};

/// The config of a new, empty schema on `server`.
pub fn config_on(pg: &Postgres, prefix: &str) -> PostgresConfig {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    PostgresConfig {
        host: pg.host.clone(),
        port: pg.port,
        database: server::DATABASE.to_owned(),
        user: server::USER.to_owned(),
        password_file: None,
        password: Some(Secret(server::PASSWORD.to_owned())),
        schema: format!("{prefix}_{}_{n}", std::process::id()),
        pool_size: 8,
        connect_timeout: Duration::from_secs(10),
    }
}

/// The config of a new, empty schema on the shared server.
pub fn config(prefix: &str) -> PostgresConfig {
    config_on(Postgres::shared(), prefix)
}

pub fn store() -> PostgresKvs {
    PostgresKvs::open(&config("t")).unwrap()
}
