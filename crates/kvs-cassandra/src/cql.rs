//! CQL text and the error mapping.
//!
//! Layout (AtlasDB's): one CQL table per Ortelius table, named by the table's internal name
//! (`namespace__name`, system tables as they are, e.g. `"_transactions"`; always quoted), with
//! `key blob` (the row, partition key), `column1 blob` (the column) and `column2 bigint` (the
//! bitwise-inverted timestamp) as clustering columns, ascending, and `value blob`. Inverted
//! timestamps sort the newest version of a cell first, so "the newest version below T" is the
//! first row of the slice `column2 > !T`.

use ortelius_kvs::{KvsError, Timestamp, ATOMIC_TS};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

/// The clustering value of a timestamp: newest first.
pub(crate) fn inv(ts: Timestamp) -> i64 {
    !ts
}

/// The versions `min..=max` of a cell split by who stamps their mutations: the clustering
/// ranges (inclusive, ascending) of every version but the atomic one, which plain deletes with
/// client timestamps may cover, and whether the atomic version is in the range, which only
/// lightweight transactions may mutate (their cells carry the server's Paxos ballot time, which
/// a client clock can neither precede nor follow reliably).
pub(crate) fn split_at_atomic(min: Timestamp, max: Timestamp) -> (Vec<(i64, i64)>, bool) {
    let mut ranges = Vec::new();
    // Versions above the atomic one: clustering values below inv(ATOMIC_TS) = -1.
    let above = min.max(ATOMIC_TS.saturating_add(1));
    if above <= max {
        ranges.push((inv(max), inv(above)));
    }
    // Versions below it (the sweep sentinel): clustering values from 0 up.
    let below = max.min(ATOMIC_TS.saturating_sub(1));
    if min <= below {
        ranges.push((inv(below), inv(min)));
    }
    (ranges, min <= ATOMIC_TS && ATOMIC_TS <= max)
}

/// The catalogue: internal name → qualified name and metadata.
pub(crate) const CATALOG: &str = "_ortelius_catalog";

pub(crate) fn create_table(q: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {q} (key blob, column1 blob, column2 bigint, value blob, \
         PRIMARY KEY (key, column1, column2)) WITH CLUSTERING ORDER BY (column1 ASC, column2 ASC)"
    )
}

pub(crate) fn latest(q: &str, with_value: bool) -> String {
    let value = if with_value { ", value" } else { "" };
    format!("SELECT column2{value} FROM {q} WHERE key = ? AND column1 = ? AND column2 > ? LIMIT 1")
}

/// A cell's two newest versions below a bound, with their write times: the conflict read sent
/// alongside a transaction's data write, which may already have landed (its write time tells).
pub(crate) fn latest_two_written(q: &str) -> String {
    format!(
        "SELECT column2, WRITETIME(value) FROM {q} WHERE key = ? AND column1 = ? AND column2 > ? \
         LIMIT 2"
    )
}

pub(crate) fn exact(q: &str) -> String {
    format!("SELECT value FROM {q} WHERE key = ? AND column1 = ? AND column2 = ?")
}

pub(crate) fn cell_versions(q: &str) -> String {
    format!("SELECT column2 FROM {q} WHERE key = ? AND column1 = ? AND column2 > ?")
}

pub(crate) fn row(q: &str, only_columns: bool) -> String {
    let cols = if only_columns {
        " AND column1 IN ?"
    } else {
        ""
    };
    format!("SELECT column1, column2, value FROM {q} WHERE key = ?{cols}")
}

pub(crate) fn row_columns(q: &str, has_start: bool, has_end: bool) -> String {
    let mut s = format!("SELECT column1, column2, value FROM {q} WHERE key = ?");
    if has_start {
        s.push_str(" AND column1 >= ?");
    }
    if has_end {
        s.push_str(" AND column1 < ?");
    }
    s
}

/// Every version of a row range, in token order (= row order with ByteOrderedPartitioner).
pub(crate) fn scan(q: &str, has_start: bool, has_end: bool) -> String {
    let mut s = format!("SELECT key, column1, column2, value FROM {q}");
    match (has_start, has_end) {
        (true, true) => s.push_str(" WHERE token(key) >= token(?) AND token(key) < token(?)"),
        (true, false) => s.push_str(" WHERE token(key) >= token(?)"),
        (false, true) => s.push_str(" WHERE token(key) < token(?)"),
        (false, false) => {}
    }
    s
}

pub(crate) fn keys(q: &str, has_start: bool, has_end: bool) -> String {
    let mut s = format!("SELECT DISTINCT key FROM {q}");
    match (has_start, has_end) {
        (true, true) => s.push_str(" WHERE token(key) >= token(?) AND token(key) < token(?)"),
        (true, false) => s.push_str(" WHERE token(key) >= token(?)"),
        (false, true) => s.push_str(" WHERE token(key) < token(?)"),
        (false, false) => {}
    }
    s
}

pub(crate) fn insert(q: &str) -> String {
    format!("INSERT INTO {q} (key, column1, column2, value) VALUES (?, ?, ?, ?) USING TIMESTAMP ?")
}

pub(crate) fn insert_if_absent(q: &str) -> String {
    format!("INSERT INTO {q} (key, column1, column2, value) VALUES (?, ?, -1, ?) IF NOT EXISTS")
}

pub(crate) fn update_if(q: &str) -> String {
    format!("UPDATE {q} SET value = ? WHERE key = ? AND column1 = ? AND column2 = -1 IF value = ?")
}

/// Whether a cell has its atomic version (a cheap read before a lightweight delete).
pub(crate) fn atomic_version(q: &str) -> String {
    format!("SELECT column2 FROM {q} WHERE key = ? AND column1 = ? AND column2 = -1")
}

/// The columns and versions of one row, without values.
pub(crate) fn row_versions(q: &str) -> String {
    format!("SELECT column1, column2 FROM {q} WHERE key = ?")
}

/// Deletes an atomic version through Paxos, so the tombstone is ordered with the
/// lightweight transactions that write that version (see `CassandraKvs::delete_atomic`).
pub(crate) fn delete_atomic_if_exists(q: &str) -> String {
    format!("DELETE FROM {q} WHERE key = ? AND column1 = ? AND column2 = -1 IF EXISTS")
}

/// Deletes an atomic version through Paxos if it still holds the given value.
pub(crate) fn delete_atomic_if_value(q: &str) -> String {
    format!("DELETE FROM {q} WHERE key = ? AND column1 = ? AND column2 = -1 IF value = ?")
}

pub(crate) fn delete_version(q: &str) -> String {
    format!("DELETE FROM {q} USING TIMESTAMP ? WHERE key = ? AND column1 = ? AND column2 = ?")
}

pub(crate) fn delete_versions_between(q: &str) -> String {
    format!(
        "DELETE FROM {q} USING TIMESTAMP ? WHERE key = ? AND column1 = ? AND column2 >= ? AND column2 <= ?"
    )
}

/// Whether an error says the CQL table does not exist (dropped elsewhere).
pub(crate) fn is_missing_table(e: &ExecutionError) -> bool {
    let text = e.to_string();
    text.contains("unconfigured table") || text.contains("does not exist")
}

/// Maps a driver error of `operation` to the contract's errors. `write`: the statement changes
/// data, so a lost answer may hide an applied write.
pub(crate) fn classify(
    store: &str,
    operation: &'static str,
    write: bool,
    e: &ExecutionError,
) -> KvsError {
    let detail = format!("{operation} on {store}: {e}");
    let maybe = |detail: String| {
        if write {
            KvsError::MaybeApplied { operation, detail }
        } else {
            KvsError::Unavailable { detail }
        }
    };
    match e {
        ExecutionError::BadQuery(_) => KvsError::Storage { detail },
        ExecutionError::EmptyPlan
        | ExecutionError::PrepareError(_)
        | ExecutionError::ConnectionPoolError(_) => KvsError::Unavailable { detail },
        ExecutionError::LastAttemptError(attempt) => match attempt {
            RequestAttemptError::SerializationError(_)
            | RequestAttemptError::CqlRequestSerialization(_)
            | RequestAttemptError::UnableToAllocStreamId => KvsError::Unavailable { detail },
            RequestAttemptError::DbError(db, _) => match db {
                DbError::Unavailable { .. } | DbError::IsBootstrapping => {
                    KvsError::Unavailable { detail }
                }
                DbError::SyntaxError
                | DbError::Invalid
                | DbError::Unauthorized
                | DbError::AuthenticationError
                | DbError::ConfigError
                | DbError::AlreadyExists { .. }
                | DbError::FunctionFailure { .. }
                | DbError::ProtocolError => KvsError::Storage { detail },
                DbError::ReadTimeout { .. } | DbError::ReadFailure { .. } => maybe(detail),
                _ => maybe(detail),
            },
            _ => maybe(detail),
        },
        _ => maybe(detail),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ortelius_kvs::SWEEP_SENTINEL_TS;

    #[test]
    fn split_at_atomic_never_covers_the_atomic_version_with_a_range() {
        let atomic = inv(ATOMIC_TS);
        for (min, max) in [
            (SWEEP_SENTINEL_TS, 7),
            (ATOMIC_TS, 7),
            (SWEEP_SENTINEL_TS, ATOMIC_TS),
            (ATOMIC_TS, ATOMIC_TS),
            (SWEEP_SENTINEL_TS, SWEEP_SENTINEL_TS),
            (1, 7),
            (i64::MIN, i64::MAX),
        ] {
            let (ranges, covers_atomic) = split_at_atomic(min, max);
            assert_eq!(covers_atomic, (min..=max).contains(&ATOMIC_TS));
            for ts in [i64::MIN, SWEEP_SENTINEL_TS, ATOMIC_TS, 1, 6, 7, 8, i64::MAX] {
                let in_ranges = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&inv(ts)));
                let expected = ts != ATOMIC_TS && (min..=max).contains(&ts);
                assert_eq!(in_ranges, expected, "{min}..={max} at {ts}");
            }
            assert!(ranges
                .iter()
                .all(|(lo, hi)| lo <= hi && !(*lo..=*hi).contains(&atomic)));
        }
        assert_eq!(
            split_at_atomic(ATOMIC_TS, SWEEP_SENTINEL_TS),
            (Vec::new(), false)
        );
    }
}
