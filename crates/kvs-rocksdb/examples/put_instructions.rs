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

use ortelius_kvs::{Cell, KeyValueService, TableRef};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

fn row(i: u64) -> [u8; 8] {
    // Spread keys as the benches do.
    i.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let (keys, puts) = (env("KEYS", 200_000), env("PUTS", 100_000).max(1));
    let dir = tempfile::tempdir().unwrap();
    let kvs = RocksDbKvs::open(dir.path().join("store"), &RocksDbConfig::default()).unwrap();
    let table = TableRef::new("bench", "t").unwrap();
    kvs.create_table(&table, b"").unwrap();
    for chunk in (0..keys).collect::<Vec<_>>().chunks(1000) {
        let writes: Vec<_> = chunk
            .iter()
            .map(|&i| (Cell::new(row(i), "v").unwrap(), vec![7u8; 100]))
            .collect();
        kvs.put(&table, &writes, 1).unwrap();
    }
    kvs.compact();
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
