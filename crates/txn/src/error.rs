//! Transaction errors and their retry classification.

use ortelius_kvs::{Cell, ErrorClass, KvsError, TableRef, Timestamp};
use ortelius_timelock::{LockError, TimestampError};

/// What a caller may do after an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryClass {
    /// Nothing was committed; running the transaction again may succeed.
    Retriable,
    /// Nothing was committed; retrying will not help.
    NotRetriable,
    /// The commit record may or may not have been written. Do not blindly retry a
    /// non-idempotent transaction: read back to find out.
    CommitOutcomeUnknown,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TxnError {
    #[error("write-write conflict on {table} {cell}: transaction {their_start_ts} (commit {their_commit_ts:?}) wrote it after this transaction started")]
    WriteWriteConflict {
        table: TableRef,
        cell: Cell,
        their_start_ts: Timestamp,
        their_commit_ts: Option<Timestamp>,
    },
    #[error("serializable conflict on {table}: {detail}")]
    SerializableConflict { table: TableRef, detail: String },
    #[error("transaction {start_ts} lost its locks (lease expired) before committing")]
    LocksExpired { start_ts: Timestamp },
    #[error("could not acquire commit locks: {0}")]
    LockAcquisitionTimeout(LockError),
    #[error("transaction {start_ts} was rolled back by another transaction before its commit record was written")]
    RolledBackByOther { start_ts: Timestamp },
    #[error("reading {table} {cell} hit a sweep sentinel: a version this transaction needs was swept; retry with a fresh transaction")]
    SweepSentinel { table: TableRef, cell: Cell },
    #[error("read-only transaction {start_ts} is older than the read timeout ({timeout:?}); sweep may have removed what it needs, retry with a fresh transaction")]
    ReadTimeout {
        start_ts: Timestamp,
        timeout: std::time::Duration,
    },
    #[error("gave up after {iterations} post-filtering rounds reading {table}")]
    TooManyPostFilterRounds { table: TableRef, iterations: usize },
    #[error("commit outcome unknown for transaction {start_ts} (commit ts {commit_ts}): {source}")]
    CommitOutcomeUnknown {
        start_ts: Timestamp,
        commit_ts: Timestamp,
        source: Box<KvsError>,
    },
    #[error("cannot write to {table}: this transaction is read-only")]
    WriteInReadOnly { table: TableRef },
    #[error("cannot put an empty value into {table} {cell}: use delete() to remove a cell")]
    EmptyValue { table: TableRef, cell: Cell },
    #[error("the transaction is {state}; start a new one")]
    NotOpen { state: &'static str },
    #[error("{table} is a system table; transactions cannot read or write it")]
    SystemTable { table: TableRef },
    #[error(
        "cannot read at timestamp {timestamp}: only timestamps in 0..{latest} have been handed out"
    )]
    InvalidTimestamp {
        timestamp: Timestamp,
        latest: Timestamp,
    },
    #[error("gave up after {attempts} attempts; last error: {last}")]
    RetriesExhausted { attempts: u32, last: Box<TxnError> },
    /// A store error (boxed: it is large, and errors are the slow path).
    #[error(transparent)]
    Store(Box<KvsError>),
    #[error("timestamp service: {0}")]
    Timestamp(#[from] TimestampError),
    #[error("lock service: {0}")]
    Lock(LockError),
    /// An error of the application's own, returned from a `run` closure; never retried.
    #[error("{0}")]
    Application(Box<dyn std::error::Error + Send + Sync>),
}

impl From<KvsError> for TxnError {
    fn from(e: KvsError) -> Self {
        Self::Store(Box::new(e))
    }
}

impl TxnError {
    /// Whether retrying can help, and whether the commit may have happened.
    pub fn retry_class(&self) -> RetryClass {
        match self {
            Self::WriteWriteConflict { .. }
            | Self::SerializableConflict { .. }
            | Self::LocksExpired { .. }
            | Self::LockAcquisitionTimeout(_)
            | Self::RolledBackByOther { .. }
            | Self::SweepSentinel { .. }
            | Self::ReadTimeout { .. }
            | Self::TooManyPostFilterRounds { .. } => RetryClass::Retriable,
            Self::CommitOutcomeUnknown { .. } => RetryClass::CommitOutcomeUnknown,
            // Outside the commit record (which is wrapped in `CommitOutcomeUnknown` above), a
            // store failure leaves nothing committed: a transient one is worth retrying, and a
            // write whose reply was lost only left data no commit record points to.
            Self::Store(e) => match e.class() {
                ErrorClass::Transient | ErrorClass::MaybeApplied => RetryClass::Retriable,
                ErrorClass::Permanent => RetryClass::NotRetriable,
            },
            Self::Timestamp(e) if e.is_transient() => RetryClass::Retriable,
            Self::Lock(e) if e.is_transient() => RetryClass::Retriable,
            Self::RetriesExhausted { last, .. } => match last.retry_class() {
                RetryClass::CommitOutcomeUnknown => RetryClass::CommitOutcomeUnknown,
                _ => RetryClass::NotRetriable,
            },
            _ => RetryClass::NotRetriable,
        }
    }

    /// Wraps an application error (not retried by `run`).
    pub fn application(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::Application(err.into())
    }
}

pub type TxnResult<T> = Result<T, TxnError>;
