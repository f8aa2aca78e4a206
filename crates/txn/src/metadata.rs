//! What the transaction layer stores as a table's metadata: its conflict handler and sweep
//! strategy. Encoded as `[1, handler, strategy]`; tables without it get the defaults.

use ortelius_kvs::KvsError;

/// How concurrent writers (and, for the serializable handlers, readers) of a table conflict.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConflictHandler {
    /// No locks, no checks: last writer wins.
    IgnoreAll,
    /// Row locks at commit; a write-write conflict on a cell fails the later committer.
    #[default]
    RetryOnWriteWrite,
    /// Like `RetryOnWriteWrite` with cell locks (less contention on wide rows).
    RetryOnWriteWriteCell,
    /// Row locks, write-write checks, and read validation at commit (serializable).
    Serializable,
    /// Cell locks, write-write checks, and read validation at commit.
    SerializableCell,
}

impl ConflictHandler {
    pub fn locks_rows(self) -> bool {
        matches!(self, Self::RetryOnWriteWrite | Self::Serializable)
    }
    pub fn locks_cells(self) -> bool {
        matches!(self, Self::RetryOnWriteWriteCell | Self::SerializableCell)
    }
    pub fn checks_write_write(self) -> bool {
        !matches!(self, Self::IgnoreAll)
    }
    pub fn checks_read_write(self) -> bool {
        matches!(self, Self::Serializable | Self::SerializableCell)
    }
    fn code(self) -> u8 {
        match self {
            Self::IgnoreAll => 0,
            Self::RetryOnWriteWrite => 1,
            Self::RetryOnWriteWriteCell => 2,
            Self::Serializable => 3,
            Self::SerializableCell => 4,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        [
            Self::IgnoreAll,
            Self::RetryOnWriteWrite,
            Self::RetryOnWriteWriteCell,
            Self::Serializable,
            Self::SerializableCell,
        ]
        .into_iter()
        .find(|h| h.code() == code)
    }
}

/// Which old versions sweep may remove.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SweepStrategy {
    /// Never swept.
    Nothing,
    /// Keeps the newest committed version below the sweep timestamp plus a sentinel.
    #[default]
    Conservative,
    /// Also removes trailing tombstones and sentinels (readers must hold a lock).
    Thorough,
}

impl SweepStrategy {
    fn code(self) -> u8 {
        match self {
            Self::Nothing => 0,
            Self::Conservative => 1,
            Self::Thorough => 2,
        }
    }
    fn from_code(code: u8) -> Option<Self> {
        [Self::Nothing, Self::Conservative, Self::Thorough]
            .into_iter()
            .find(|s| s.code() == code)
    }
}

/// A transactional table's settings.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableMetadata {
    pub conflict_handler: ConflictHandler,
    pub sweep_strategy: SweepStrategy,
}

const FORMAT_VERSION: u8 = 1;

impl TableMetadata {
    pub fn encode(&self) -> Vec<u8> {
        vec![
            FORMAT_VERSION,
            self.conflict_handler.code(),
            self.sweep_strategy.code(),
        ]
    }

    /// Decodes stored metadata; empty bytes (a table created below this layer) give defaults.
    pub fn decode(bytes: &[u8]) -> Result<Self, KvsError> {
        match bytes {
            [] => Ok(Self::default()),
            [FORMAT_VERSION, handler, strategy] => {
                match (
                    ConflictHandler::from_code(*handler),
                    SweepStrategy::from_code(*strategy),
                ) {
                    (Some(conflict_handler), Some(sweep_strategy)) => Ok(Self {
                        conflict_handler,
                        sweep_strategy,
                    }),
                    _ => Err(KvsError::Corruption {
                        detail: format!("unknown table metadata codes {bytes:?}"),
                    }),
                }
            }
            _ => Err(KvsError::Corruption {
                detail: format!("unrecognised table metadata {bytes:?}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metadata_round_trips_and_rejects_garbage() {
        for conflict_handler in [
            ConflictHandler::IgnoreAll,
            ConflictHandler::SerializableCell,
        ] {
            for sweep_strategy in [SweepStrategy::Nothing, SweepStrategy::Thorough] {
                let m = TableMetadata {
                    conflict_handler,
                    sweep_strategy,
                };
                assert_eq!(TableMetadata::decode(&m.encode()).unwrap(), m);
            }
        }
        assert_eq!(
            TableMetadata::decode(b"").unwrap(),
            TableMetadata::default()
        );
        assert!(TableMetadata::decode(&[1, 9, 0]).is_err());
        assert!(TableMetadata::decode(&[2, 1, 1]).is_err());
    }
}
