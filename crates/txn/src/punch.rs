//! The punch table: a wall-clock → timestamp record, so "the timestamp that was current an
//! hour ago" (the unreadable timestamp) can be looked up. Row = wall-clock milliseconds as 8
//! bytes big-endian, column `t`, value = a timestamp fetched at that time (8 bytes big-endian),
//! all at ts 0.

use std::sync::Arc;

use ortelius_kvs::{
    Cell, KeyValueService, KvsError, KvsResult, RangeRequest, RowRange, TableRef, Timestamp,
    MAX_READ_TS,
};

use crate::backup_lock::WallClock;

/// The system table of punches.
pub const PUNCH_TABLE: &str = "_punch";

/// Records and looks up punches.
#[derive(Clone)]
pub struct Puncher {
    kvs: Arc<dyn KeyValueService>,
    table: TableRef,
    clock: Arc<dyn WallClock>,
}

impl Puncher {
    pub fn new(kvs: Arc<dyn KeyValueService>, clock: Arc<dyn WallClock>) -> KvsResult<Self> {
        let table = TableRef::system(PUNCH_TABLE)?;
        if !kvs.list_tables()?.contains(&table) {
            kvs.create_table(&table, b"")?;
        }
        Ok(Self { kvs, table, clock })
    }

    /// Records that `ts` was a fresh timestamp now.
    pub fn punch(&self, ts: Timestamp) -> KvsResult<()> {
        let cell = Cell::new(self.clock.now_ms().to_be_bytes(), "t")?;
        match self
            .kvs
            .put_unless_exists(&self.table, &[(cell, ts.to_be_bytes().to_vec())])
        {
            Ok(()) | Err(KvsError::KeyAlreadyExists { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The timestamp of the latest punch at or before `wall_ms`; `None` if there is none.
    pub fn timestamp_at(&self, wall_ms: u64) -> KvsResult<Option<Timestamp>> {
        let request = RangeRequest {
            rows: RowRange::new(Vec::new(), wall_ms.saturating_add(1).to_be_bytes().to_vec()),
            reverse: true,
            ..RangeRequest::default()
        };
        let Some(row) = self
            .kvs
            .get_range(&self.table, &request, MAX_READ_TS)?
            .next()
            .transpose()?
        else {
            return Ok(None);
        };
        let value = row
            .columns
            .values()
            .next()
            .map(|v| v.contents.clone())
            .unwrap_or_default();
        let bytes: [u8; 8] = value
            .as_slice()
            .try_into()
            .map_err(|_| KvsError::Corruption {
                detail: "malformed punch".to_owned(),
            })?;
        Ok(Some(i64::from_be_bytes(bytes)))
    }

    /// The current wall-clock time in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }
}
