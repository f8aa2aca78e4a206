//! The key-value-store contract of Ortelius.
//!
//! Everything above storage sees a store only through [`KeyValueService`]: a multi-version map
//! `(table, row, column, timestamp) -> bytes` with AtlasDB's semantics (exclusive read bounds,
//! empty value = tombstone, ts -1 = sweep sentinel, atomic tables at ts 0). This crate depends
//! on no storage engine. It also holds the in-memory backend ([`memory::MemoryKvs`]) and, behind
//! the `conformance` feature, the one conformance suite every backend runs.

pub mod config;
mod error;
pub mod keycodec;
pub mod memory;
mod service;
pub mod snapshot;
mod types;

#[cfg(feature = "conformance")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{ErrorClass, KvsError, KvsResult};
pub use service::{read_latest_then_multi_put, CellIter, KeyValueService, RowIter};
pub use types::*;
