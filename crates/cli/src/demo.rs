//! `ortelius demo`: the embedded store end to end, with no configuration.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{ensure, Context, Result};
use ortelius_kvs::{Cell, KeyValueService, RangeRequest, TableRef, MAX_READ_TS};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the store in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// How many cells to write.
    #[arg(long, default_value_t = 10_000)]
    cells: u32,
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().join("store"));
    let table = TableRef::new("demo", "accounts")?;
    let started = Instant::now();
    {
        let kvs = RocksDbKvs::open(&dir, &RocksDbConfig::default())?;
        kvs.create_table(&table, b"")?;
        let writes = (0..args.cells)
            .map(|i| {
                Ok((
                    Cell::new(format!("account{i:08}"), "balance")?,
                    100u64.to_be_bytes().to_vec(),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        for chunk in writes.chunks(1000) {
            kvs.put(&table, chunk, 1)?;
        }
        // A second version of one cell: reads below ts 2 still see the first.
        let first = Cell::new("account00000000", "balance")?;
        kvs.put(&table, &[(first.clone(), 42u64.to_be_bytes().to_vec())], 2)?;
        let old = kvs.get(&table, &[(first.clone(), 2)])?;
        let new = kvs.get(&table, &[(first.clone(), MAX_READ_TS)])?;
        ensure!(
            old.get(&first).map(|v| v.timestamp) == Some(1),
            "read at ts 2 should see version 1"
        );
        ensure!(
            new.get(&first).map(|v| v.timestamp) == Some(2),
            "latest read should see version 2"
        );
    }
    let write_time = started.elapsed();
    // Reopen: everything written is there.
    let kvs = RocksDbKvs::open(&dir, &RocksDbConfig::default())?;
    let scan_started = Instant::now();
    let mut total: u64 = 0;
    let mut rows = 0u32;
    for row in kvs.get_range(&table, &RangeRequest::all(), MAX_READ_TS)? {
        let row = row?;
        for value in row.columns.values() {
            let bytes: [u8; 8] = value
                .contents
                .as_slice()
                .try_into()
                .context("balance is not 8 bytes")?;
            total += u64::from_be_bytes(bytes);
        }
        rows += 1;
    }
    ensure!(
        rows == args.cells,
        "expected {} rows after reopen, found {rows}",
        args.cells
    );
    let expected = u64::from(args.cells - 1) * 100 + 42;
    ensure!(
        total == expected,
        "expected a total of {expected}, found {total}"
    );
    println!(
        "Ortelius demo (embedded RocksDB store at {})",
        dir.display()
    );
    println!(
        "  wrote {} cells and a second version of one: {:.1?}",
        args.cells, write_time
    );
    println!(
        "  reopened and scanned {rows} rows: {:.1?}",
        scan_started.elapsed()
    );
    println!("  total balance {total} (as expected); historical read below ts 2 saw version 1");
    Ok(())
}
