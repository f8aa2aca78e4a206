//! Contract-layer puts of fresh cells into a store that already holds `KEYS` (default 200 000)
//! compacted cells, for counting instructions per put, which are stable where wall-clock time
//! is not:
//!
//! ```sh
//! cargo build --release --workspace --example put_instructions
//! PUTS=50000 KEYS=100000 valgrind --tool=callgrind --toggle-collect='put_instructions::measured_put' \
//!     "${CARGO_TARGET_DIR:-target}/release/examples/put_instructions"
//! ```
//!
//! "Collected" divided by `PUTS` is the instructions per put; `callgrind_annotate --inclusive=yes`
//! splits it (e.g. `DBImpl::KeyMayExist`, the probe for a different value at the same version,
//! against `DBImpl::WriteImpl`, the write itself).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

use common::{env, load, row};

fn main() {
    let (keys, puts) = (env("KEYS", 200_000), env("PUTS", 100_000).max(1));
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("store"), &RocksDbConfig::default()).unwrap();
    let table = load(&kvs, keys);
    let started = std::time::Instant::now();
    for i in keys..keys + puts {
        measured_put(&kvs, &table, i);
    }
    eprintln!(
        "{puts} puts, {:?} per put",
        started.elapsed() / u32::try_from(puts).unwrap_or(u32::MAX)
    );
}

#[inline(never)]
fn measured_put(kvs: &RocksDbKvs, table: &TableRef, i: u64) {
    let cell = Cell::new(row(i), "v").unwrap();
    kvs.put(table, &[(cell, vec![7u8; 100])], 1).unwrap();
}
