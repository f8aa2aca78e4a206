//! Ortelius transactions: AtlasDB's client-side protocol over any [`KeyValueService`].
//!
//! Data is written at the writer's start timestamp; the transactions table maps start to
//! commit timestamps and is written only by `put_unless_exists`, so that one atomic write is a
//! transaction's commit point. Readers post-filter every version through it (see `reader`),
//! committers follow the sequence in `commit`. Storage is reached only through the KVS trait,
//! time and locks only through the `ortelius-timelock` traits.
//!
//! ```no_run
//! # use std::sync::Arc;
//! # use ortelius_kvs::{Cell, TableRef, memory::MemoryKvs};
//! # use ortelius_txn::{TransactionManager, TransactionConfig, TableMetadata};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let manager = TransactionManager::embedded(Arc::new(MemoryKvs::new()), TransactionConfig::default())?;
//! let accounts = TableRef::new("bank", "accounts")?;
//! manager.create_table(&accounts, TableMetadata::default())?;
//! let alice = Cell::new("alice", "balance")?;
//! manager.run(|txn| txn.put(&accounts, &alice, 100u64.to_be_bytes()))?;
//! let balance = manager.run_read_only(|txn| txn.get_one(&accounts, &alice))?;
//! # Ok(()) }
//! ```
//!
//! [`KeyValueService`]: ortelius_kvs::KeyValueService

mod backup_lock;
mod commit;
mod error;
mod manager;
mod metadata;
mod metrics;
mod punch;
mod reader;
#[cfg(feature = "suite")]
pub mod suite;
mod sweep;
mod transaction;
mod txn_table;

pub use backup_lock::{
    BackupLock, BackupLockError, BackupLockHolder, BackupLockStatus, DeletionPermit,
    SystemWallClock, WallClock, BACKUP_LOCK_TABLE,
};
pub use error::{RetryClass, TxnError, TxnResult};
pub use manager::{Isolation, TransactionConfig, TransactionManager};
pub use metadata::{ConflictHandler, SweepStrategy, TableMetadata};
pub use metrics::Metrics;
pub use punch::{Puncher, PUNCH_TABLE};
pub use sweep::{BackgroundSweeper, SweepConfig, SweepReport, Sweeper, SWEEP_PROGRESS_TABLE};
pub use transaction::{RangeScan, Row, Transaction};
pub use txn_table::{CleanReport, TransactionsTable, TxnStatus, TRANSACTIONS_TABLE};
