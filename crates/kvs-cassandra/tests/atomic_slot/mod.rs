//! Mutations of a cell's atomic version (ATOMIC_TS) take effect in the order they are made,
//! whatever clock stamps them. Put-unless-exists and check-and-set are lightweight transactions,
//! whose cells carry the server's Paxos ballot time (milliseconds); a delete or a plain put
//! stamped by the client's clock can land on either side of it. On one host the two clocks
//! differ by under a millisecond and a lost write is rare; with the client's clock moved ahead
//! of or behind the server's, as for a client on another host, each round below would lose one.

use crate::common;

use std::collections::BTreeMap;
use std::sync::Arc;

use ortelius_kvs::{
    Cell, KeyValueService, KvsError, RowRange, TableRef, TimestampRangeDelete, ATOMIC_TS,
    MAX_READ_TS,
};
use ortelius_kvs_cassandra::CassandraKvs;

/// Rounds per clock skew and kind of mutation.
const ROUNDS: usize = 20;
/// How far the client's clock is moved from the server's, in microseconds, each way.
const SKEW: i64 = 250_000;

/// A fresh store whose client clock is `skew` microseconds off the server's, and a table.
fn skewed_store(skew: i64) -> (Arc<CassandraKvs>, common::DropKeyspace, TableRef) {
    let (kvs, guard) = common::store();
    kvs.skew_write_clock(skew);
    let t = TableRef::new("test", "atomic").unwrap();
    kvs.create_table(&t, b"").unwrap();
    (kvs, guard, t)
}

fn value(round: usize, what: &str) -> Vec<u8> {
    format!("{what}{round}").into_bytes()
}

fn read(kvs: &dyn KeyValueService, t: &TableRef, c: &Cell) -> Option<Vec<u8>> {
    kvs.get(t, &[(c.clone(), MAX_READ_TS)])
        .unwrap()
        .remove(c)
        .map(|v| v.contents)
}

/// Counts of rounds where a mutation was lost, by what was lost.
#[derive(Default)]
struct Lost(BTreeMap<&'static str, usize>);

impl Lost {
    fn check(&mut self, what: &'static str, ok: bool) {
        let n = self.0.entry(what).or_default();
        if !ok {
            *n += 1;
        }
    }

    fn assert_none(&self, test: &str) {
        let rounds = 2 * ROUNDS;
        eprintln!("{test}: lost mutations in {rounds} rounds: {:?}", self.0);
        assert!(
            self.0.values().all(|n| *n == 0),
            "{test}: lost mutations in {rounds} rounds: {:?}",
            self.0
        );
    }
}

/// put_unless_exists, then a delete of the atomic version: the cell must be gone; then
/// put_unless_exists again: the new value must be visible.
fn rewrite_after(test: &str, delete: impl Fn(&dyn KeyValueService, &TableRef, &Cell)) {
    let mut lost = Lost::default();
    for skew in [SKEW, -SKEW] {
        let (kvs, _guard, t) = skewed_store(skew);
        rewrite_rounds(&kvs, &t, &mut lost, &delete);
    }
    lost.assert_none(test);
}

fn rewrite_rounds(
    kvs: &CassandraKvs,
    t: &TableRef,
    lost: &mut Lost,
    delete: &impl Fn(&dyn KeyValueService, &TableRef, &Cell),
) {
    let (kvs, t): (&dyn KeyValueService, &TableRef) = (kvs, t);
    for round in 0..ROUNDS {
        let c = Cell::new(format!("row{round}"), "col").unwrap();
        kvs.put_unless_exists(t, &[(c.clone(), value(round, "first"))])
            .unwrap();
        delete(kvs, t, &c);
        lost.check("delete after an lwt write", read(kvs, t, &c).is_none());
        let second = value(round, "second");
        match kvs.put_unless_exists(t, &[(c.clone(), second.clone())]) {
            Ok(()) => lost.check("lwt write after a delete", read(kvs, t, &c) == Some(second)),
            // The delete did not take: already counted.
            Err(KvsError::KeyAlreadyExists { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
        delete(kvs, t, &c);
    }
}

#[test]
fn put_unless_exists_and_delete_of_the_atomic_version_stay_in_order() {
    rewrite_after("delete", |kvs, t, c| {
        kvs.delete(t, &[(c.clone(), ATOMIC_TS)]).unwrap();
    });
}

#[test]
fn put_unless_exists_and_delete_range_stay_in_order() {
    rewrite_after("delete_range", |kvs, t, c| {
        let mut end = c.row().to_vec();
        end.push(0);
        kvs.delete_range(t, &RowRange::new(c.row().to_vec(), end))
            .unwrap();
    });
}

#[test]
fn put_unless_exists_and_delete_all_timestamps_stay_in_order() {
    rewrite_after("delete_all_timestamps", |kvs, t, c| {
        let all = TimestampRangeDelete {
            timestamp: 5,
            end_inclusive: false,
            delete_sentinels: true,
        };
        kvs.delete_all_timestamps(t, &[(c.clone(), all)]).unwrap();
    });
}

#[test]
fn put_unless_exists_undo_and_rewrite_stay_in_order() {
    let mut lost = Lost::default();
    for skew in [SKEW, -SKEW] {
        let (kvs, _guard, t) = skewed_store(skew);
        undo_rounds(&kvs, &t, &mut lost);
    }
    lost.assert_none("undo");
}

fn undo_rounds(kvs: &CassandraKvs, t: &TableRef, lost: &mut Lost) {
    let (kvs, t): (&dyn KeyValueService, &TableRef) = (kvs, t);
    let taken = Cell::new("taken", "col").unwrap();
    kvs.put_unless_exists(t, &[(taken.clone(), b"x".to_vec())])
        .unwrap();
    for round in 0..ROUNDS {
        let c = Cell::new(format!("row{round}"), "col").unwrap();
        // The first cell is written, then undone because the second exists.
        let result = kvs.put_unless_exists(
            t,
            &[
                (c.clone(), value(round, "undone")),
                (taken.clone(), b"y".to_vec()),
            ],
        );
        assert!(
            matches!(result, Err(KvsError::KeyAlreadyExists { .. })),
            "{result:?}"
        );
        lost.check("undo after an lwt write", read(kvs, t, &c).is_none());
        let again = value(round, "again");
        match kvs.put_unless_exists(t, &[(c.clone(), again.clone())]) {
            Ok(()) => lost.check("lwt write after an undo", read(kvs, t, &c) == Some(again)),
            Err(KvsError::KeyAlreadyExists { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
        kvs.delete(t, &[(c.clone(), ATOMIC_TS)]).unwrap();
    }
}

#[test]
fn plain_put_at_the_atomic_timestamp_and_delete_stay_in_order() {
    let mut lost = Lost::default();
    for skew in [SKEW, -SKEW] {
        let (kvs, _guard, t) = skewed_store(skew);
        plain_put_rounds(&kvs, &t, &mut lost);
    }
    lost.assert_none("plain put");
}

fn plain_put_rounds(kvs: &CassandraKvs, t: &TableRef, lost: &mut Lost) {
    let (kvs, t): (&dyn KeyValueService, &TableRef) = (kvs, t);
    for round in 0..ROUNDS {
        let c = Cell::new(format!("row{round}"), "col").unwrap();
        kvs.put(t, &[(c.clone(), value(round, "plain"))], ATOMIC_TS)
            .unwrap();
        kvs.delete(t, &[(c.clone(), ATOMIC_TS)]).unwrap();
        lost.check("delete after a plain put", read(kvs, t, &c).is_none());
        let lwt = value(round, "lwt");
        match kvs.put_unless_exists(t, &[(c.clone(), lwt.clone())]) {
            Ok(()) => lost.check("lwt write after a delete", read(kvs, t, &c) == Some(lwt)),
            Err(KvsError::KeyAlreadyExists { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
        kvs.delete(t, &[(c.clone(), ATOMIC_TS)]).unwrap();
        lost.check("delete after an lwt write", read(kvs, t, &c).is_none());
        let plain = value(round, "again");
        match kvs.put(t, &[(c.clone(), plain.clone())], ATOMIC_TS) {
            Ok(()) => lost.check("plain put after a delete", read(kvs, t, &c) == Some(plain)),
            // The delete did not take: already counted.
            Err(KvsError::ValueAlreadyWritten { .. }) => {}
            Err(e) => panic!("{e:?}"),
        }
        kvs.delete(t, &[(c.clone(), ATOMIC_TS)]).unwrap();
    }
}
