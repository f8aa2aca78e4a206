//! Transaction protocol behaviour on every backend: visibility, conflicts, rollbacks of other
//! transactions, commit outcomes, read-only and serializable transactions.

use std::time::Duration;

use super::common::*;
use crate::{ConflictHandler, Isolation, RetryClass, TxnError, TxnStatus};
use ortelius_kvs::{
    ColumnRange, ColumnSelection, KvsError, RangeRequest, RowRange, TableRef, Value,
    SWEEP_SENTINEL_TS,
};

pub fn reads_see_own_writes_and_deletes(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    put_u64(&m, &t, &cell("a", "x"), 1);
    m.run(|txn| {
        assert_eq!(read_u64(txn, &t, &cell("a", "x"))?, Some(1));
        txn.put(&t, &cell("a", "x"), 2u64.to_be_bytes())?;
        assert_eq!(read_u64(txn, &t, &cell("a", "x"))?, Some(2));
        txn.delete(&t, &cell("a", "x"))?;
        assert_eq!(read_u64(txn, &t, &cell("a", "x"))?, None);
        txn.put(&t, &cell("b", "y"), 3u64.to_be_bytes())
    })
    .unwrap();
    let ro = m.begin_read_only().unwrap();
    assert_eq!(
        read_u64(&ro, &t, &cell("a", "x")).unwrap(),
        None,
        "the delete committed"
    );
    assert_eq!(read_u64(&ro, &t, &cell("b", "y")).unwrap(), Some(3));
}

pub fn uncommitted_writes_are_invisible_to_others(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let writer = m.begin(Isolation::Snapshot).unwrap();
    writer.put(&t, &cell("a", "x"), 1u64.to_be_bytes()).unwrap();
    let reader = m.begin_read_only().unwrap();
    assert_eq!(read_u64(&reader, &t, &cell("a", "x")).unwrap(), None);
    writer.commit().unwrap();
    assert_eq!(
        read_u64(&reader, &t, &cell("a", "x")).unwrap(),
        None,
        "started before the commit"
    );
    assert_eq!(
        read_u64(&m.begin_read_only().unwrap(), &t, &cell("a", "x")).unwrap(),
        Some(1)
    );
}

pub fn reads_are_repeatable_within_a_transaction(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    put_u64(&m, &t, &cell("a", "x"), 1);
    let reader = m.begin(Isolation::Snapshot).unwrap();
    assert_eq!(read_u64(&reader, &t, &cell("a", "x")).unwrap(), Some(1));
    put_u64(&m, &t, &cell("a", "x"), 2);
    m.run(|txn| txn.delete(&t, &cell("a", "x"))).unwrap();
    put_u64(&m, &t, &cell("a", "y"), 5);
    assert_eq!(read_u64(&reader, &t, &cell("a", "x")).unwrap(), Some(1));
    assert_eq!(read_u64(&reader, &t, &cell("a", "y")).unwrap(), None);
    assert_eq!(
        reader.get_range(&t, &RangeRequest::all()).unwrap().count(),
        1
    );
}

pub fn snapshot_sees_exactly_commits_before_start(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    for v in 1..=5u64 {
        put_u64(&m, &t, &cell("a", "x"), v);
    }
    let txn = m.begin_read_only().unwrap();
    put_u64(&m, &t, &cell("a", "x"), 6);
    assert_eq!(read_u64(&txn, &t, &cell("a", "x")).unwrap(), Some(5));
}

pub fn second_committer_of_a_cell_fails_whatever_the_start_order(store: &Store) {
    let m = manager(store);
    for handler in [
        ConflictHandler::RetryOnWriteWrite,
        ConflictHandler::RetryOnWriteWriteCell,
    ] {
        let t = table(&m, &format!("t{handler:?}"), handler);
        for first_starts_first in [true, false] {
            let (a, b) = if first_starts_first {
                let a = m.begin(Isolation::Snapshot).unwrap();
                (a, m.begin(Isolation::Snapshot).unwrap())
            } else {
                let b = m.begin(Isolation::Snapshot).unwrap();
                (m.begin(Isolation::Snapshot).unwrap(), b)
            };
            a.put(&t, &cell("r", "c"), b"a".to_vec()).unwrap();
            b.put(&t, &cell("r", "c"), b"b".to_vec()).unwrap();
            a.commit().unwrap();
            let err = b.commit().unwrap_err();
            assert!(matches!(err, TxnError::WriteWriteConflict { .. }), "{err}");
            assert_eq!(err.retry_class(), RetryClass::Retriable);
            let ro = m.begin_read_only().unwrap();
            assert_eq!(
                ro.get_one(&t, &cell("r", "c")).unwrap(),
                Some(b"a".to_vec())
            );
        }
    }
}

pub fn disjoint_cells_of_one_row_do_not_conflict(store: &Store) {
    let m = manager(store);
    for handler in [
        ConflictHandler::RetryOnWriteWrite,
        ConflictHandler::RetryOnWriteWriteCell,
    ] {
        let t = table(&m, &format!("t{handler:?}"), handler);
        let a = m.begin(Isolation::Snapshot).unwrap();
        let b = m.begin(Isolation::Snapshot).unwrap();
        a.put(&t, &cell("r", "x"), b"a".to_vec()).unwrap();
        b.put(&t, &cell("r", "y"), b"b".to_vec()).unwrap();
        a.commit().unwrap();
        b.commit().unwrap();
    }
}

pub fn ignore_all_tables_let_the_last_writer_win(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::IgnoreAll);
    let a = m.begin(Isolation::Snapshot).unwrap();
    let b = m.begin(Isolation::Snapshot).unwrap();
    a.put(&t, &cell("r", "c"), b"a".to_vec()).unwrap();
    b.put(&t, &cell("r", "c"), b"b".to_vec()).unwrap();
    b.commit().unwrap();
    a.commit().unwrap();
}

/// Writes `value` at a fresh start timestamp straight into the store, as a writer that died
/// before its commit record would leave it.
fn abandoned_write(
    m: &crate::TransactionManager,
    t: &TableRef,
    c: &ortelius_kvs::Cell,
    value: &[u8],
) -> i64 {
    let start = m.fresh_timestamp().unwrap();
    m.kvs()
        .put(t, &[(c.clone(), value.to_vec())], start)
        .unwrap();
    start
}

pub fn reader_rolls_back_abandoned_writer(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    put_u64(&m, &t, &cell("a", "x"), 1);
    let dead = abandoned_write(&m, &t, &cell("a", "x"), &9u64.to_be_bytes());
    let ro = m.begin_read_only().unwrap();
    assert_eq!(
        read_u64(&ro, &t, &cell("a", "x")).unwrap(),
        Some(1),
        "reads below the garbage"
    );
    let status = m.transactions_table().load_uncached(&[dead]).unwrap();
    assert_eq!(
        status.get(&dead),
        Some(&TxnStatus::Aborted),
        "the reader decided it: aborted"
    );
}

/// More invisible versions above a cell's visible one than a read has post-filtering rounds (a
/// hot cell restored from a backup, whose later transactions were cleaned, looks like this):
/// the read still finds the visible version, and decides every abandoned writer on its way.
pub fn a_long_run_of_invisible_versions_is_read_through(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let c = cell("hot", "x");
    put_u64(&m, &t, &c, 1);
    let writers: Vec<i64> = (0..crate::reader::MAX_POST_FILTER_ROUNDS + 20)
        .map(|i| abandoned_write(&m, &t, &c, &(i as u64 + 2).to_be_bytes()))
        .collect();
    let ro = m.begin_read_only().unwrap();
    assert_eq!(read_u64(&ro, &t, &c).unwrap(), Some(1));
    // Now every writer is known to have aborted.
    let rows = ro
        .get_rows(&t, &[b"hot".to_vec()], &ColumnSelection::All)
        .unwrap();
    assert_eq!(
        rows.get(&c),
        Some(&1u64.to_be_bytes().to_vec()),
        "a many-cell read too"
    );
    let statuses = m.transactions_table().load_uncached(&writers).unwrap();
    assert!(
        writers
            .iter()
            .all(|w| statuses.get(w) == Some(&TxnStatus::Aborted)),
        "every abandoned writer was rolled back"
    );
    // A serializable transaction's validation reads the cell again at its commit timestamp,
    // through the same run of (now aborted) versions.
    let serializable = m.begin(Isolation::Serializable).unwrap();
    assert_eq!(read_u64(&serializable, &t, &c).unwrap(), Some(1));
    serializable
        .put(&t, &cell("other", "x"), 5u64.to_be_bytes())
        .unwrap();
    serializable.commit().unwrap();
    // Its own version below a run of invisible ones: validation skips to it and then below
    // it, never deciding its own transaction (that would wait on its own commit lock).
    let own = m.begin(Isolation::Serializable).unwrap();
    assert_eq!(read_u64(&own, &t, &c).unwrap(), Some(1));
    for i in 0..4u64 {
        abandoned_write(&m, &t, &c, &(i + 100).to_be_bytes());
    }
    own.put(&t, &c, 7u64.to_be_bytes()).unwrap();
    own.commit().unwrap();
    let ro = m.begin_read_only().unwrap();
    assert_eq!(read_u64(&ro, &t, &c).unwrap(), Some(7));
}

pub fn reader_waits_for_a_committing_writer_instead_of_rolling_it_back(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let txns = m.transactions_table();
    // A writer in the middle of committing: holds its commit lock, data written, commit ts taken.
    let start = m.fresh_timestamp().unwrap();
    let token = m
        .locks()
        .lock(&[txns.commit_lock(start)], Duration::from_secs(5))
        .unwrap();
    m.kvs()
        .put(&t, &[(cell("a", "x"), 7u64.to_be_bytes().to_vec())], start)
        .unwrap();
    let commit = m.fresh_timestamp().unwrap();
    let reader = m.begin_read_only().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(150));
            txns.put_unless_exists(start, TxnStatus::Committed(commit))
                .unwrap();
            m.locks().unlock(&[token]).unwrap();
        });
        assert_eq!(
            read_u64(&reader, &t, &cell("a", "x")).unwrap(),
            Some(7),
            "waited, then saw the commit"
        );
    });
}

pub fn write_conflict_check_rolls_back_abandoned_writer(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let dead = abandoned_write(&m, &t, &cell("a", "x"), b"garbage");
    m.run(|txn| txn.put(&t, &cell("a", "x"), b"new".to_vec()))
        .unwrap();
    assert_eq!(
        m.transactions_table().load_uncached(&[dead]).unwrap()[&dead],
        TxnStatus::Aborted
    );
    assert_eq!(
        m.begin_read_only()
            .unwrap()
            .get_one(&t, &cell("a", "x"))
            .unwrap(),
        Some(b"new".to_vec())
    );
}

fn rows_of(scan: crate::RangeScan<'_>) -> Vec<(String, Vec<String>)> {
    scan.map(|r| {
        let r = r.unwrap();
        let cols = r
            .columns
            .keys()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect();
        (String::from_utf8_lossy(&r.row).into_owned(), cols)
    })
    .collect()
}

pub fn range_scan_merges_own_writes_and_hides_uncommitted_data(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    m.run(|txn| {
        for row in ["a", "c", "e"] {
            txn.put(&t, &cell(row, "x"), b"1".to_vec())?;
        }
        txn.put(&t, &cell("c", "y"), b"1".to_vec())
    })
    .unwrap();
    abandoned_write(&m, &t, &cell("b", "x"), b"garbage");
    let pending = m.begin(Isolation::Snapshot).unwrap();
    pending
        .put(&t, &cell("d", "x"), b"uncommitted".to_vec())
        .unwrap();
    let txn = m.begin(Isolation::Snapshot).unwrap();
    txn.put(&t, &cell("f", "x"), b"mine".to_vec()).unwrap();
    txn.put(&t, &cell("c", "z"), b"mine".to_vec()).unwrap();
    txn.delete(&t, &cell("c", "y")).unwrap();
    txn.delete(&t, &cell("e", "x")).unwrap();
    let s = |v: &[(&str, &[&str])]| -> Vec<(String, Vec<String>)> {
        v.iter()
            .map(|(r, cs)| (r.to_string(), cs.iter().map(|c| c.to_string()).collect()))
            .collect()
    };
    let forward = rows_of(txn.get_range(&t, &RangeRequest::all()).unwrap());
    assert_eq!(
        forward,
        s(&[("a", &["x"]), ("c", &["x", "z"]), ("f", &["x"])])
    );
    let reverse = RangeRequest {
        reverse: true,
        ..RangeRequest::all()
    };
    let backward = rows_of(txn.get_range(&t, &reverse).unwrap());
    assert_eq!(
        backward,
        s(&[("f", &["x"]), ("c", &["x", "z"]), ("a", &["x"])])
    );
    let bounded = RangeRequest {
        rows: RowRange::new("b", "f"),
        columns: ColumnSelection::only([b"z".to_vec()]),
        reverse: false,
    };
    assert_eq!(
        rows_of(txn.get_range(&t, &bounded).unwrap()),
        s(&[("c", &["z"])])
    );
    drop(pending);
}

pub fn range_scan_streams_many_rows_in_both_directions(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    for chunk in 0..5u32 {
        m.run(|txn| {
            for i in chunk * 200..(chunk + 1) * 200 {
                txn.put(
                    &t,
                    &ortelius_kvs::Cell::new(i.to_be_bytes(), "v").unwrap(),
                    i.to_be_bytes(),
                )?;
            }
            Ok(())
        })
        .unwrap();
    }
    let txn = m.begin_read_only().unwrap();
    let rows: Vec<u32> = txn
        .get_range(&t, &RangeRequest::all())
        .unwrap()
        .map(|r| u32::from_be_bytes(r.unwrap().row.try_into().unwrap()))
        .collect();
    assert_eq!(rows, (0..1000).collect::<Vec<_>>());
    let reverse = RangeRequest {
        reverse: true,
        ..RangeRequest::all()
    };
    let first_three: Vec<u32> = txn
        .get_range(&t, &reverse)
        .unwrap()
        .take(3)
        .map(|r| u32::from_be_bytes(r.unwrap().row.try_into().unwrap()))
        .collect();
    assert_eq!(first_three, vec![999, 998, 997]);
}

pub fn get_rows_and_column_ranges_include_own_writes(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    m.run(|txn| {
        for col in ["a", "b", "c", "d"] {
            txn.put(&t, &cell("r", col), col.as_bytes().to_vec())?;
        }
        Ok(())
    })
    .unwrap();
    let txn = m.begin(Isolation::Snapshot).unwrap();
    txn.put(&t, &cell("r", "bb"), b"mine".to_vec()).unwrap();
    txn.delete(&t, &cell("r", "c")).unwrap();
    let cols: Vec<String> = txn
        .get_column_range(&t, b"r", &ColumnRange::new("b", "d"))
        .unwrap()
        .into_iter()
        .map(|(c, _)| String::from_utf8_lossy(c.column()).into_owned())
        .collect();
    assert_eq!(cols, ["b", "bb"]);
    let rows = txn
        .get_rows(
            &t,
            &[b"r".to_vec()],
            &ColumnSelection::only([b"a".to_vec(), b"bb".to_vec(), b"c".to_vec()]),
        )
        .unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[&cell("r", "bb")], b"mine");
}

pub fn sweep_sentinel_read_is_retriable_and_orphaned_sentinel_is_ignored(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let old_reader = m.begin_read_only().unwrap();
    put_u64(&m, &t, &cell("a", "x"), 1);
    // What conservative sweep leaves: the newest committed version and a sentinel below it.
    m.kvs()
        .add_garbage_collection_sentinel_values(&t, &[cell("a", "x")])
        .unwrap();
    let err = read_u64(&old_reader, &t, &cell("a", "x")).unwrap_err();
    assert!(matches!(err, TxnError::SweepSentinel { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Retriable);
    // An orphaned sentinel (nothing committed above it) reads as absent.
    m.kvs()
        .put_with_timestamps(&t, &[(cell("b", "x"), Value::new("", SWEEP_SENTINEL_TS))])
        .unwrap();
    let fresh = m.begin_read_only().unwrap();
    assert_eq!(read_u64(&fresh, &t, &cell("b", "x")).unwrap(), None);
    assert_eq!(read_u64(&fresh, &t, &cell("a", "x")).unwrap(), Some(1));
}

pub fn immutable_timestamp_lies_below_running_transactions(store: &Store) {
    let m = manager(store);
    let before = m.fresh_timestamp().unwrap();
    let txn = m.begin(Isolation::Snapshot).unwrap();
    let immutable = m.immutable_timestamp().unwrap();
    let after = m.fresh_timestamp().unwrap();
    assert!(before < immutable && immutable < txn.start_ts() && txn.start_ts() < after);
    txn.commit().unwrap();
    assert!(
        m.immutable_timestamp().unwrap() > txn.start_ts(),
        "released at the end"
    );
}

pub fn read_only_transactions_refuse_writes(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let ro = m.begin_read_only().unwrap();
    assert!(matches!(
        ro.put(&t, &cell("a", "x"), b"v".to_vec()),
        Err(TxnError::WriteInReadOnly { .. })
    ));
    assert!(matches!(
        ro.delete(&t, &cell("a", "x")),
        Err(TxnError::WriteInReadOnly { .. })
    ));
}

pub fn bad_writes_are_refused(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let txn = m.begin(Isolation::Snapshot).unwrap();
    assert!(matches!(
        txn.put(&t, &cell("a", "x"), Vec::new()),
        Err(TxnError::EmptyValue { .. })
    ));
    let sys = TableRef::system("_transactions").unwrap();
    assert!(matches!(
        txn.put(&sys, &cell("a", "x"), b"v".to_vec()),
        Err(TxnError::SystemTable { .. })
    ));
    assert!(matches!(
        txn.get_one(&sys, &cell("a", "x")),
        Err(TxnError::SystemTable { .. })
    ));
    let missing = TableRef::new("test", "missing").unwrap();
    assert!(matches!(
        txn.put(&missing, &cell("a", "x"), b"v".to_vec()),
        Err(TxnError::Store(e)) if matches!(*e, KvsError::TableNotFound { .. })
    ));
    assert!(matches!(
        m.create_table(&sys, Default::default()),
        Err(TxnError::SystemTable { .. })
    ));
    txn.commit().unwrap();
}

pub fn closed_transactions_refuse_use(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let txn = m.begin(Isolation::Snapshot).unwrap();
    txn.commit().unwrap();
    assert!(matches!(
        txn.get_one(&t, &cell("a", "x")),
        Err(TxnError::NotOpen { state: "committed" })
    ));
    assert!(matches!(txn.commit(), Err(TxnError::NotOpen { .. })));
    let aborted = m.begin(Isolation::Snapshot).unwrap();
    aborted.put(&t, &cell("a", "x"), b"v".to_vec()).unwrap();
    aborted.abort();
    assert!(matches!(
        aborted.put(&t, &cell("a", "x"), b"v".to_vec()),
        Err(TxnError::NotOpen { state: "aborted" })
    ));
    assert_eq!(
        m.begin_read_only()
            .unwrap()
            .get_one(&t, &cell("a", "x"))
            .unwrap(),
        None
    );
}

pub fn transaction_rolled_back_by_another_fails_to_commit(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let txn = m.begin(Isolation::Snapshot).unwrap();
    txn.put(&t, &cell("a", "x"), b"v".to_vec()).unwrap();
    // Another party decides first (a reader that found our data and our locks gone).
    m.transactions_table()
        .put_unless_exists(txn.start_ts(), TxnStatus::Aborted)
        .unwrap();
    let err = txn.commit().unwrap_err();
    assert!(matches!(err, TxnError::RolledBackByOther { .. }), "{err}");
    assert_eq!(err.retry_class(), RetryClass::Retriable);
    assert_eq!(
        m.begin_read_only()
            .unwrap()
            .get_one(&t, &cell("a", "x"))
            .unwrap(),
        None
    );
}

/// Two on-call doctors: each transaction checks that at least one stays on call, then takes
/// itself off. Returns the two commit results.
fn doctors(store: &Store, isolation: Isolation, handler: ConflictHandler) -> (bool, bool) {
    let m = manager(store);
    let t = table(&m, &format!("doctors_{handler:?}").to_lowercase(), handler);
    put_u64(&m, &t, &cell("alice", "on_call"), 1);
    put_u64(&m, &t, &cell("bob", "on_call"), 1);
    let a = m.begin(isolation).unwrap();
    let b = m.begin(isolation).unwrap();
    for (txn, me) in [(&a, "alice"), (&b, "bob")] {
        let on_call: u64 = [cell("alice", "on_call"), cell("bob", "on_call")]
            .iter()
            .map(|c| read_u64(txn, &t, c).unwrap().unwrap())
            .sum();
        assert_eq!(on_call, 2);
        txn.put(&t, &cell(me, "on_call"), 0u64.to_be_bytes())
            .unwrap();
    }
    (
        a.commit().is_ok(),
        b.commit()
            .map_err(|e| assert!(matches!(e, TxnError::SerializableConflict { .. }), "{e}"))
            .is_ok(),
    )
}

pub fn write_skew_is_possible_under_snapshot_isolation(store: &Store) {
    assert_eq!(
        doctors(
            store,
            Isolation::Snapshot,
            ConflictHandler::RetryOnWriteWrite
        ),
        (true, true),
        "both left: write skew"
    );
}

pub fn write_skew_is_refused_under_serializable(store: &Store) {
    assert_eq!(
        doctors(
            store,
            Isolation::Serializable,
            ConflictHandler::RetryOnWriteWrite
        ),
        (true, false)
    );
}

pub fn serializable_table_validates_reads_without_serializable_mode(store: &Store) {
    assert_eq!(
        doctors(store, Isolation::Snapshot, ConflictHandler::Serializable),
        (true, false)
    );
    assert_eq!(
        doctors(
            store,
            Isolation::Snapshot,
            ConflictHandler::SerializableCell
        ),
        (true, false)
    );
}

pub fn phantom_row_in_scanned_range_fails_serializable_commit(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let log = table(&m, "log", ConflictHandler::RetryOnWriteWrite);
    let scanner = m.begin(Isolation::Serializable).unwrap();
    assert_eq!(
        scanner.get_range(&t, &RangeRequest::all()).unwrap().count(),
        0
    );
    scanner
        .put(&log, &cell("count", "n"), 0u64.to_be_bytes())
        .unwrap();
    put_u64(&m, &t, &cell("new", "x"), 1);
    let err = scanner.commit().unwrap_err();
    assert!(
        matches!(err, TxnError::SerializableConflict { .. }),
        "{err}"
    );
    // A concurrent commit elsewhere (another table) does not disturb the scanned range.
    let again = m.begin(Isolation::Serializable).unwrap();
    assert_eq!(
        again.get_range(&t, &RangeRequest::all()).unwrap().count(),
        1
    );
    again
        .put(&log, &cell("count", "n"), 1u64.to_be_bytes())
        .unwrap();
    let unrelated = table(&m, "unrelated", ConflictHandler::RetryOnWriteWrite);
    put_u64(&m, &unrelated, &cell("z", "z"), 1);
    again.commit().unwrap();
}

pub fn read_only_serializable_transactions_never_conflict(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::Serializable);
    put_u64(&m, &t, &cell("a", "x"), 1);
    let reader = m.begin(Isolation::Serializable).unwrap();
    assert_eq!(read_u64(&reader, &t, &cell("a", "x")).unwrap(), Some(1));
    put_u64(&m, &t, &cell("a", "x"), 2);
    reader.commit().unwrap();
}

pub fn runner_retries_conflicts_and_not_application_errors(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    let mut attempts = 0;
    m.run(|txn| {
        attempts += 1;
        let v = read_u64(txn, &t, &cell("a", "x"))?.unwrap_or(0);
        if attempts == 1 {
            put_u64(&m, &t, &cell("a", "x"), 100); // a concurrent commit: this attempt must fail
        }
        txn.put(&t, &cell("a", "x"), (v + 1).to_be_bytes())
    })
    .unwrap();
    assert_eq!(attempts, 2);
    assert_eq!(
        read_u64(&m.begin_read_only().unwrap(), &t, &cell("a", "x")).unwrap(),
        Some(101)
    );
    let mut calls = 0;
    let err = m
        .run(|_| -> crate::TxnResult<()> {
            calls += 1;
            Err(TxnError::application("insufficient funds"))
        })
        .unwrap_err();
    assert_eq!((calls, err.retry_class()), (1, RetryClass::NotRetriable));
    let budget = crate::TransactionConfig {
        max_retries: 3,
        ..super::common::config()
    };
    // One allocator per store at a time (a shared store refuses a second one).
    drop(m);
    let m = crate::TransactionManager::embedded(store.kvs.clone(), budget.clone()).unwrap();
    let mut tries = 0u32;
    let err = m
        .run(|_| {
            tries += 1;
            Err::<(), _>(TxnError::WriteWriteConflict {
                table: t.clone(),
                cell: cell("a", "x"),
                their_start_ts: 0,
                their_commit_ts: None,
            })
        })
        .unwrap_err();
    assert!(matches!(err, TxnError::RetriesExhausted { .. }));
    assert_eq!(tries, budget.max_retries + 1);
}

pub fn cleaning_transactions_from_a_backup_timestamp_hides_exactly_later_commits(store: &Store) {
    let m = manager(store);
    let t = table(&m, "t", ConflictHandler::RetryOnWriteWrite);
    put_u64(&m, &t, &cell("before", "x"), 1);
    // Starts before the backup timestamp, commits after it.
    let straddler = m.begin(Isolation::Snapshot).unwrap();
    straddler
        .put(&t, &cell("straddler", "x"), 2u64.to_be_bytes())
        .unwrap();
    let aborted = abandoned_write(&m, &t, &cell("aborted", "x"), &3u64.to_be_bytes());
    m.transactions_table()
        .put_unless_exists(aborted, TxnStatus::Aborted)
        .unwrap();
    let backup_ts = m.fresh_timestamp().unwrap();
    straddler.commit().unwrap();
    put_u64(&m, &t, &cell("after", "x"), 4);
    let mut progress_calls = 0;
    let report = m
        .transactions_table()
        .clean_from(backup_ts, |_| progress_calls += 1)
        .unwrap();
    assert_eq!(report.deleted, 2, "the straddler and the later commit");
    assert!(report.scanned >= 4 && progress_calls >= 1);
    assert_eq!(
        m.transactions_table()
            .load_uncached(&[aborted])
            .unwrap()
            .get(&aborted),
        Some(&TxnStatus::Aborted),
        "aborted entries are kept"
    );
    let ro = m.begin_read_only().unwrap();
    assert_eq!(read_u64(&ro, &t, &cell("before", "x")).unwrap(), Some(1));
    for gone in ["straddler", "after", "aborted"] {
        assert_eq!(read_u64(&ro, &t, &cell(gone, "x")).unwrap(), None, "{gone}");
    }
    // Idempotent.
    assert_eq!(
        m.transactions_table()
            .clean_from(backup_ts, |_| {})
            .unwrap()
            .deleted,
        0
    );
}
