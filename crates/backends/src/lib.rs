//! The backends registry: the one place that names Ortelius's backends.
//!
//! The config's `keyValueService` block ([`StoreConfig`], tagged by `type`) maps to a backend:
//! [`open`] gives the store and its raw-snapshot source, [`restore_target`] a store to restore
//! into, [`snapshot_format`] a reader for a backup's raw snapshot by its store kind. The CLI,
//! the management server and the backup layer use backends only through this crate and the
//! traits of `ortelius-kvs`; adding a backend is one crate plus one arm in each match here
//! (and one Cargo feature).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::snapshot::{
    ensure_no_unfinished_restore, RestoreTarget, SnapshotFormat, SnapshotInfo, SnapshotProgress,
    SnapshotSource, TargetState,
};
use ortelius_kvs::{KeyValueService, KvsError, KvsResult};
use serde::Deserialize;

/// The `keyValueService` block of the config: which store, and how to reach it.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum StoreConfig {
    /// An in-memory store (nothing persists; for trying things out).
    Memory {},
    /// The embedded RocksDB store.
    #[cfg(feature = "rocksdb")]
    Rocksdb {
        #[serde(rename = "dataDir")]
        data_dir: PathBuf,
    },
    /// A PostgreSQL database (one schema).
    #[cfg(feature = "postgres")]
    Postgres(ortelius_kvs_postgres::PostgresConfig),
    /// AtlasDB's `relational` block with a postgres connection.
    #[cfg(feature = "postgres")]
    Relational(ortelius_kvs_postgres::RelationalConfig),
    /// An Apache Cassandra cluster (one keyspace).
    #[cfg(feature = "cassandra")]
    Cassandra(ortelius_kvs_cassandra::CassandraConfig),
    /// An etcd cluster (one key prefix).
    #[cfg(feature = "etcd")]
    Etcd(ortelius_kvs_etcd::EtcdConfig),
}

impl StoreConfig {
    /// The store kind (`memory`, `rocksdb`, ...), as recorded in backup manifests.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory {} => "memory",
            #[cfg(feature = "rocksdb")]
            Self::Rocksdb { .. } => ortelius_kvs_rocksdb::snapshot::STORE_KIND,
            #[cfg(feature = "postgres")]
            Self::Postgres(_) | Self::Relational(_) => ortelius_kvs_postgres::snapshot::STORE_KIND,
            #[cfg(feature = "cassandra")]
            Self::Cassandra(_) => ortelius_kvs_cassandra::snapshot::STORE_KIND,
            #[cfg(feature = "etcd")]
            Self::Etcd(_) => ortelius_kvs_etcd::snapshot::STORE_KIND,
        }
    }

    /// Where the store is, for messages (never includes a password).
    pub fn describe(&self) -> String {
        match self {
            Self::Memory {} => "an in-memory store".to_owned(),
            #[cfg(feature = "rocksdb")]
            Self::Rocksdb { data_dir } => format!("the RocksDB store at {}", data_dir.display()),
            #[cfg(feature = "postgres")]
            Self::Postgres(c) => c.describe(),
            #[cfg(feature = "postgres")]
            Self::Relational(r) => r
                .to_postgres()
                .map_or_else(|e| e.to_string(), |c| c.describe()),
            #[cfg(feature = "cassandra")]
            Self::Cassandra(c) => c.describe(),
            #[cfg(feature = "etcd")]
            Self::Etcd(c) => c.describe(),
        }
    }
}

/// An open store: the key-value service and where its raw snapshots come from.
#[derive(Clone)]
pub struct Backend {
    pub kvs: Arc<dyn KeyValueService>,
    pub snapshots: Arc<dyn SnapshotSource>,
}

/// Opens the configured store, creating it if it does not exist. Refuses a store whose
/// restore began and did not finish.
pub fn open(config: &StoreConfig) -> KvsResult<Backend> {
    let backend = open_unchecked(config)?;
    ensure_no_unfinished_restore(&*backend.kvs, &config.describe())?;
    Ok(backend)
}

/// Opens the configured store, which must exist: a missing one (a mistyped `dataDir`, schema,
/// prefix or keyspace) is refused with [`KvsError::StoreMissing`] and nothing is created.
/// For every command that reads or backs up a store rather than creating one.
pub fn open_existing(config: &StoreConfig) -> KvsResult<Backend> {
    if !matches!(config, StoreConfig::Memory {})
        && store_target(config)?.state()? == TargetState::Empty
    {
        return Err(KvsError::StoreMissing {
            store: config.describe(),
        });
    }
    open(config)
}

fn open_unchecked(config: &StoreConfig) -> KvsResult<Backend> {
    match config {
        StoreConfig::Memory {} => Ok(Backend {
            kvs: Arc::new(MemoryKvs::new()),
            snapshots: Arc::new(NoSnapshots("memory")),
        }),
        #[cfg(feature = "rocksdb")]
        StoreConfig::Rocksdb { data_dir } => {
            use ortelius_kvs_rocksdb::{snapshot::RocksDbSnapshots, RocksDbConfig, RocksDbKvs};
            let kvs = Arc::new(RocksDbKvs::open(data_dir, &RocksDbConfig::default())?);
            Ok(Backend {
                kvs: kvs.clone(),
                snapshots: Arc::new(RocksDbSnapshots::new(kvs)),
            })
        }
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(_) | StoreConfig::Relational(_) => {
            use ortelius_kvs_postgres::{snapshot::PostgresSnapshots, PostgresKvs};
            let kvs = Arc::new(PostgresKvs::open(&postgres_config(config)?)?);
            Ok(Backend {
                kvs: kvs.clone(),
                snapshots: Arc::new(PostgresSnapshots::new(kvs)),
            })
        }
        #[cfg(feature = "cassandra")]
        StoreConfig::Cassandra(c) => {
            use ortelius_kvs_cassandra::{snapshot::CassandraSnapshots, CassandraKvs};
            let kvs = Arc::new(CassandraKvs::open(c)?);
            Ok(Backend {
                kvs: kvs.clone(),
                snapshots: Arc::new(CassandraSnapshots::new(kvs)),
            })
        }
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(c) => {
            use ortelius_kvs_etcd::{snapshot::EtcdSnapshots, EtcdKvs};
            let kvs = Arc::new(EtcdKvs::open(c)?);
            Ok(Backend {
                kvs: kvs.clone(),
                snapshots: Arc::new(EtcdSnapshots::new(kvs)),
            })
        }
    }
}

/// The PostgreSQL config of either postgres block.
#[cfg(feature = "postgres")]
fn postgres_config(config: &StoreConfig) -> KvsResult<ortelius_kvs_postgres::PostgresConfig> {
    match config {
        StoreConfig::Postgres(c) => Ok(c.clone()),
        StoreConfig::Relational(r) => r.to_postgres(),
        _ => Err(KvsError::Unsupported {
            operation: "a postgres connection",
            backend: config.kind(),
        }),
    }
}

/// The configured store as a restore target (nothing is opened or created yet). An etcd
/// configuration with a `rebuild` block names the data directories of a new cluster instead.
pub fn restore_target(config: &StoreConfig) -> KvsResult<Box<dyn RestoreTarget>> {
    #[cfg(feature = "etcd")]
    if let StoreConfig::Etcd(c) = config {
        if c.rebuild.is_some() {
            return Ok(Box::new(ortelius_kvs_etcd::rebuild::EtcdRebuild::new(
                c.clone(),
            )?));
        }
    }
    store_target(config)
}

/// The store the configuration names, as it runs now, as a restore target.
fn store_target(config: &StoreConfig) -> KvsResult<Box<dyn RestoreTarget>> {
    match config {
        StoreConfig::Memory {} => Err(KvsError::Unsupported {
            operation: "restore (a memory store has nowhere to restore into)",
            backend: "memory",
        }),
        #[cfg(feature = "rocksdb")]
        StoreConfig::Rocksdb { data_dir } => Ok(Box::new(
            ortelius_kvs_rocksdb::snapshot::RocksDbTarget::new(
                data_dir,
                ortelius_kvs_rocksdb::RocksDbConfig::default(),
            ),
        )),
        #[cfg(feature = "postgres")]
        StoreConfig::Postgres(_) | StoreConfig::Relational(_) => Ok(Box::new(
            ortelius_kvs_postgres::snapshot::PostgresTarget::new(postgres_config(config)?)?,
        )),
        #[cfg(feature = "cassandra")]
        StoreConfig::Cassandra(c) => Ok(Box::new(
            ortelius_kvs_cassandra::snapshot::CassandraTarget::new(c.clone())?,
        )),
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd(c) => Ok(Box::new(ortelius_kvs_etcd::snapshot::EtcdTarget::new(
            c.clone(),
        )?)),
    }
}

/// A reader for raw snapshots of `store_kind` (from a backup manifest), if this build has it.
pub fn snapshot_format(store_kind: &str) -> Option<Box<dyn SnapshotFormat>> {
    match store_kind {
        #[cfg(feature = "rocksdb")]
        ortelius_kvs_rocksdb::snapshot::STORE_KIND => {
            Some(Box::new(ortelius_kvs_rocksdb::snapshot::RocksDbFormat))
        }
        #[cfg(feature = "postgres")]
        ortelius_kvs_postgres::snapshot::STORE_KIND => {
            Some(Box::new(ortelius_kvs_postgres::snapshot::PostgresFormat))
        }
        #[cfg(feature = "cassandra")]
        ortelius_kvs_cassandra::snapshot::STORE_KIND => {
            Some(Box::new(ortelius_kvs_cassandra::snapshot::CassandraFormat))
        }
        #[cfg(feature = "etcd")]
        ortelius_kvs_etcd::snapshot::STORE_KIND => {
            Some(Box::new(ortelius_kvs_etcd::snapshot::EtcdFormat))
        }
        _ => None,
    }
}

/// The snapshot source of a store that cannot be snapshotted.
struct NoSnapshots(&'static str);

impl SnapshotSource for NoSnapshots {
    fn store_kind(&self) -> &'static str {
        self.0
    }

    fn take(&self, _dir: &Path, _progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        Err(KvsError::Unsupported {
            operation: "snapshot (nothing persists; use a persistent store to take backups)",
            backend: self.0,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(json: &str) -> Result<StoreConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn configs_map_to_backends_and_unknown_types_are_named() {
        assert_eq!(
            parse(r#"{"type": "memory"}"#).unwrap(),
            StoreConfig::Memory {}
        );
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::Rocksdb {
            data_dir: dir.path().join("db"),
        };
        let backend = open(&config).unwrap();
        assert_eq!(backend.kvs.backend_name(), "rocksdb");
        assert_eq!(backend.snapshots.store_kind(), config.kind());
        assert!(snapshot_format("rocksdb").is_some() && snapshot_format("nope").is_none());
        let err = parse(r#"{"type": "dynamo"}"#).unwrap_err().to_string();
        assert!(err.contains("dynamo") && err.contains("rocksdb"), "{err}");
        let err = parse(r#"{"type": "rocksdb", "dataDirr": "/x"}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("dataDirr"), "{err}");
    }

    #[test]
    fn a_store_with_an_unfinished_restore_refuses_to_open() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::Rocksdb {
            data_dir: dir.path().join("db"),
        };
        {
            let backend = open(&config).unwrap();
            ortelius_kvs::snapshot::mark_restore_in_progress(&*backend.kvs, "test").unwrap();
        }
        let err = open(&config).err().unwrap();
        assert!(
            matches!(err, KvsError::UnfinishedRestore { .. }) && err.to_string().contains("db"),
            "{err}"
        );
        assert_eq!(
            restore_target(&config).unwrap().state().unwrap(),
            ortelius_kvs::snapshot::TargetState::UnfinishedRestore
        );
    }

    #[test]
    fn a_missing_store_is_refused_and_not_created_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig::Rocksdb {
            data_dir: dir.path().join("mistyped"),
        };
        let err = open_existing(&config).err().unwrap();
        assert!(
            matches!(err, KvsError::StoreMissing { .. }) && err.to_string().contains("mistyped"),
            "{err}"
        );
        assert!(!dir.path().join("mistyped").exists(), "nothing is created");
        drop(open(&config).unwrap());
        drop(open_existing(&config).unwrap());
        assert!(open_existing(&StoreConfig::Memory {}).is_ok());
    }
}
