//! CQL text and the error mapping.
//!
//! Layout (AtlasDB's): one CQL table per Ortelius table, named by the table's internal name
//! (`namespace__name`, system tables as they are, e.g. `"_transactions"`; always quoted), with
//! `key blob` (the row, partition key), `column1 blob` (the column) and `column2 bigint` (the
//! bitwise-inverted timestamp) as clustering columns, ascending, and `value blob`. Inverted
//! timestamps sort the newest version of a cell first, so "the newest version below T" is the
//! first row of the slice `column2 > !T`.

use ortelius_kvs::{KvsError, Timestamp};
use scylla::errors::{DbError, ExecutionError, RequestAttemptError};

/// The clustering value of a timestamp: newest first.
pub(crate) fn inv(ts: Timestamp) -> i64 {
    !ts
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

pub(crate) fn delete_version(q: &str) -> String {
    format!("DELETE FROM {q} USING TIMESTAMP ? WHERE key = ? AND column1 = ? AND column2 = ?")
}

pub(crate) fn delete_versions_between(q: &str) -> String {
    format!(
        "DELETE FROM {q} USING TIMESTAMP ? WHERE key = ? AND column1 = ? AND column2 >= ? AND column2 <= ?"
    )
}

pub(crate) fn delete_row(q: &str) -> String {
    format!("DELETE FROM {q} USING TIMESTAMP ? WHERE key = ?")
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
