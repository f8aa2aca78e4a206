//! Behaviour specific to the RocksDB backend: persistence, exclusive ownership of the data
//! directory across processes, and live checkpoints.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use ortelius_kvs::{
    Cell, ColumnRange, ColumnSelection, KeyValueService, KvsError, RangeRequest, RowRange,
    TableRef, MAX_READ_TS,
};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};

fn open(dir: &std::path::Path) -> RocksDbKvs {
    RocksDbKvs::open(dir, &RocksDbConfig::default()).unwrap()
}

#[test]
fn tables_and_data_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let t = TableRef::new("app", "accounts").unwrap();
    let c = Cell::new("alice", "balance").unwrap();
    {
        let kvs = open(dir.path());
        kvs.create_table(&t, b"meta").unwrap();
        kvs.put(&t, &[(c.clone(), b"100".to_vec())], 5).unwrap();
        kvs.put_unless_exists(&t, &[(Cell::new("tx", "5").unwrap(), b"6".to_vec())])
            .unwrap();
    }
    let kvs = open(dir.path());
    assert_eq!(kvs.list_tables().unwrap(), vec![t.clone()]);
    assert_eq!(kvs.table_metadata(&t).unwrap(), b"meta");
    assert_eq!(kvs.get(&t, &[(c.clone(), 6)]).unwrap()[&c].contents, b"100");
    // Table ids are not reused after a drop: a new table never sees old data.
    kvs.drop_table(&t).unwrap();
    let u = TableRef::new("app", "other").unwrap();
    kvs.create_table(&u, b"").unwrap();
    assert!(kvs.get(&u, &[(c.clone(), MAX_READ_TS)]).unwrap().is_empty());
}

#[test]
fn second_open_in_same_process_fails_naming_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let _first = open(dir.path());
    match RocksDbKvs::open(dir.path(), &RocksDbConfig::default()) {
        Err(err @ KvsError::StoreLocked { .. }) => {
            assert!(
                err.to_string().contains(&dir.path().display().to_string()),
                "{err}"
            );
        }
        Err(other) => panic!("expected StoreLocked, got {other}"),
        Ok(_) => panic!("a second handle opened the same store"),
    }
}

/// Run by `second_process_cannot_open_an_open_store` in a child process: opens the store named
/// by `ORTELIUS_HOLD_STORE`, says so, and keeps it open until stdin closes.
#[test]
#[ignore = "helper process for second_process_cannot_open_an_open_store; runs only when its parent spawns it"]
fn hold_store_open_helper() {
    let Ok(dir) = std::env::var("ORTELIUS_HOLD_STORE") else {
        return;
    };
    let _kvs = open(std::path::Path::new(&dir));
    println!("OPENED");
    std::io::stdout().flush().unwrap();
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
}

#[test]
fn second_process_cannot_open_an_open_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "hold_store_open_helper",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("ORTELIUS_HOLD_STORE", dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut opened = false;
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 {
        if line.contains("OPENED") {
            opened = true;
            break;
        }
        line.clear();
    }
    assert!(opened, "child never opened the store");
    let result = RocksDbKvs::open(dir.path(), &RocksDbConfig::default());
    drop(child.stdin.take());
    child.wait().unwrap();
    match result {
        Err(KvsError::StoreLocked { dir: locked, .. }) => assert_eq!(locked, dir.path()),
        Err(other) => panic!("expected StoreLocked, got {other}"),
        Ok(_) => panic!("opened a store another process holds"),
    }
    // Once the other process is gone, the store opens.
    open(dir.path());
}

#[test]
fn checkpoint_of_a_live_store_is_a_consistent_openable_copy() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = open(&dir.path().join("live"));
    let t = TableRef::new("app", "seq").unwrap();
    kvs.create_table(&t, b"").unwrap();
    let stop = AtomicBool::new(false);
    let checkpoint_dir = dir.path().join("checkpoint");
    std::thread::scope(|s| {
        // One writer appends rows 0, 1, 2, ... each in its own write, in order.
        let writer = s.spawn(|| {
            let mut i: u32 = 0;
            while !stop.load(Ordering::SeqCst) || i < 2000 {
                let c = Cell::new(i.to_be_bytes(), "v").unwrap();
                kvs.put(&t, &[(c, i.to_be_bytes().to_vec())], 1).unwrap();
                i += 1;
            }
            i
        });
        while kvs.get_range(&t, &RangeRequest::all(), 2).unwrap().count() < 500 {
            std::thread::yield_now();
        }
        kvs.checkpoint(&checkpoint_dir).unwrap();
        stop.store(true, Ordering::SeqCst);
        writer.join().unwrap();
    });
    let total = kvs.get_range(&t, &RangeRequest::all(), 2).unwrap().count();
    drop(kvs);
    let copy = open(&checkpoint_dir);
    let rows: Vec<u32> = copy
        .get_range(&t, &RangeRequest::all(), 2)
        .unwrap()
        .map(|r| u32::from_be_bytes(r.unwrap().row.try_into().unwrap()))
        .collect();
    assert!(
        rows.len() >= 500 && rows.len() <= total,
        "{} of {total}",
        rows.len()
    );
    // A point-in-time copy of sequential writes is a prefix: no gaps.
    assert!(rows.iter().enumerate().all(|(i, r)| *r as usize == i));
    assert!(
        matches!(
            copy.checkpoint(&checkpoint_dir),
            Err(KvsError::Storage { .. })
        ),
        "existing target refused"
    );
}

/// Bytes of SST files in a store's directory (obsolete ones included until RocksDB deletes them).
fn sst_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().extension().is_some_and(|x| x == "sst"))
        .map(|e| e.metadata().unwrap().len())
        .sum()
}

#[test]
fn point_reads_reuse_iterators_yet_see_every_write_made_before_them() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = std::sync::Arc::new(open(dir.path()));
    let t = TableRef::new("app", "t").unwrap();
    kvs.create_table(&t, b"").unwrap();
    let c = Cell::new("r", "c").unwrap();
    for ts in 1..200i64 {
        // Written on another thread, then read here with this thread's reused iterator.
        let writer = kvs.clone();
        let (t2, c2) = (t.clone(), c.clone());
        std::thread::spawn(move || writer.put(&t2, &[(c2, ts.to_be_bytes().to_vec())], ts))
            .join()
            .unwrap()
            .unwrap();
        let got = kvs.get(&t, &[(c.clone(), MAX_READ_TS)]).unwrap();
        assert_eq!(got[&c].timestamp, ts, "read missed the write at {ts}");
        if ts % 50 == 0 {
            kvs.compact();
        }
    }
}

#[test]
fn reused_read_iterators_do_not_keep_compacted_files_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let kvs = open(dir.path());
    let t = TableRef::new("app", "t").unwrap();
    kvs.create_table(&t, b"").unwrap();
    let writes: Vec<_> = (0..20_000u32)
        .map(|i| (Cell::new(i.to_be_bytes(), "c").unwrap(), vec![7u8; 100]))
        .collect();
    kvs.put(&t, &writes, 1).unwrap();
    kvs.compact();
    let full = sst_bytes(dir.path());
    assert!(full > 100_000, "the data is in SST files: {full} bytes");
    // Reads leave iterators in the pool, positioned in (and pinning) the current files.
    for (cell, _) in writes.iter().step_by(1000) {
        kvs.get(&t, &[(cell.clone(), MAX_READ_TS)]).unwrap();
    }
    kvs.truncate_table(&t).unwrap();
    kvs.compact();
    let after = sst_bytes(dir.path());
    assert!(
        after < full / 10,
        "compaction left {after} of {full} bytes of SST files on disk"
    );
}

/// Cell seeks use the cell-prefix filters and may skip files without the cell; every read that
/// steps across cells must not. Here a row's cells are each in a different SST file (each
/// written before a reopen, which flushes it) and one in the memtable, and the row name is long
/// enough that its row prefix is in the prefix extractor's domain: a row read that used a cell
/// seek's read options would skip the files whose filter lacks that prefix.
#[test]
fn reads_across_cells_see_cells_in_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let t = TableRef::new("app", "wide").unwrap();
    let row = b"a-row-name-long-enough-to-matter".to_vec();
    // Three files: a fourth would start a compaction into one.
    let columns = ["a", "b", "c"];
    let cell = |c: &str| Cell::new(row.clone(), c).unwrap();
    for (i, column) in columns.iter().enumerate() {
        let kvs = open(dir.path());
        if i == 0 {
            kvs.create_table(&t, b"").unwrap();
        }
        kvs.put(&t, &[(cell(column), column.as_bytes().to_vec())], 5)
            .unwrap();
    }
    let kvs = open(dir.path());
    kvs.put(&t, &[(cell("d"), b"d".to_vec())], 5).unwrap();
    let all: Vec<&str> = columns.iter().copied().chain(["d"]).collect();
    for column in &all {
        let c = cell(column);
        assert_eq!(
            kvs.get(&t, &[(c.clone(), 6)]).unwrap()[&c].contents,
            column.as_bytes()
        );
        assert_eq!(
            kvs.get_all_timestamps(&t, std::slice::from_ref(&c), 6)
                .unwrap()[&c],
            vec![5]
        );
    }
    let rows = kvs
        .get_rows(&t, std::slice::from_ref(&row), &ColumnSelection::All, 6)
        .unwrap();
    assert_eq!(rows.len(), all.len(), "get_rows: {rows:?}");
    let ranged: Vec<_> = kvs
        .get_range(&t, &RangeRequest::rows(RowRange::all()), 6)
        .unwrap()
        .map(|r| r.unwrap().columns.len())
        .collect();
    assert_eq!(ranged, vec![all.len()], "get_range");
    let mut scanned = 0;
    kvs.scan_range(&t, &RangeRequest::rows(RowRange::all()), 6, &mut |_| {
        scanned += 1;
        std::ops::ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(scanned, all.len(), "scan_range");
    let columns_read = kvs
        .get_rows_column_range(&t, std::slice::from_ref(&row), &ColumnRange::new("", ""), 6)
        .unwrap()
        .count();
    assert_eq!(columns_read, all.len(), "get_rows_column_range");
}

/// A range tombstone (`truncate_table`, `delete_range`) flushed into an SST file of its own,
/// which holds no version of the cell, so that file's prefix filter lacks the cell: a cell
/// seek must still apply the tombstone and not bring back the deleted versions.
#[test]
fn cell_reads_apply_range_deletes_from_files_without_the_cell() {
    let dir = tempfile::tempdir().unwrap();
    let t = TableRef::new("app", "ranged").unwrap();
    let kept = TableRef::new("app", "kept").unwrap();
    let cell = |r: &str| Cell::new(format!("{r}-a-row-name-long-enough"), "c").unwrap();
    {
        let kvs = open(dir.path());
        kvs.create_table(&t, b"").unwrap();
        kvs.create_table(&kept, b"").unwrap();
        for r in ["a", "b", "c"] {
            kvs.put(&t, &[(cell(r), b"old".to_vec())], 5).unwrap();
        }
    }
    {
        // The tombstones only (and a write to another table), flushed at the next open.
        let kvs = open(dir.path());
        kvs.delete_range(&t, &RowRange::new("b", "c")).unwrap();
        kvs.put(&kept, &[(cell("k"), b"k".to_vec())], 5).unwrap();
    }
    {
        let kvs = open(dir.path());
        let read = |c: Cell| {
            let got = kvs.get(&t, &[(c.clone(), MAX_READ_TS)]).unwrap();
            let one = kvs.get_one(&t, &c, MAX_READ_TS).unwrap();
            assert_eq!(got.get(&c), one.as_ref(), "get and get_one disagree");
            one.map(|v| v.contents)
        };
        assert_eq!(read(cell("a")), Some(b"old".to_vec()));
        assert_eq!(read(cell("b")), None, "a range-deleted version came back");
        assert_eq!(read(cell("c")), Some(b"old".to_vec()));
        kvs.truncate_table(&t).unwrap();
    }
    let kvs = open(dir.path());
    for r in ["a", "b", "c"] {
        let c = cell(r);
        assert!(kvs.get(&t, &[(c.clone(), MAX_READ_TS)]).unwrap().is_empty());
        assert!(kvs
            .get_all_timestamps(&t, &[c], MAX_READ_TS)
            .unwrap()
            .is_empty());
    }
    assert_eq!(
        kvs.get_one(&kept, &cell("k"), MAX_READ_TS)
            .unwrap()
            .unwrap()
            .contents,
        b"k"
    );
}

/// Whether any SST file in `dir` was written with the store's prefix extractor (RocksDB records
/// the extractor's name in each file's properties; "nullptr" when there was none).
fn files_with_cell_prefix_filters(dir: &std::path::Path) -> (usize, usize) {
    let mut with = 0;
    let mut all = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst") {
            all += 1;
            let bytes = std::fs::read(&path).unwrap();
            if bytes
                .windows(b"ortelius.cell_prefix".len())
                .any(|w| w == b"ortelius.cell_prefix")
            {
                with += 1;
            }
        }
    }
    (with, all)
}

/// A store written before the cell-prefix filters existed (its SST files were written with no
/// prefix extractor) opens and reads the same: RocksDB skips prefix filtering on files written
/// with another extractor, and new files get the filters. Here every file is rewritten by a
/// plain RocksDB without the extractor, then the store takes newer versions of half its cells
/// (in the memtable, then in a file with the filters) and every kind of read is checked each
/// time.
#[test]
fn a_store_written_without_cell_prefix_filters_reads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let t = TableRef::new("app", "upgraded").unwrap();
    let rows: Vec<String> = (0..40)
        .map(|i| format!("row-{i:03}-named-at-length"))
        .collect();
    let cell = |r: &String| Cell::new(r.clone(), "c").unwrap();
    {
        let kvs = open(dir.path());
        kvs.create_table(&t, b"").unwrap();
        for ts in [5, 10] {
            let writes: Vec<_> = rows
                .iter()
                .map(|r| (cell(r), format!("{r}@{ts}").into_bytes()))
                .collect();
            kvs.put(&t, &writes, ts).unwrap();
        }
    }
    {
        // What the code before the filters wrote: every file without a prefix extractor.
        let mut plain = rocksdb::Options::default();
        plain.create_if_missing(false);
        let db = rocksdb::DB::open(&plain, dir.path()).unwrap();
        db.flush().unwrap();
        db.compact_range::<&[u8], &[u8]>(None, None);
    }
    let (with, all) = files_with_cell_prefix_filters(dir.path());
    assert!(
        all > 0 && with == 0,
        "{with} of {all} files have the filters"
    );

    // The newest value below `ts` of row `i`, when rows with an odd index got a version at 15.
    let expected = |i: usize, ts: i64| -> String {
        let newest = [5i64, 10, 15]
            .into_iter()
            .filter(|&v| v < ts && (v != 15 || i % 2 == 1))
            .max()
            .unwrap();
        format!("{}@{newest}", rows[i])
    };
    let check = |kvs: &RocksDbKvs, stage: &str| {
        for ts in [6i64, 11, 16] {
            for (i, r) in rows.iter().enumerate() {
                let c = cell(r);
                let want = expected(i, ts).into_bytes();
                let got = kvs.get(&t, &[(c.clone(), ts)]).unwrap();
                assert_eq!(got[&c].contents, want, "{stage}: get {r} at {ts}");
                let versions = kvs
                    .get_all_timestamps(&t, std::slice::from_ref(&c), ts)
                    .unwrap();
                let below: Vec<i64> = [5, 10, 15]
                    .into_iter()
                    .filter(|&v| v < ts && (v != 15 || i % 2 == 1))
                    .collect();
                assert_eq!(versions[&c], below, "{stage}: timestamps of {r} below {ts}");
            }
            let latest = kvs
                .get_latest_timestamps(&t, &rows.iter().map(|r| (cell(r), ts)).collect::<Vec<_>>())
                .unwrap();
            assert_eq!(
                latest.len(),
                rows.len(),
                "{stage}: latest timestamps at {ts}"
            );
            let mut scanned = Vec::new();
            kvs.scan_range(&t, &RangeRequest::rows(RowRange::all()), ts, &mut |v| {
                scanned.push(v.contents.to_vec());
                std::ops::ControlFlow::Continue(())
            })
            .unwrap();
            let want: Vec<Vec<u8>> = (0..rows.len())
                .map(|i| expected(i, ts).into_bytes())
                .collect();
            assert_eq!(scanned, want, "{stage}: scan at {ts}");
            let ranged: Vec<Vec<u8>> = kvs
                .get_range(&t, &RangeRequest::rows(RowRange::all()), ts)
                .unwrap()
                .map(|row| row.unwrap().columns.into_values().next().unwrap().contents)
                .collect();
            assert_eq!(ranged, want, "{stage}: get_range at {ts}");
            let got_rows = kvs
                .get_rows(
                    &t,
                    &rows
                        .iter()
                        .map(|r| r.clone().into_bytes())
                        .collect::<Vec<_>>(),
                    &ColumnSelection::All,
                    ts,
                )
                .unwrap();
            assert_eq!(got_rows.len(), rows.len(), "{stage}: get_rows at {ts}");
        }
    };
    {
        let kvs = open(dir.path());
        // Even rows: every version in the old files; odd rows: the newest in the memtable.
        let writes: Vec<_> = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 2 == 1)
            .map(|(_, r)| (cell(r), format!("{r}@15").into_bytes()))
            .collect();
        kvs.put(&t, &writes, 15).unwrap();
        check(&kvs, "old files and the memtable");
    }
    // Opening the store flushes the newer versions into a file with the filters.
    let kvs = open(dir.path());
    let (with, all) = files_with_cell_prefix_filters(dir.path());
    assert!(
        with > 0 && with < all,
        "{with} of {all} files have the filters"
    );
    check(&kvs, "old and new files");
}
