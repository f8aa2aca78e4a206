//! Typed errors of the KVS contract.

use std::path::PathBuf;

use crate::types::{Cell, TableRef, Timestamp};

/// Every error a [`crate::KeyValueService`] returns. Validation errors are raised before
/// anything is written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KvsError {
    #[error("invalid table name '{name}': {reason}")]
    InvalidTableName { name: String, reason: &'static str },
    #[error("invalid cell: {reason}")]
    InvalidCell { reason: String },
    #[error("invalid timestamp {timestamp}: {reason}")]
    InvalidTimestamp {
        timestamp: Timestamp,
        reason: &'static str,
    },
    #[error("table {table} does not exist; create it first")]
    TableNotFound { table: TableRef },
    /// `put_unless_exists` found existing values (all the cells that already existed).
    #[error("put_unless_exists into {table}: {} cell(s) already exist, first {}", cells.len(), cells.first().map(ToString::to_string).unwrap_or_default())]
    KeyAlreadyExists { table: TableRef, cells: Vec<Cell> },
    /// A put at a cell and timestamp that already hold a different value.
    #[error("{table} {cell} already holds a different value at timestamp {timestamp}")]
    ValueAlreadyWritten {
        table: TableRef,
        cell: Cell,
        timestamp: Timestamp,
    },
    /// `check_and_set` found a value other than the expected one (`actual`; `None` = absent).
    #[error("check_and_set on {table} {cell} failed: the cell holds {actual:?}")]
    CheckAndSetFailed {
        table: TableRef,
        cell: Cell,
        actual: Option<Vec<u8>>,
    },
    #[error("the store at {} is already open in another process (or elsewhere in this one); stop that process or use its management API", dir.display())]
    StoreLocked { dir: PathBuf, detail: String },
    /// The directory holds a restore that began and did not finish.
    #[error("a restore into {} began but did not finish; run the restore again (it starts over), or remove the directory", dir.display())]
    UnfinishedRestore { dir: PathBuf },
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        operation: &'static str,
        backend: &'static str,
    },
    #[error("stored data is corrupt: {detail}")]
    Corruption { detail: String },
    #[error("storage error: {detail}")]
    Storage { detail: String },
}

impl KvsError {
    /// Wraps a backend's error.
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Self::Storage {
            detail: err.to_string(),
        }
    }
}

pub type KvsResult<T> = Result<T, KvsError>;
