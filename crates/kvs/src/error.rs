//! Typed errors of the KVS contract, each with an [`ErrorClass`] saying whether retrying can
//! help and whether a failed write may still have happened.

use std::path::PathBuf;

use crate::types::{Cell, TableRef, Timestamp};

/// What a caller may do after a store error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The operation did not take effect and may succeed if tried again (a lost connection
    /// before the request was sent, a server restarting, no quorum).
    Transient,
    /// Trying again will not help: bad input, a missing table, corruption, or an answer such as
    /// "the key already exists".
    Permanent,
    /// A write whose reply was lost: it may or may not have happened. Read back before redoing
    /// anything that is not idempotent.
    MaybeApplied,
}

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
    /// No store is where the config points (a mistyped directory, schema, prefix or keyspace).
    #[error("there is no store at {store}: it does not exist or holds no data; check the config's keyValueService")]
    StoreMissing { store: String },
    /// The store holds a restore that began and did not finish.
    #[error(
        "a restore into {store} began but did not finish; run the restore again (it starts over)"
    )]
    UnfinishedRestore { store: String },
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        operation: &'static str,
        backend: &'static str,
    },
    /// The store cannot be reached or cannot serve the request now; nothing was applied.
    #[error("store unavailable: {detail}")]
    Unavailable { detail: String },
    /// A write whose reply was lost: it may or may not have been applied.
    #[error("{operation} may or may not have been applied (its reply was lost): {detail}")]
    MaybeApplied {
        operation: &'static str,
        detail: String,
    },
    #[error("stored data is corrupt: {detail}")]
    Corruption { detail: String },
    #[error("storage error: {detail}")]
    Storage { detail: String },
}

impl KvsError {
    /// Wraps a backend's error that retrying will not fix.
    pub fn storage(err: impl std::fmt::Display) -> Self {
        Self::Storage {
            detail: err.to_string(),
        }
    }

    /// Whether retrying can help and whether a failed write may have happened.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unavailable { .. } => ErrorClass::Transient,
            Self::MaybeApplied { .. } => ErrorClass::MaybeApplied,
            _ => ErrorClass::Permanent,
        }
    }
}

pub type KvsResult<T> = Result<T, KvsError>;
