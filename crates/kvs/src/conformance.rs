//! The conformance suite: one set of tests, written against [`KeyValueService`], that every
//! backend runs under the same names (compare AtlasDB's `AbstractKeyValueServiceTest`).
//!
//! A backend crate runs it with
//! `ortelius_kvs::kvs_conformance_tests!(make_store());` in an integration test, where
//! `make_store()` returns something that dereferences to the backend (and keeps any temporary
//! directory alive). Test-support code: assertions and `unwrap` are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Barrier;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::{
    CandidateCellsRequest, Cell, CheckAndSetRequest, ColumnRange, ColumnSelection, KeyValueService,
    KvsError, RangeRequest, RowRange, RowResult, TableRef, Timestamp, TimestampRangeDelete, Value,
    ATOMIC_TS, MAX_NAME_LENGTH, MAX_READ_TS, SWEEP_SENTINEL_TS,
};

/// Generates one `#[test]` per conformance test, named like the test, for a backend.
#[macro_export]
macro_rules! kvs_conformance_tests {
    ($factory:expr) => {
        $crate::kvs_conformance_tests!(@each $factory;
            get_returns_latest_version_strictly_below_bound,
            get_of_absent_cell_is_absent,
            get_rows_honours_column_selection,
            get_range_returns_rows_in_order_with_bounds,
            get_range_reverse_returns_rows_descending_columns_ascending,
            get_range_applies_column_selection_and_skips_empty_rows,
            get_range_reads_historical_versions,
            get_range_streams_many_rows_in_order,
            get_range_keeps_the_newest_of_many_versions_across_pages,
            scan_range_stops_when_the_visitor_breaks,
            get_rows_column_range_keeps_caller_row_order,
            get_latest_timestamps_returns_version_timestamps,
            get_all_timestamps_lists_versions_below_bound,
            rows_and_columns_that_prefix_each_other_stay_distinct,
            names_with_zero_and_ff_bytes_and_maximum_length_round_trip,
            list_tables_and_metadata_round_trip,
            create_table_is_idempotent_and_keeps_data,
            drop_table_erases_data_and_metadata_and_is_idempotent,
            same_name_in_different_namespaces_is_isolated,
            truncate_removes_data_but_keeps_table,
            operations_on_missing_table_fail_with_table_not_found,
            put_of_identical_value_is_fine_different_value_fails_and_writes_nothing,
            put_with_timestamps_writes_each_version,
            multi_put_writes_several_tables_or_nothing,
            multi_put_reading_latest_answers_the_newest_versions_before_its_write,
            empty_value_is_a_visible_tombstone,
            delete_removes_exact_versions_and_older_ones_reappear,
            delete_range_honours_start_inclusive_end_exclusive,
            delete_all_timestamps_keeps_versions_at_or_above_bound,
            delete_all_timestamps_removes_sentinels_only_when_asked,
            sentinel_is_added_once_and_visible_only_below_real_versions,
            put_unless_exists_is_per_cell,
            put_unless_exists_conflicts_on_any_existing_cell_and_writes_nothing,
            put_unless_exists_race_has_exactly_one_winner,
            check_and_set_truth_table,
            check_and_set_race_has_exactly_one_winner,
            atomic_values_can_be_deleted_and_written_again,
            candidate_cells_report_versions_below_bound,
            candidate_cells_page_through_a_large_table,
            out_of_range_timestamps_are_rejected_and_write_nothing,
            returned_values_are_copies,
            random_operations_match_reference_model,
        );
    };
    (@each $factory:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let store = $factory;
                $crate::conformance::$name(&*store);
            }
        )*
    };
}

fn cell(row: &str, col: &str) -> Cell {
    Cell::new(row.as_bytes(), col.as_bytes()).unwrap()
}

fn table<K: KeyValueService + ?Sized>(kvs: &K, name: &str) -> TableRef {
    let t = TableRef::new("test", name).unwrap();
    kvs.create_table(&t, b"meta").unwrap();
    t
}

fn put<K: KeyValueService + ?Sized>(kvs: &K, t: &TableRef, c: &Cell, v: &str, ts: Timestamp) {
    kvs.put(t, &[(c.clone(), v.as_bytes().to_vec())], ts)
        .unwrap();
}

fn get<K: KeyValueService + ?Sized>(
    kvs: &K,
    t: &TableRef,
    c: &Cell,
    ts: Timestamp,
) -> Option<Value> {
    let got = kvs.get(t, &[(c.clone(), ts)]).unwrap().remove(c);
    assert_eq!(
        kvs.get_one(t, c, ts).unwrap(),
        got,
        "get_one answers as get does"
    );
    got
}

fn val(s: &str, ts: Timestamp) -> Option<Value> {
    Some(Value::new(s.as_bytes(), ts))
}

/// The rows of `get_range`, checked against the same read through `scan_range`.
fn range<K: KeyValueService + ?Sized>(
    kvs: &K,
    t: &TableRef,
    req: &RangeRequest,
    ts: Timestamp,
) -> Vec<RowResult> {
    let rows = kvs
        .get_range(t, req, ts)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    assert_eq!(
        scanned(kvs, t, req, ts, usize::MAX),
        flatten(&rows),
        "{req:?}"
    );
    rows
}

/// Every cell of `rows` as (row, column, value), in order.
fn flatten(rows: &[RowResult]) -> Vec<(Vec<u8>, Vec<u8>, Value)> {
    rows.iter()
        .flat_map(|r| {
            r.columns
                .iter()
                .map(|(c, v)| (r.row.clone(), c.clone(), v.clone()))
        })
        .collect()
}

/// The first `limit` cells `scan_range` hands its visitor (it stops the scan at the limit).
fn scanned<K: KeyValueService + ?Sized>(
    kvs: &K,
    t: &TableRef,
    req: &RangeRequest,
    ts: Timestamp,
    limit: usize,
) -> Vec<(Vec<u8>, Vec<u8>, Value)> {
    let mut cells = Vec::new();
    let mut visits = 0;
    kvs.scan_range(t, req, ts, &mut |c| {
        visits += 1;
        assert!(cells.len() < limit, "visited after Break");
        cells.push((
            c.row.to_vec(),
            c.column.to_vec(),
            Value::new(c.contents, c.timestamp),
        ));
        if cells.len() == limit {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .unwrap();
    assert_eq!(visits, cells.len());
    cells
}

fn row_names(rows: &[RowResult]) -> Vec<String> {
    rows.iter()
        .map(|r| String::from_utf8_lossy(&r.row).into_owned())
        .collect()
}

pub fn get_returns_latest_version_strictly_below_bound<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    put(kvs, &t, &c, "v1", 1);
    put(kvs, &t, &c, "v5", 5);
    put(kvs, &t, &c, "v9", 9);
    assert_eq!(get(kvs, &t, &c, 1), None, "bound is exclusive");
    assert_eq!(get(kvs, &t, &c, 2), val("v1", 1));
    assert_eq!(get(kvs, &t, &c, 5), val("v1", 1), "bound is exclusive");
    assert_eq!(get(kvs, &t, &c, 6), val("v5", 5));
    assert_eq!(get(kvs, &t, &c, 9), val("v5", 5));
    assert_eq!(get(kvs, &t, &c, 10), val("v9", 9));
    assert_eq!(get(kvs, &t, &c, MAX_READ_TS), val("v9", 9));
    // Several cells with their own bounds in one call.
    let d = cell("r", "d");
    put(kvs, &t, &d, "d3", 3);
    let got = kvs.get(&t, &[(c.clone(), 6), (d.clone(), 3)]).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got.get(&c), val("v5", 5).as_ref());
}

pub fn get_of_absent_cell_is_absent<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    put(kvs, &t, &cell("r", "c"), "v", 3);
    assert!(kvs
        .get(&t, &[(cell("r", "x"), 10), (cell("q", "c"), 10)])
        .unwrap()
        .is_empty());
    assert!(kvs.get(&t, &[]).unwrap().is_empty());
}

pub fn get_rows_honours_column_selection<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    for row in ["r1", "r2", "r3"] {
        for col in ["a", "b", "c"] {
            put(kvs, &t, &cell(row, col), &format!("{row}{col}"), 2);
        }
    }
    put(kvs, &t, &cell("r1", "a"), "newer", 7);
    let rows = vec![b"r1".to_vec(), b"r3".to_vec(), b"absent".to_vec()];
    let all = kvs.get_rows(&t, &rows, &ColumnSelection::All, 5).unwrap();
    assert_eq!(all.len(), 6);
    assert_eq!(all.get(&cell("r1", "a")), val("r1a", 2).as_ref());
    let some = kvs
        .get_rows(
            &t,
            &rows,
            &ColumnSelection::only([b"a".to_vec(), b"c".to_vec()]),
            8,
        )
        .unwrap();
    assert_eq!(
        some.keys().cloned().collect::<Vec<_>>(),
        vec![
            cell("r1", "a"),
            cell("r1", "c"),
            cell("r3", "a"),
            cell("r3", "c")
        ]
    );
    assert_eq!(some.get(&cell("r1", "a")), val("newer", 7).as_ref());
}

fn fill_rows<K: KeyValueService + ?Sized>(kvs: &K, t: &TableRef, rows: &[&str], cols: &[&str]) {
    for row in rows {
        for col in cols {
            put(kvs, t, &cell(row, col), &format!("{row}/{col}"), 1);
        }
    }
}

pub fn get_range_returns_rows_in_order_with_bounds<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    fill_rows(kvs, &t, &["d", "a", "c", "b", "e"], &["x", "y"]);
    let all = range(kvs, &t, &RangeRequest::all(), 2);
    assert_eq!(row_names(&all), ["a", "b", "c", "d", "e"]);
    assert_eq!(all[0].columns.len(), 2);
    let mid = range(kvs, &t, &RangeRequest::rows(RowRange::new("b", "d")), 2);
    assert_eq!(
        row_names(&mid),
        ["b", "c"],
        "start inclusive, end exclusive"
    );
    let from = range(kvs, &t, &RangeRequest::rows(RowRange::new("c", "")), 2);
    assert_eq!(row_names(&from), ["c", "d", "e"]);
    let to = range(kvs, &t, &RangeRequest::rows(RowRange::new("", "b")), 2);
    assert_eq!(row_names(&to), ["a"]);
    let between = range(kvs, &t, &RangeRequest::rows(RowRange::new("bb", "bc")), 2);
    assert!(between.is_empty());
    assert!(
        range(kvs, &t, &RangeRequest::all(), 1).is_empty(),
        "nothing below ts 1"
    );
}

pub fn get_range_reverse_returns_rows_descending_columns_ascending<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    fill_rows(kvs, &t, &["a", "b", "c", "d"], &["z", "m", "a"]);
    let req = RangeRequest {
        rows: RowRange::new("b", "d"),
        reverse: true,
        ..RangeRequest::default()
    };
    let rows = range(kvs, &t, &req, 5);
    assert_eq!(row_names(&rows), ["c", "b"]);
    let cols: Vec<Vec<u8>> = rows[0].columns.keys().cloned().collect();
    assert_eq!(cols, vec![b"a".to_vec(), b"m".to_vec(), b"z".to_vec()]);
    let all_rev = RangeRequest {
        reverse: true,
        ..RangeRequest::default()
    };
    assert_eq!(
        row_names(&range(kvs, &t, &all_rev, 5)),
        ["d", "c", "b", "a"]
    );
}

pub fn get_range_applies_column_selection_and_skips_empty_rows<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    fill_rows(kvs, &t, &["a", "c"], &["x", "y"]);
    put(kvs, &t, &cell("b", "y"), "only y", 1);
    let req = RangeRequest {
        columns: ColumnSelection::only([b"x".to_vec()]),
        ..RangeRequest::default()
    };
    let rows = range(kvs, &t, &req, 5);
    assert_eq!(row_names(&rows), ["a", "c"], "row b has no selected column");
    assert!(rows
        .iter()
        .all(|r| r.columns.keys().eq([b"x".to_vec()].iter())));
}

pub fn get_range_reads_historical_versions<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    put(kvs, &t, &cell("a", "x"), "a1", 1);
    put(kvs, &t, &cell("a", "x"), "a5", 5);
    put(kvs, &t, &cell("b", "x"), "b7", 7);
    let at3 = range(kvs, &t, &RangeRequest::all(), 3);
    assert_eq!(row_names(&at3), ["a"]);
    assert_eq!(at3[0].columns.get(b"x".as_slice()), val("a1", 1).as_ref());
    let at8 = range(kvs, &t, &RangeRequest::all(), 8);
    assert_eq!(row_names(&at8), ["a", "b"]);
    assert_eq!(at8[0].columns.get(b"x".as_slice()), val("a5", 5).as_ref());
}

/// Rows 0..1500 (big-endian u32 names), each with cells `a` and `b`, at ts 3.
fn fill_1500_rows_of_two_cells<K: KeyValueService + ?Sized>(kvs: &K, t: &TableRef) {
    let writes: Vec<(Cell, Vec<u8>)> = (0..1500u32)
        .flat_map(|i| {
            [
                (Cell::new(i.to_be_bytes(), "a").unwrap(), vec![1]),
                (Cell::new(i.to_be_bytes(), "b").unwrap(), vec![2]),
            ]
        })
        .collect();
    kvs.put(t, &writes, 3).unwrap();
}

pub fn get_range_streams_many_rows_in_order<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    fill_1500_rows_of_two_cells(kvs, &t);
    let mut it = kvs.get_range(&t, &RangeRequest::all(), 4).unwrap();
    let first = it.next().unwrap().unwrap();
    assert_eq!(first.row, 0u32.to_be_bytes());
    let rest: Vec<RowResult> = it.collect::<Result<_, _>>().unwrap();
    assert_eq!(rest.len(), 1499);
    assert!(rest.windows(2).all(|w| w[0].row < w[1].row));
    assert!(rest.iter().all(|r| r.columns.len() == 2));
    let rev = RangeRequest {
        reverse: true,
        ..RangeRequest::default()
    };
    let back = range(kvs, &t, &rev, 4);
    assert_eq!(back.len(), 1500);
    assert!(back.windows(2).all(|w| w[0].row > w[1].row));
}

/// One cell with more versions than a backend is likely to fetch in one page, between two
/// other rows: a scan shows only its newest version below the bound, in both directions.
pub fn get_range_keeps_the_newest_of_many_versions_across_pages<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    put(kvs, &t, &cell("a", "x"), "a", 1);
    put(kvs, &t, &cell("z", "x"), "z", 1);
    let versions: Vec<(Cell, Value)> = (1..=2500)
        .map(|ts| (cell("m", "x"), Value::new(format!("m{ts}"), ts)))
        .collect();
    for chunk in versions.chunks(100) {
        kvs.put_with_timestamps(&t, chunk).unwrap();
    }
    for bound in [2, 1500, 2501, 9000] {
        for reverse in [false, true] {
            let request = RangeRequest {
                reverse,
                ..RangeRequest::default()
            };
            let rows = range(kvs, &t, &request, bound);
            let newest = (bound - 1).min(2500);
            let expected = if reverse {
                ["z", "m", "a"]
            } else {
                ["a", "m", "z"]
            };
            assert_eq!(
                row_names(&rows),
                expected,
                "bound {bound}, reverse {reverse}"
            );
            assert_eq!(
                rows[1].columns.get(b"x".as_slice()),
                val(&format!("m{newest}"), newest).as_ref(),
                "bound {bound}, reverse {reverse}"
            );
        }
    }
}

/// `scan_range` stops where its visitor says, mid-row too, in both directions.
pub fn scan_range_stops_when_the_visitor_breaks<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    fill_1500_rows_of_two_cells(kvs, &t);
    for reverse in [false, true] {
        let request = RangeRequest {
            reverse,
            ..RangeRequest::default()
        };
        let all = flatten(&range(kvs, &t, &request, 4));
        assert_eq!(all.len(), 3000);
        for limit in [1, 2, 3, 1001, 2999] {
            assert_eq!(
                scanned(kvs, &t, &request, 4, limit),
                all[..limit],
                "limit {limit}, reverse {reverse}"
            );
        }
    }
    let missing = TableRef::new("test", "missing").unwrap();
    let r = kvs.scan_range(&missing, &RangeRequest::all(), 4, &mut |_| {
        panic!("visited a missing table")
    });
    assert!(matches!(r, Err(KvsError::TableNotFound { .. })), "{r:?}");
}

pub fn get_rows_column_range_keeps_caller_row_order<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    fill_rows(kvs, &t, &["r1", "r2"], &["a", "b", "c", "d"]);
    put(kvs, &t, &cell("r2", "b"), "late", 9);
    let rows = vec![b"r2".to_vec(), b"absent".to_vec(), b"r1".to_vec()];
    let got: Vec<(Cell, Value)> = kvs
        .get_rows_column_range(&t, &rows, &ColumnRange::new("b", "d"), 5)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let cells: Vec<Cell> = got.iter().map(|(c, _)| c.clone()).collect();
    assert_eq!(
        cells,
        vec![
            cell("r2", "b"),
            cell("r2", "c"),
            cell("r1", "b"),
            cell("r1", "c")
        ]
    );
    assert_eq!(got[0].1, Value::new("r2/b", 1), "version below the bound");
    let open: Vec<_> = kvs
        .get_rows_column_range(&t, &rows[2..], &ColumnRange::new("c", ""), 10)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(open.len(), 2);
}

pub fn get_latest_timestamps_returns_version_timestamps<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    put(kvs, &t, &c, "a", 3);
    put(kvs, &t, &c, "b", 8);
    let got = kvs
        .get_latest_timestamps(&t, &[(c.clone(), 8), (cell("r", "x"), 8)])
        .unwrap();
    assert_eq!(got, BTreeMap::from([(c.clone(), 3)]));
    assert_eq!(
        kvs.get_latest_timestamps(&t, &[(c.clone(), MAX_READ_TS)])
            .unwrap()[&c],
        8
    );
}

pub fn get_all_timestamps_lists_versions_below_bound<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    for ts in [4, 2, 9] {
        put(kvs, &t, &c, "v", ts);
    }
    kvs.add_garbage_collection_sentinel_values(&t, std::slice::from_ref(&c))
        .unwrap();
    let all = kvs
        .get_all_timestamps(&t, &[c.clone(), cell("r", "x")], 9)
        .unwrap();
    assert_eq!(all, BTreeMap::from([(c.clone(), vec![-1, 2, 4])]));
    let more = kvs
        .get_all_timestamps(&t, std::slice::from_ref(&c), 10)
        .unwrap();
    assert_eq!(more[&c], vec![-1, 2, 4, 9]);
}

pub fn rows_and_columns_that_prefix_each_other_stay_distinct<K: KeyValueService + ?Sized>(kvs: &K) {
    // Encodings that concatenate row and column must keep these apart and in order.
    let t = table(kvs, "t");
    let cells = [
        Cell::new(b"a".to_vec(), b"bc".to_vec()).unwrap(),
        Cell::new(b"ab".to_vec(), b"c".to_vec()).unwrap(),
        Cell::new(b"a\0".to_vec(), b"c".to_vec()).unwrap(),
        Cell::new(b"a".to_vec(), b"b\0c".to_vec()).unwrap(),
        Cell::new(b"a".to_vec(), b"b".to_vec()).unwrap(),
    ];
    for (i, c) in cells.iter().enumerate() {
        kvs.put(&t, &[(c.clone(), vec![i as u8])], 5).unwrap();
    }
    for (i, c) in cells.iter().enumerate() {
        assert_eq!(
            get(kvs, &t, c, 6),
            Some(Value::new(vec![i as u8], 5)),
            "{c}"
        );
    }
    let rows = range(kvs, &t, &RangeRequest::all(), 6);
    assert_eq!(
        rows.iter().map(|r| r.row.clone()).collect::<Vec<_>>(),
        vec![b"a".to_vec(), b"a\0".to_vec(), b"ab".to_vec()]
    );
    assert_eq!(
        rows[0].columns.keys().cloned().collect::<Vec<_>>(),
        vec![b"b".to_vec(), b"b\0c".to_vec(), b"bc".to_vec()]
    );
    let only_a = kvs
        .get_rows(&t, &[b"a".to_vec()], &ColumnSelection::All, 6)
        .unwrap();
    assert_eq!(only_a.len(), 3);
    let in_range = range(kvs, &t, &RangeRequest::rows(RowRange::new("a", "a\0")), 6);
    assert_eq!(row_names(&in_range), ["a"]);
}

pub fn names_with_zero_and_ff_bytes_and_maximum_length_round_trip<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let odd = [
        Cell::new(vec![0u8], vec![0u8]).unwrap(),
        Cell::new(vec![0u8, 0], vec![0xff]).unwrap(),
        Cell::new(vec![0xff; 3], vec![0, 1, 0]).unwrap(),
        Cell::new(vec![7u8; MAX_NAME_LENGTH], vec![9u8; MAX_NAME_LENGTH]).unwrap(),
    ];
    for (i, c) in odd.iter().enumerate() {
        kvs.put(&t, &[(c.clone(), vec![i as u8; 3])], 1 + i as i64)
            .unwrap();
    }
    for (i, c) in odd.iter().enumerate() {
        assert_eq!(
            get(kvs, &t, c, MAX_READ_TS),
            Some(Value::new(vec![i as u8; 3], 1 + i as i64))
        );
    }
    let rows = range(kvs, &t, &RangeRequest::all(), MAX_READ_TS);
    let mut cells: Vec<(Vec<u8>, Vec<u8>)> = rows
        .iter()
        .flat_map(|r| r.columns.keys().map(|c| (r.row.clone(), c.clone())))
        .collect();
    cells.sort();
    let mut expected: Vec<(Vec<u8>, Vec<u8>)> = odd
        .iter()
        .map(|c| (c.row().to_vec(), c.column().to_vec()))
        .collect();
    expected.sort();
    assert_eq!(cells, expected, "names read back by a scan");
    assert!(Cell::new(vec![1u8; MAX_NAME_LENGTH + 1], "c").is_err());
}

pub fn list_tables_and_metadata_round_trip<K: KeyValueService + ?Sized>(kvs: &K) {
    let a = TableRef::new("ns", "alpha").unwrap();
    let b = TableRef::system("_beta").unwrap();
    kvs.create_table(&a, b"meta-a").unwrap();
    kvs.create_table(&b, b"").unwrap();
    let tables = kvs.list_tables().unwrap();
    assert!(tables.contains(&a) && tables.contains(&b));
    assert_eq!(kvs.table_metadata(&a).unwrap(), b"meta-a");
    assert_eq!(kvs.table_metadata(&b).unwrap(), b"");
    kvs.put_table_metadata(&a, b"meta-2").unwrap();
    assert_eq!(kvs.table_metadata(&a).unwrap(), b"meta-2");
}

pub fn create_table_is_idempotent_and_keeps_data<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    put(kvs, &t, &cell("r", "c"), "v", 1);
    kvs.create_table(&t, b"meta-new").unwrap();
    assert_eq!(get(kvs, &t, &cell("r", "c"), 2), val("v", 1));
    assert_eq!(kvs.table_metadata(&t).unwrap(), b"meta-new");
    assert_eq!(
        kvs.list_tables()
            .unwrap()
            .iter()
            .filter(|x| **x == t)
            .count(),
        1
    );
}

pub fn drop_table_erases_data_and_metadata_and_is_idempotent<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let other = table(kvs, "other");
    put(kvs, &t, &cell("r", "c"), "v", 1);
    put(kvs, &other, &cell("r", "c"), "kept", 1);
    kvs.drop_table(&t).unwrap();
    kvs.drop_table(&t).unwrap();
    assert!(!kvs.list_tables().unwrap().contains(&t));
    assert!(matches!(
        kvs.table_metadata(&t),
        Err(KvsError::TableNotFound { .. })
    ));
    kvs.create_table(&t, b"").unwrap();
    assert_eq!(
        get(kvs, &t, &cell("r", "c"), 2),
        None,
        "recreated table starts empty"
    );
    assert_eq!(kvs.table_metadata(&t).unwrap(), b"");
    assert_eq!(get(kvs, &other, &cell("r", "c"), 2), val("kept", 1));
}

pub fn same_name_in_different_namespaces_is_isolated<K: KeyValueService + ?Sized>(kvs: &K) {
    let a = TableRef::new("one", "t").unwrap();
    let b = TableRef::new("two", "t").unwrap();
    kvs.create_table(&a, b"").unwrap();
    kvs.create_table(&b, b"").unwrap();
    put(kvs, &a, &cell("r", "c"), "in one", 1);
    assert_eq!(get(kvs, &b, &cell("r", "c"), 2), None);
    assert_eq!(get(kvs, &a, &cell("r", "c"), 2), val("in one", 1));
}

pub fn truncate_removes_data_but_keeps_table<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    put(kvs, &t, &cell("r", "c"), "v", 1);
    kvs.truncate_table(&t).unwrap();
    kvs.truncate_table(&t).unwrap();
    assert_eq!(get(kvs, &t, &cell("r", "c"), 2), None);
    assert_eq!(kvs.table_metadata(&t).unwrap(), b"meta");
    put(kvs, &t, &cell("r", "c"), "again", 1);
    assert_eq!(get(kvs, &t, &cell("r", "c"), 2), val("again", 1));
}

pub fn operations_on_missing_table_fail_with_table_not_found<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = TableRef::new("test", "missing").unwrap();
    let c = cell("r", "c");
    let missing = |r: Result<(), KvsError>, what: &str| {
        assert!(
            matches!(r, Err(KvsError::TableNotFound { .. })),
            "{what}: {r:?}"
        );
    };
    missing(kvs.truncate_table(&t), "truncate");
    missing(kvs.put(&t, &[(c.clone(), b"v".to_vec())], 1), "put");
    missing(
        kvs.put_unless_exists(&t, &[(c.clone(), b"v".to_vec())]),
        "put_unless_exists",
    );
    missing(kvs.get(&t, &[(c.clone(), 1)]).map(drop), "get");
    missing(kvs.get_one(&t, &c, 1).map(drop), "get_one");
    missing(
        kvs.get_range(&t, &RangeRequest::all(), 1).map(drop),
        "get_range",
    );
    missing(kvs.delete(&t, &[(c.clone(), 1)]), "delete");
    missing(kvs.put_table_metadata(&t, b""), "put_table_metadata");
    assert!(
        !kvs.list_tables().unwrap().contains(&t),
        "nothing was created"
    );
}

pub fn put_of_identical_value_is_fine_different_value_fails_and_writes_nothing<
    K: KeyValueService + ?Sized,
>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    let other = cell("r", "other");
    put(kvs, &t, &c, "v", 4);
    put(kvs, &t, &c, "v", 4);
    let err = kvs
        .put(
            &t,
            &[
                (other.clone(), b"x".to_vec()),
                (c.clone(), b"different".to_vec()),
            ],
            4,
        )
        .unwrap_err();
    assert!(
        matches!(err, KvsError::ValueAlreadyWritten { timestamp: 4, .. }),
        "{err:?}"
    );
    assert_eq!(get(kvs, &t, &c, 5), val("v", 4));
    assert_eq!(get(kvs, &t, &other, 5), None, "failed batch wrote nothing");
    // The same for a put of one cell (backends may take a shorter path for it).
    let err = kvs
        .put(&t, &[(c.clone(), b"different".to_vec())], 4)
        .unwrap_err();
    assert!(
        matches!(err, KvsError::ValueAlreadyWritten { timestamp: 4, .. }),
        "{err:?}"
    );
    assert_eq!(get(kvs, &t, &c, 5), val("v", 4));
}

pub fn put_with_timestamps_writes_each_version<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    kvs.put_with_timestamps(
        &t,
        &[
            (c.clone(), Value::new("a", 2)),
            (c.clone(), Value::new("b", 6)),
            (cell("r", "d"), Value::new("", SWEEP_SENTINEL_TS)),
        ],
    )
    .unwrap();
    assert_eq!(get(kvs, &t, &c, 5), val("a", 2));
    assert_eq!(get(kvs, &t, &c, 7), val("b", 6));
    assert_eq!(get(kvs, &t, &cell("r", "d"), 0), val("", SWEEP_SENTINEL_TS));
}

pub fn multi_put_writes_several_tables_or_nothing<K: KeyValueService + ?Sized>(kvs: &K) {
    let a = table(kvs, "a");
    let b = table(kvs, "b");
    let c = cell("r", "c");
    kvs.multi_put(
        &[
            (a.clone(), vec![(c.clone(), b"in a".to_vec())]),
            (b.clone(), vec![(c.clone(), b"in b".to_vec())]),
        ],
        3,
    )
    .unwrap();
    assert_eq!(get(kvs, &a, &c, 4), val("in a", 3));
    assert_eq!(get(kvs, &b, &c, 4), val("in b", 3));
    let missing = TableRef::new("test", "missing").unwrap();
    let d = cell("r", "d");
    let err = kvs
        .multi_put(
            &[
                (a.clone(), vec![(d.clone(), b"x".to_vec())]),
                (missing, vec![(d.clone(), b"x".to_vec())]),
            ],
            3,
        )
        .unwrap_err();
    assert!(matches!(err, KvsError::TableNotFound { .. }));
    assert_eq!(
        get(kvs, &a, &d, 4),
        None,
        "nothing written when one table is missing"
    );
}

pub fn multi_put_reading_latest_answers_the_newest_versions_before_its_write<
    K: KeyValueService + ?Sized,
>(
    kvs: &K,
) {
    let a = table(kvs, "a");
    let b = table(kvs, "b");
    let (old, fresh, newer) = (cell("r", "old"), cell("r", "fresh"), cell("r", "newer"));
    put(kvs, &a, &old, "v", 3);
    put(kvs, &a, &newer, "v", 9);
    put(kvs, &b, &old, "v", 4);
    let w = |c: &Cell, v: &str| (c.clone(), v.as_bytes().to_vec());
    // Several cells of one table: versions below and above the write's ts, and none.
    let latest = kvs
        .multi_put_reading_latest(
            &[(
                a.clone(),
                vec![w(&old, "x"), w(&fresh, "y"), w(&newer, "z")],
            )],
            &[true],
            5,
        )
        .unwrap();
    assert_eq!(
        latest,
        vec![BTreeMap::from([(old.clone(), 3), (newer.clone(), 9)])]
    );
    assert_eq!(get(kvs, &a, &old, 6), val("x", 5));
    assert_eq!(get(kvs, &a, &fresh, 6), val("y", 5));
    assert_eq!(get(kvs, &a, &newer, 6), val("z", 5));
    // One cell (backends may take a shorter path). Written again at the same timestamp, the
    // answer is the version the first call wrote, or (a backend whose read may land after its
    // write) the version below it; never this call's own version.
    let again = || {
        kvs.multi_put_reading_latest(&[(a.clone(), vec![w(&old, "o")])], &[true], 7)
            .unwrap()
    };
    assert_eq!(again(), vec![BTreeMap::from([(old.clone(), 5)])]);
    let second = again();
    // A fresh cell: the answer never holds this write's own version, however the read and
    // the write interleave.
    for i in 0..50 {
        let own = cell("own", &i.to_string());
        let latest = kvs
            .multi_put_reading_latest(&[(a.clone(), vec![w(&own, "x")])], &[true], 20 + i)
            .unwrap();
        assert_eq!(latest, vec![BTreeMap::new()], "write {i}");
    }
    assert!(
        second == vec![BTreeMap::from([(old.clone(), 7)])]
            || second == vec![BTreeMap::from([(old.clone(), 5)])],
        "{second:?}"
    );
    assert_eq!(get(kvs, &a, &old, 8), val("o", 7));
    // Several tables; a table not asked for is not read.
    let latest = kvs
        .multi_put_reading_latest(
            &[
                (a.clone(), vec![w(&fresh, "q")]),
                (b.clone(), vec![w(&old, "q")]),
            ],
            &[false, true],
            8,
        )
        .unwrap();
    assert_eq!(
        latest,
        vec![BTreeMap::new(), BTreeMap::from([(old.clone(), 4)])]
    );
    assert_eq!(get(kvs, &a, &fresh, 9), val("q", 8));
    assert_eq!(get(kvs, &b, &old, 9), val("q", 8));
    // A missing table: nothing written.
    let m = cell("r", "m");
    let err = kvs
        .multi_put_reading_latest(
            &[
                (a.clone(), vec![w(&m, "x")]),
                (TableRef::new("test", "missing").unwrap(), vec![w(&m, "x")]),
            ],
            &[true, true],
            10,
        )
        .unwrap_err();
    assert!(matches!(err, KvsError::TableNotFound { .. }), "{err:?}");
    assert_eq!(get(kvs, &a, &m, 11), None, "nothing written");
}

pub fn empty_value_is_a_visible_tombstone<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    put(kvs, &t, &c, "v", 1);
    put(kvs, &t, &c, "", 2);
    assert_eq!(get(kvs, &t, &c, 3), val("", 2));
    assert_eq!(get(kvs, &t, &c, 2), val("v", 1));
    let rows = range(kvs, &t, &RangeRequest::all(), 3);
    assert_eq!(rows[0].columns.get(b"c".as_slice()), val("", 2).as_ref());
}

pub fn delete_removes_exact_versions_and_older_ones_reappear<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    for ts in [1, 2, 3] {
        put(kvs, &t, &c, &format!("v{ts}"), ts);
    }
    kvs.delete(&t, &[(c.clone(), 3), (c.clone(), 7), (cell("r", "x"), 1)])
        .unwrap();
    assert_eq!(get(kvs, &t, &c, 10), val("v2", 2));
    kvs.delete(&t, &[(c.clone(), 1), (c.clone(), 2)]).unwrap();
    assert_eq!(get(kvs, &t, &c, 10), None);
    assert!(range(kvs, &t, &RangeRequest::all(), 10).is_empty());
}

pub fn delete_range_honours_start_inclusive_end_exclusive<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    fill_rows(kvs, &t, &["a", "b", "c", "d"], &["x"]);
    put(kvs, &t, &cell("b", "x"), "b2", 2);
    kvs.delete_range(&t, &RowRange::new("b", "d")).unwrap();
    assert_eq!(
        row_names(&range(kvs, &t, &RangeRequest::all(), 5)),
        ["a", "d"]
    );
    kvs.delete_range(&t, &RowRange::new("x", "z")).unwrap();
    assert_eq!(
        row_names(&range(kvs, &t, &RangeRequest::all(), 5)),
        ["a", "d"]
    );
    kvs.delete_range(&t, &RowRange::all()).unwrap();
    assert!(range(kvs, &t, &RangeRequest::all(), 5).is_empty());
}

pub fn delete_all_timestamps_keeps_versions_at_or_above_bound<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    let d = cell("s", "d");
    for ts in [0, 1, 5, 6, 9] {
        put(kvs, &t, &c, &format!("c{ts}"), ts);
        put(kvs, &t, &d, &format!("d{ts}"), ts);
    }
    let exclusive = TimestampRangeDelete {
        timestamp: 6,
        end_inclusive: false,
        delete_sentinels: false,
    };
    let inclusive = TimestampRangeDelete {
        timestamp: 6,
        end_inclusive: true,
        delete_sentinels: false,
    };
    kvs.delete_all_timestamps(&t, &[(c.clone(), exclusive), (d.clone(), inclusive)])
        .unwrap();
    let all = kvs
        .get_all_timestamps(&t, &[c.clone(), d.clone()], MAX_READ_TS)
        .unwrap();
    assert_eq!(
        all[&c],
        vec![6, 9],
        "versions 0 and bound-1 removed, bound kept"
    );
    assert_eq!(all[&d], vec![9]);
    kvs.delete_all_timestamps(&t, &[]).unwrap();
}

pub fn delete_all_timestamps_removes_sentinels_only_when_asked<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    put(kvs, &t, &c, "a", 2);
    put(kvs, &t, &c, "b", 4);
    kvs.add_garbage_collection_sentinel_values(&t, std::slice::from_ref(&c))
        .unwrap();
    let keep = TimestampRangeDelete {
        timestamp: 4,
        end_inclusive: false,
        delete_sentinels: false,
    };
    kvs.delete_all_timestamps(&t, &[(c.clone(), keep)]).unwrap();
    assert_eq!(
        kvs.get_all_timestamps(&t, std::slice::from_ref(&c), MAX_READ_TS)
            .unwrap()[&c],
        vec![-1, 4]
    );
    let drop = TimestampRangeDelete {
        timestamp: 4,
        end_inclusive: false,
        delete_sentinels: true,
    };
    kvs.delete_all_timestamps(&t, &[(c.clone(), drop)]).unwrap();
    assert_eq!(
        kvs.get_all_timestamps(&t, std::slice::from_ref(&c), MAX_READ_TS)
            .unwrap()[&c],
        vec![4]
    );
}

pub fn sentinel_is_added_once_and_visible_only_below_real_versions<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    put(kvs, &t, &c, "v", 3);
    kvs.add_garbage_collection_sentinel_values(&t, std::slice::from_ref(&c))
        .unwrap();
    kvs.add_garbage_collection_sentinel_values(&t, std::slice::from_ref(&c))
        .unwrap();
    assert_eq!(get(kvs, &t, &c, 0), val("", SWEEP_SENTINEL_TS));
    assert_eq!(get(kvs, &t, &c, 3), val("", SWEEP_SENTINEL_TS));
    assert_eq!(get(kvs, &t, &c, 4), val("v", 3));
    assert_eq!(
        kvs.get_all_timestamps(&t, std::slice::from_ref(&c), MAX_READ_TS)
            .unwrap()[&c],
        vec![-1, 3]
    );
}

pub fn put_unless_exists_is_per_cell<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    kvs.put_unless_exists(&t, &[(cell("r", "a"), b"1".to_vec())])
        .unwrap();
    kvs.put_unless_exists(
        &t,
        &[
            (cell("r", "b"), b"2".to_vec()),
            (cell("r", "c"), b"3".to_vec()),
        ],
    )
    .unwrap();
    kvs.put_unless_exists(&t, &[(cell("s", "a"), b"4".to_vec())])
        .unwrap();
    assert_eq!(
        get(kvs, &t, &cell("r", "b"), 1),
        Some(Value::new("2", ATOMIC_TS))
    );
    assert_eq!(
        get(kvs, &t, &cell("s", "a"), 1),
        Some(Value::new("4", ATOMIC_TS))
    );
}

pub fn put_unless_exists_conflicts_on_any_existing_cell_and_writes_nothing<
    K: KeyValueService + ?Sized,
>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let a = cell("r", "a");
    kvs.put_unless_exists(&t, &[(a.clone(), b"1".to_vec())])
        .unwrap();
    let err = kvs
        .put_unless_exists(&t, &[(a.clone(), b"1".to_vec())])
        .unwrap_err();
    assert!(
        matches!(&err, KvsError::KeyAlreadyExists { cells, .. } if cells == std::slice::from_ref(&a)),
        "identical value still conflicts: {err:?}"
    );
    let fresh = cell("r", "fresh");
    let err = kvs
        .put_unless_exists(
            &t,
            &[(fresh.clone(), b"x".to_vec()), (a.clone(), b"2".to_vec())],
        )
        .unwrap_err();
    assert!(
        matches!(&err, KvsError::KeyAlreadyExists { cells, .. } if cells == std::slice::from_ref(&a))
    );
    assert_eq!(get(kvs, &t, &fresh, 1), None, "nothing written");
    assert_eq!(get(kvs, &t, &a, 1), Some(Value::new("1", ATOMIC_TS)));
    let big = vec![7u8; 1 << 20];
    kvs.put_unless_exists(&t, &[(cell("big", "v"), big.clone())])
        .unwrap();
    assert_eq!(get(kvs, &t, &cell("big", "v"), 1).unwrap().contents, big);
}

pub fn put_unless_exists_race_has_exactly_one_winner<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    const THREADS: usize = 8;
    for round in 0..50 {
        let c = cell(&format!("race{round}"), "c");
        let barrier = Barrier::new(THREADS);
        let wins = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for i in 0..THREADS {
                let (t, c, barrier, wins) = (&t, &c, &barrier, &wins);
                s.spawn(move || {
                    barrier.wait();
                    match kvs.put_unless_exists(t, &[(c.clone(), vec![i as u8])]) {
                        Ok(()) => {
                            wins.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(KvsError::KeyAlreadyExists { .. }) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                });
            }
        });
        assert_eq!(wins.load(Ordering::SeqCst), 1, "round {round}");
        assert!(get(kvs, &t, &c, 1).is_some());
    }
}

pub fn check_and_set_truth_table<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    let cas = |expected: Option<&str>, new: &str| {
        kvs.check_and_set(
            &t,
            &CheckAndSetRequest {
                cell: c.clone(),
                expected: expected.map(|e| e.as_bytes().to_vec()),
                new_value: new.as_bytes().to_vec(),
            },
        )
    };
    let err = cas(Some("x"), "y").unwrap_err();
    assert!(
        matches!(err, KvsError::CheckAndSetFailed { actual: None, .. }),
        "from value when none"
    );
    cas(None, "a").unwrap();
    let err = cas(None, "b").unwrap_err();
    assert!(
        matches!(&err, KvsError::CheckAndSetFailed { actual: Some(a), .. } if a == b"a"),
        "from none when present: {err:?}"
    );
    let err = cas(Some("wrong"), "b").unwrap_err();
    assert!(matches!(&err, KvsError::CheckAndSetFailed { actual: Some(a), .. } if a == b"a"));
    cas(Some("a"), "b").unwrap();
    cas(Some("b"), "a").unwrap();
    assert_eq!(get(kvs, &t, &c, 1), Some(Value::new("a", ATOMIC_TS)));
    let other = cell("s", "c");
    kvs.check_and_set(
        &t,
        &CheckAndSetRequest {
            cell: other.clone(),
            expected: None,
            new_value: b"o".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(
        get(kvs, &t, &c, 1),
        Some(Value::new("a", ATOMIC_TS)),
        "cells independent"
    );
}

pub fn check_and_set_race_has_exactly_one_winner<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("counter", "c");
    kvs.put_unless_exists(&t, &[(c.clone(), 0u64.to_be_bytes().to_vec())])
        .unwrap();
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 100;
    std::thread::scope(|s| {
        for _ in 0..THREADS {
            s.spawn(|| {
                let mut done = 0;
                while done < INCREMENTS {
                    // Not `get`: that compares two reads, and other threads write between them.
                    let current = kvs.get_one(&t, &c, 1).unwrap().unwrap().contents;
                    let n = u64::from_be_bytes(current.as_slice().try_into().unwrap());
                    let req = CheckAndSetRequest {
                        cell: c.clone(),
                        expected: Some(current),
                        new_value: (n + 1).to_be_bytes().to_vec(),
                    };
                    match kvs.check_and_set(&t, &req) {
                        Ok(()) => done += 1,
                        Err(KvsError::CheckAndSetFailed { .. }) => {}
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            });
        }
    });
    let final_value = get(kvs, &t, &c, 1).unwrap().contents;
    assert_eq!(
        final_value,
        (THREADS as u64 * INCREMENTS).to_be_bytes(),
        "no lost increment"
    );
}

pub fn atomic_values_can_be_deleted_and_written_again<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    kvs.put_unless_exists(&t, &[(c.clone(), b"1".to_vec())])
        .unwrap();
    kvs.delete(&t, &[(c.clone(), ATOMIC_TS)]).unwrap();
    assert_eq!(get(kvs, &t, &c, 1), None);
    kvs.put_unless_exists(&t, &[(c.clone(), b"2".to_vec())])
        .unwrap();
    kvs.delete(&t, &[(c.clone(), ATOMIC_TS)]).unwrap();
    kvs.check_and_set(
        &t,
        &CheckAndSetRequest {
            cell: c.clone(),
            expected: None,
            new_value: b"3".to_vec(),
        },
    )
    .unwrap();
    assert_eq!(get(kvs, &t, &c, 1), Some(Value::new("3", ATOMIC_TS)));
}

fn all_candidates<K: KeyValueService + ?Sized>(
    kvs: &K,
    t: &TableRef,
    max_ts: Timestamp,
    include_sentinels: bool,
    batch_size: usize,
) -> Vec<crate::CandidateCell> {
    let mut out = Vec::new();
    let mut start = None;
    loop {
        let page = kvs
            .get_candidate_cells_for_sweeping(
                t,
                &CandidateCellsRequest {
                    start,
                    max_ts_exclusive: max_ts,
                    batch_size,
                    include_sentinels,
                },
            )
            .unwrap();
        assert!(page.cells.len() <= batch_size);
        out.extend(page.cells);
        match page.next_start {
            Some(next) => start = Some(next),
            None => return out,
        }
    }
}

pub fn candidate_cells_report_versions_below_bound<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let (a, b, c) = (cell("a", "x"), cell("b", "x"), cell("c", "x"));
    for ts in [2, 4, 8] {
        put(kvs, &t, &a, "v", ts);
    }
    put(kvs, &t, &b, "v", 3);
    put(kvs, &t, &b, "", 5);
    put(kvs, &t, &c, "v", 9);
    kvs.add_garbage_collection_sentinel_values(&t, std::slice::from_ref(&b))
        .unwrap();
    let conservative = all_candidates(kvs, &t, 6, false, 10);
    assert_eq!(conservative.len(), 2, "cell c has nothing below 6");
    assert_eq!(
        (&conservative[0].cell, conservative[0].timestamps.as_slice()),
        (&a, [2, 4].as_slice())
    );
    assert!(!conservative[0].latest_is_empty);
    assert_eq!(conservative[1].timestamps, vec![3, 5]);
    assert!(
        conservative[1].latest_is_empty,
        "latest below the bound is a tombstone"
    );
    let thorough = all_candidates(kvs, &t, 6, true, 10);
    assert_eq!(thorough[1].timestamps, vec![-1, 3, 5]);
}

pub fn candidate_cells_page_through_a_large_table<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let mut expected = Vec::new();
    for i in 0..300u32 {
        let c = Cell::new(i.to_be_bytes(), if i % 2 == 0 { "a" } else { "b" }).unwrap();
        let versions = 1 + (i % 4) as i64;
        for ts in 1..=versions {
            kvs.put(&t, &[(c.clone(), vec![1])], ts * 10).unwrap();
        }
        expected.push((c, (1..=versions).map(|v| v * 10).collect::<Vec<_>>()));
    }
    for batch in [1, 7, 300, 1000] {
        let got: Vec<_> = all_candidates(kvs, &t, MAX_READ_TS, false, batch)
            .into_iter()
            .map(|c| (c.cell, c.timestamps))
            .collect();
        assert_eq!(got, expected, "batch size {batch}");
    }
}

pub fn out_of_range_timestamps_are_rejected_and_write_nothing<K: KeyValueService + ?Sized>(
    kvs: &K,
) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    for ts in [-1, -2, i64::MIN, i64::MAX] {
        let err = kvs.put(&t, &[(c.clone(), b"v".to_vec())], ts).unwrap_err();
        assert!(
            matches!(err, KvsError::InvalidTimestamp { .. }),
            "put at {ts}: {err:?}"
        );
    }
    let err = kvs
        .put_with_timestamps(
            &t,
            &[
                (c.clone(), Value::new("ok", 1)),
                (c.clone(), Value::new("bad", -2)),
            ],
        )
        .unwrap_err();
    assert!(matches!(
        err,
        KvsError::InvalidTimestamp { timestamp: -2, .. }
    ));
    let err = kvs.get(&t, &[(c.clone(), -1)]).unwrap_err();
    assert!(matches!(err, KvsError::InvalidTimestamp { .. }));
    for ts in [-1, -2, i64::MIN] {
        let err = kvs.get_one(&t, &c, ts).unwrap_err();
        assert!(
            matches!(err, KvsError::InvalidTimestamp { .. }),
            "get_one below {ts}: {err:?}"
        );
    }
    assert!(
        kvs.get(&t, &[(c.clone(), MAX_READ_TS)]).unwrap().is_empty(),
        "nothing was written"
    );
}

pub fn returned_values_are_copies<K: KeyValueService + ?Sized>(kvs: &K) {
    let t = table(kvs, "t");
    let c = cell("r", "c");
    let mut bytes = b"original".to_vec();
    kvs.put(&t, &[(c.clone(), bytes.clone())], 1).unwrap();
    bytes[0] = b'X';
    let mut got = get(kvs, &t, &c, 2).unwrap();
    got.contents[0] = b'Y';
    assert_eq!(get(kvs, &t, &c, 2), val("original", 1));
}

// ---------------------------------------------------------------------------------------------
// Model-based: random operation sequences against a tiny reference model.

/// The reference: a flat map of versions.
#[derive(Default, Clone)]
struct Model {
    versions: BTreeMap<(Cell, Timestamp), Vec<u8>>,
}

impl Model {
    fn latest_below(&self, c: &Cell, ts: Timestamp) -> Option<Value> {
        self.versions
            .range((c.clone(), i64::MIN)..(c.clone(), ts))
            .next_back()
            .map(|((_, t), v)| Value::new(v.clone(), *t))
    }

    fn cells(&self) -> Vec<Cell> {
        let mut cells: Vec<Cell> = self.versions.keys().map(|(c, _)| c.clone()).collect();
        cells.dedup();
        cells
    }
}

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<(Cell, Vec<u8>)>, Timestamp),
    PutUnlessExists(Vec<(Cell, Vec<u8>)>),
    Delete(Cell, Timestamp),
    DeleteAllTimestamps(Cell, TimestampRangeDelete),
    AddSentinel(Cell),
    DeleteRange(RowRange),
    Get(Cell, Timestamp),
    Range(RowRange, bool, Timestamp),
    Candidates(Timestamp, bool, usize),
}

fn name_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop::sample::select(vec![
        b"a".to_vec(),
        b"a\0".to_vec(),
        b"ab".to_vec(),
        b"b".to_vec(),
        vec![0u8],
        vec![0xff],
        vec![0u8, 0xff],
    ])
}

fn cell_strategy() -> impl Strategy<Value = Cell> {
    (name_strategy(), name_strategy()).prop_map(|(r, c)| Cell::new(r, c).unwrap())
}

fn writes_strategy() -> impl Strategy<Value = Vec<(Cell, Vec<u8>)>> {
    prop::collection::vec((cell_strategy(), prop::collection::vec(0u8..3, 0..3)), 1..4).prop_map(
        |mut writes| {
            writes.sort_by(|a, b| a.0.cmp(&b.0));
            writes.dedup_by(|a, b| a.0 == b.0);
            writes
        },
    )
}

fn row_range_strategy() -> impl Strategy<Value = RowRange> {
    let bound = || prop::option::of(name_strategy()).prop_map(Option::unwrap_or_default);
    (bound(), bound()).prop_map(|(start, end)| RowRange { start, end })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (writes_strategy(), 0i64..8).prop_map(|(w, ts)| Op::Put(w, ts)),
        2 => writes_strategy().prop_map(Op::PutUnlessExists),
        1 => (cell_strategy(), -1i64..8).prop_map(|(c, ts)| Op::Delete(c, ts)),
        1 => (cell_strategy(), 0i64..9, any::<bool>(), any::<bool>()).prop_map(|(c, ts, inc, s)| {
            Op::DeleteAllTimestamps(c, TimestampRangeDelete { timestamp: ts, end_inclusive: inc, delete_sentinels: s })
        }),
        1 => cell_strategy().prop_map(Op::AddSentinel),
        1 => row_range_strategy().prop_map(Op::DeleteRange),
        3 => (cell_strategy(), 0i64..10).prop_map(|(c, ts)| Op::Get(c, ts)),
        2 => (row_range_strategy(), any::<bool>(), 0i64..10).prop_map(|(r, rev, ts)| Op::Range(r, rev, ts)),
        1 => (0i64..10, any::<bool>(), 1usize..4).prop_map(|(ts, s, b)| Op::Candidates(ts, s, b)),
    ]
}

fn apply<K: KeyValueService + ?Sized>(kvs: &K, t: &TableRef, model: &mut Model, op: &Op) {
    match op {
        Op::Put(writes, ts) => {
            let conflict = writes.iter().any(|(c, v)| {
                model
                    .versions
                    .get(&(c.clone(), *ts))
                    .is_some_and(|old| old != v)
            });
            let result = kvs.put(t, writes, *ts);
            if conflict {
                assert!(
                    matches!(result, Err(KvsError::ValueAlreadyWritten { .. })),
                    "{op:?}: {result:?}"
                );
            } else {
                result.unwrap();
                for (c, v) in writes {
                    model.versions.insert((c.clone(), *ts), v.clone());
                }
            }
        }
        Op::PutUnlessExists(writes) => {
            let existing: Vec<Cell> = writes
                .iter()
                .filter(|(c, _)| model.versions.contains_key(&(c.clone(), ATOMIC_TS)))
                .map(|(c, _)| c.clone())
                .collect();
            let result = kvs.put_unless_exists(t, writes);
            if existing.is_empty() {
                result.unwrap();
                for (c, v) in writes {
                    model.versions.insert((c.clone(), ATOMIC_TS), v.clone());
                }
            } else {
                match result {
                    Err(KvsError::KeyAlreadyExists { cells, .. }) => assert_eq!(cells, existing),
                    other => panic!("{op:?}: expected KeyAlreadyExists, got {other:?}"),
                }
            }
        }
        Op::Delete(c, ts) => {
            kvs.delete(t, &[(c.clone(), *ts)]).unwrap();
            model.versions.remove(&(c.clone(), *ts));
        }
        Op::DeleteAllTimestamps(c, range) => {
            kvs.delete_all_timestamps(t, &[(c.clone(), *range)])
                .unwrap();
            let (min, max) = range.bounds();
            model
                .versions
                .retain(|(cc, ts), _| cc != c || !(min..=max).contains(ts));
        }
        Op::AddSentinel(c) => {
            kvs.add_garbage_collection_sentinel_values(t, std::slice::from_ref(c))
                .unwrap();
            model
                .versions
                .entry((c.clone(), SWEEP_SENTINEL_TS))
                .or_default();
        }
        Op::DeleteRange(rows) => {
            kvs.delete_range(t, rows).unwrap();
            model.versions.retain(|(c, _), _| !rows.contains(c.row()));
        }
        Op::Get(c, ts) => {
            assert_eq!(get(kvs, t, c, *ts), model.latest_below(c, *ts), "{op:?}");
        }
        Op::Range(rows, reverse, ts) => {
            let req = RangeRequest {
                rows: rows.clone(),
                reverse: *reverse,
                ..RangeRequest::default()
            };
            let got = range(kvs, t, &req, *ts);
            let mut expected: Vec<RowResult> = Vec::new();
            for c in model.cells().into_iter().filter(|c| rows.contains(c.row())) {
                if let Some(v) = model.latest_below(&c, *ts) {
                    match expected.last_mut() {
                        Some(r) if r.row == c.row() => {
                            r.columns.insert(c.column().to_vec(), v);
                        }
                        _ => expected.push(RowResult {
                            row: c.row().to_vec(),
                            columns: BTreeMap::from([(c.column().to_vec(), v)]),
                        }),
                    }
                }
            }
            if *reverse {
                expected.reverse();
            }
            assert_eq!(got, expected, "{op:?}");
        }
        Op::Candidates(max_ts, include_sentinels, batch) => {
            let got = all_candidates(kvs, t, *max_ts, *include_sentinels, *batch);
            let mut expected = Vec::new();
            for c in model.cells() {
                let below: Vec<(Timestamp, bool)> = model
                    .versions
                    .range((c.clone(), i64::MIN)..(c.clone(), *max_ts))
                    .map(|((_, ts), v)| (*ts, v.is_empty()))
                    .collect();
                let Some(&(_, latest_is_empty)) = below.last() else {
                    continue;
                };
                let timestamps: Vec<Timestamp> = below
                    .iter()
                    .map(|(ts, _)| *ts)
                    .filter(|ts| *include_sentinels || *ts != SWEEP_SENTINEL_TS)
                    .collect();
                if !timestamps.is_empty() {
                    expected.push(crate::CandidateCell {
                        cell: c,
                        timestamps,
                        latest_is_empty,
                    });
                }
            }
            assert_eq!(got, expected, "{op:?}");
        }
    }
}

pub fn random_operations_match_reference_model<K: KeyValueService + ?Sized>(kvs: &K) {
    let case = AtomicUsize::new(0);
    let mut runner = TestRunner::new(Config {
        cases: 48,
        failure_persistence: None,
        ..Config::default()
    });
    runner
        .run(&prop::collection::vec(op_strategy(), 1..40), |ops| {
            let t = table(
                kvs,
                &format!("model{}", case.fetch_add(1, Ordering::SeqCst)),
            );
            let mut model = Model::default();
            for op in &ops {
                apply(kvs, &t, &mut model, op);
            }
            kvs.drop_table(&t).unwrap();
            Ok(())
        })
        .unwrap();
}
