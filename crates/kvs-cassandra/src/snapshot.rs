//! Raw snapshots of a Cassandra keyspace: `nodetool snapshot` on every node, one after another
//! (so, as the seed runbook warns, each node's copy is of a different moment), with each node's
//! SSTables copied out into `node<i>/<table>/` and the catalogue saved as `catalog.json`.
//!
//! A restore goes into an empty cluster (a new one after total loss): it recreates the keyspace
//! and tables (marked as being restored first), loads each node's SSTables into the matching
//! node with `nodetool import` — nothing of the old commit log or hints exists there, so
//! nothing after the snapshot is replayed — and then runs `nodetool repair --full` of
//! `_transactions` on every node, so every replica agrees on which transactions committed
//! before the runbook cleans the ones at or after B.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use ortelius_kvs::snapshot::{
    mark_restore_in_progress, Loaded, RestoreTarget, SnapshotFormat, SnapshotInfo,
    SnapshotProgress, SnapshotSource, TargetState, RESTORE_MARKER_TABLE,
};
use ortelius_kvs::{Cell, KeyValueService, KvsError, KvsResult, TableRef, Value};
use serde::{Deserialize, Serialize};

use crate::config::{CassandraConfig, NodeAccess};
use crate::cql::CATALOG;
use crate::{internal_name, CassandraKvs, Kind};

/// The store kind recorded in manifests.
pub const STORE_KIND: &str = "cassandra";
const CATALOG_FILE: &str = "catalog.json";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Catalog {
    keyspace: String,
    nodes: usize,
    tables: Vec<CatalogTable>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CatalogTable {
    name: String,
    internal: String,
    /// Hex.
    metadata: String,
}

fn hex(bytes: &[u8]) -> String {
    ortelius_kvs::snapshot::to_hex(bytes)
}

fn unhex(text: &str) -> KvsResult<Vec<u8>> {
    ortelius_kvs::snapshot::from_hex(text)
        .ok_or_else(|| corrupt(format!("{CATALOG_FILE} holds malformed metadata")))
}

fn corrupt(detail: impl Into<String>) -> KvsError {
    KvsError::Corruption {
        detail: detail.into(),
    }
}

fn io_error(what: &str, path: &Path, e: std::io::Error) -> KvsError {
    KvsError::Storage {
        detail: format!("{what} {}: {e}", path.display()),
    }
}

/// Runs nodetool against one node.
fn nodetool(node: &NodeAccess, args: &[&str]) -> KvsResult<String> {
    let (program, prefix) = node
        .nodetool
        .split_first()
        .ok_or_else(|| KvsError::Storage {
            detail: "a node's nodetool command is empty".to_owned(),
        })?;
    let out = Command::new(program)
        .args(prefix)
        .args(args)
        .output()
        .map_err(|e| KvsError::Storage {
            detail: format!("cannot run nodetool ({program}): {e}"),
        })?;
    if !out.status.success() {
        return Err(KvsError::Storage {
            detail: format!(
                "nodetool {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nodes(config: &CassandraConfig) -> KvsResult<&[NodeAccess]> {
    if config.nodes.is_empty() {
        return Err(KvsError::Storage {
            detail: "cassandra snapshots need keyValueService.nodes: each node's nodetool command and data directory".to_owned(),
        });
    }
    Ok(&config.nodes)
}

/// Links (or, across filesystems, copies) every file of `from` into `to`.
fn link_files(from: &Path, to: &Path, skip: &[&str]) -> KvsResult<u64> {
    std::fs::create_dir_all(to).map_err(|e| io_error("cannot create", to, e))?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).map_err(|e| io_error("cannot list", from, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", from, e))?;
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) || !entry.path().is_file() {
            continue;
        }
        let target = to.join(&name);
        if std::fs::hard_link(entry.path(), &target).is_err() {
            std::fs::copy(entry.path(), &target)
                .map_err(|e| io_error("cannot copy", &entry.path(), e))?;
        }
        bytes += entry.metadata().map_or(0, |m| m.len());
    }
    Ok(bytes)
}

/// The table directories of a keyspace on a node: (CQL table name, directory).
fn table_dirs(data_dir: &Path, keyspace: &str) -> KvsResult<Vec<(String, PathBuf)>> {
    let ks = data_dir.join(keyspace);
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&ks).map_err(|e| io_error("cannot list", &ks, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", &ks, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<table>-<32 hex digits of the table id>`
        if let Some((table, id)) = name.rsplit_once('-') {
            if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                out.push((table.to_owned(), entry.path()));
            }
        }
    }
    Ok(out)
}

/// Takes per-node snapshots of a live keyspace.
pub struct CassandraSnapshots {
    kvs: Arc<CassandraKvs>,
}

impl CassandraSnapshots {
    pub fn new(kvs: Arc<CassandraKvs>) -> Self {
        Self { kvs }
    }

    fn catalog(&self) -> KvsResult<Catalog> {
        let kvs = &self.kvs;
        let stmt = kvs.prepare(
            &format!(
                "SELECT internal, name, metadata FROM {}",
                kvs.qualified(CATALOG)
            ),
            Kind::Read,
        )?;
        let any = TableRef::system(CATALOG)?;
        let rows: Vec<(String, String, Option<Vec<u8>>)> = kvs.select_all(&any, &stmt, ())?;
        Ok(Catalog {
            keyspace: kvs.config.keyspace.clone(),
            nodes: kvs.config.nodes.len(),
            tables: rows
                .into_iter()
                .map(|(internal, name, metadata)| CatalogTable {
                    name,
                    internal,
                    metadata: hex(&metadata.unwrap_or_default()),
                })
                .collect(),
        })
    }
}

impl SnapshotSource for CassandraSnapshots {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn take(&self, dir: &Path, progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        let nodes = nodes(&self.kvs.config)?;
        if dir.exists() {
            return Err(KvsError::Storage {
                detail: format!(
                    "snapshot target {} already exists; choose a new directory",
                    dir.display()
                ),
            });
        }
        let mut info = SnapshotInfo::default();
        for node in 1..=nodes.len() {
            info.origins
                .extend(self.take_node(dir, node, &|_, _| {})?.origins);
            progress(node as u64, nodes.len() as u64);
        }
        Ok(info)
    }

    fn take_node(
        &self,
        dir: &Path,
        node: usize,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<SnapshotInfo> {
        let config = &self.kvs.config;
        let nodes = nodes(config)?;
        let access = node
            .checked_sub(1)
            .and_then(|i| nodes.get(i))
            .ok_or_else(|| KvsError::Storage {
                detail: format!(
                    "there is no node {node}: keyValueService.nodes lists nodes 1 to {}",
                    nodes.len()
                ),
            })?;
        let label = format!("node{node}");
        let into = dir.join(&label);
        if into.exists() {
            return Err(KvsError::Storage {
                detail: format!("{} already holds a snapshot of node {node}", into.display()),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        // The catalogue as of the first node's snapshot (tables are created before data).
        let catalog_path = dir.join(CATALOG_FILE);
        if !catalog_path.exists() {
            let text = serde_json::to_vec_pretty(&self.catalog()?).map_err(KvsError::storage)?;
            std::fs::write(&catalog_path, text)
                .map_err(|e| io_error("cannot write", &catalog_path, e))?;
        }
        let tag = format!(
            "ortelius-{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis())
        );
        take_node(access, &config.keyspace, &tag, &into)?;
        progress(1, 1);
        Ok(SnapshotInfo {
            origins: vec![(format!("{label}/"), label)],
        })
    }
}

/// Snapshots one node and copies its files into `into` (one directory per table).
pub fn take_node(node: &NodeAccess, keyspace: &str, tag: &str, into: &Path) -> KvsResult<()> {
    nodetool(node, &["snapshot", "-t", tag, "--", keyspace])?;
    let copied = (|| -> KvsResult<()> {
        for (table, table_dir) in table_dirs(&node.data_dir, keyspace)? {
            let snapshot = table_dir.join("snapshots").join(tag);
            if snapshot.is_dir() {
                link_files(&snapshot, &into.join(&table), &[])?;
            }
        }
        Ok(())
    })();
    // The node keeps no snapshot once it is copied (or the copy failed).
    let cleared = nodetool(node, &["clearsnapshot", "-t", tag, "--", keyspace]);
    copied?;
    cleared.map(drop)
}

/// A Cassandra cluster (its keyspace) to restore into.
pub struct CassandraTarget {
    config: CassandraConfig,
}

impl CassandraTarget {
    pub fn new(config: CassandraConfig) -> KvsResult<Self> {
        config.validate()?;
        Ok(Self { config })
    }
}

fn read_catalog(dir: &Path) -> KvsResult<Catalog> {
    let path = dir.join(CATALOG_FILE);
    let text = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
    let catalog: Catalog = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("{} is malformed: {e}", path.display())))?;
    for t in &catalog.tables {
        TableRef::parse(&t.name).map_err(|_| corrupt(format!("bad table name {:?}", t.name)))?;
        unhex(&t.metadata)?;
    }
    Ok(catalog)
}

impl RestoreTarget for CassandraTarget {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn describe(&self) -> String {
        self.config.describe()
    }

    fn state(&self) -> KvsResult<TargetState> {
        let (runtime, session) = crate::connect(&self.config)?;
        let tables: Vec<(String,)> = runtime
            .block_on(session.query_unpaged(
                "SELECT table_name FROM system_schema.tables WHERE keyspace_name = ?",
                (self.config.keyspace.as_str(),),
            ))
            .map_err(|e| {
                crate::cql::classify(&self.config.describe(), "inspect the keyspace", false, &e)
            })
            .and_then(crate::rows)?;
        if tables.is_empty() {
            return Ok(TargetState::Empty);
        }
        if !tables.iter().any(|(t,)| t == CATALOG) {
            return Ok(TargetState::HasData);
        }
        let kvs = CassandraKvs::open(&self.config)?;
        let names = kvs.list_tables()?;
        Ok(if names.iter().any(|t| t.name() == RESTORE_MARKER_TABLE) {
            TargetState::UnfinishedRestore
        } else if names.is_empty() {
            TargetState::Empty
        } else {
            TargetState::HasData
        })
    }

    fn load(
        &self,
        dir: &Path,
        _snapshot_id: &str,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<Loaded> {
        let catalog = read_catalog(dir)?;
        let targets = nodes(&self.config)?;
        let snapshot_nodes: Vec<PathBuf> = (1..)
            .map(|i| dir.join(format!("node{i}")))
            .take_while(|p| p.is_dir())
            .collect();
        if snapshot_nodes.len() > targets.len() {
            return Err(KvsError::Storage {
                detail: format!(
                    "the snapshot has {} nodes but keyValueService.nodes lists {}; restore into a cluster with at least as many nodes",
                    snapshot_nodes.len(),
                    targets.len()
                ),
            });
        }
        {
            let (runtime, session) = crate::connect(&self.config)?;
            runtime
                .block_on(session.query_unpaged(
                    format!("DROP KEYSPACE IF EXISTS \"{}\"", self.config.keyspace),
                    (),
                ))
                .map_err(|e| {
                    crate::cql::classify(&self.config.describe(), "drop the keyspace", true, &e)
                })?;
        }
        let kvs = CassandraKvs::open(&self.config)?;
        // Marked before any data is there: nothing uses the store until the restore finishes.
        mark_restore_in_progress(&kvs, &dir.display().to_string())?;
        for t in &catalog.tables {
            if t.name == RESTORE_MARKER_TABLE {
                continue;
            }
            kvs.create_table(&TableRef::parse(&t.name)?, &unhex(&t.metadata)?)?;
        }
        let total = snapshot_nodes.len() as u64 + 1;
        for (i, (from, node)) in snapshot_nodes.iter().zip(targets).enumerate() {
            import_node(node, &self.config.keyspace, from)?;
            progress(i as u64 + 1, total);
        }
        // Replicas snapshotted at different moments disagree: make them agree on which
        // transactions committed, before the restore cleans those at or after B.
        let transactions = internal_name(&TableRef::system("_transactions")?);
        if catalog.tables.iter().any(|t| t.internal == transactions) {
            for node in targets {
                nodetool(
                    node,
                    &[
                        "repair",
                        "--full",
                        "--",
                        &self.config.keyspace,
                        &transactions,
                    ],
                )?;
            }
        }
        progress(total, total);
        Ok(Loaded::default())
    }

    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>> {
        Ok(Arc::new(CassandraKvs::open(&self.config)?))
    }
}

/// Loads one node's snapshot files into that node's tables (`nodetool import`, which moves
/// them from a staging directory next to the node's data).
pub fn import_node(node: &NodeAccess, keyspace: &str, from: &Path) -> KvsResult<()> {
    let staging_root = node
        .data_dir
        .parent()
        .unwrap_or(&node.data_dir)
        .join("ortelius-import");
    for entry in std::fs::read_dir(from).map_err(|e| io_error("cannot list", from, e))? {
        let entry = entry.map_err(|e| io_error("cannot list", from, e))?;
        let table = entry.file_name().to_string_lossy().into_owned();
        if table == CATALOG || table == RESTORE_MARKER_TABLE || !entry.path().is_dir() {
            continue;
        }
        let staging = staging_root.join(keyspace).join(&table);
        let _ = std::fs::remove_dir_all(&staging);
        link_files(&entry.path(), &staging, &["manifest.json", "schema.cql"])?;
        let has_data = std::fs::read_dir(&staging)
            .map(|d| {
                d.filter_map(Result::ok)
                    .any(|e| e.file_name().to_string_lossy().ends_with("-Data.db"))
            })
            .unwrap_or(false);
        if has_data {
            let staged = staging.to_string_lossy().into_owned();
            nodetool(node, &["import", "--", keyspace, &table, &staged])?;
        }
        let _ = std::fs::remove_dir_all(&staging);
    }
    Ok(())
}

/// Reads Cassandra snapshots without a server: the catalogue and the SSTable files' presence
/// (SSTables themselves are checked by their own CRC files when a node imports them).
pub struct CassandraFormat;

impl SnapshotFormat for CassandraFormat {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn verify(&self, dir: &Path) -> KvsResult<u64> {
        read_catalog(dir)?;
        let mut sstables = 0;
        for i in 1.. {
            let node = dir.join(format!("node{i}"));
            if !node.is_dir() {
                if i == 1 {
                    return Err(corrupt("the snapshot holds no node directory"));
                }
                break;
            }
            for table in std::fs::read_dir(&node).map_err(|e| io_error("cannot list", &node, e))? {
                let table = table.map_err(|e| io_error("cannot list", &node, e))?.path();
                for file in
                    std::fs::read_dir(&table).map_err(|e| io_error("cannot list", &table, e))?
                {
                    let name = file
                        .map_err(|e| io_error("cannot list", &table, e))?
                        .file_name()
                        .to_string_lossy()
                        .into_owned();
                    if let Some(base) = name.strip_suffix("-Data.db") {
                        for component in ["-Statistics.db", "-TOC.txt"] {
                            if !table.join(format!("{base}{component}")).exists() {
                                return Err(corrupt(format!(
                                    "{} lacks {base}{component}",
                                    table.display()
                                )));
                            }
                        }
                        sstables += 1;
                    }
                }
            }
        }
        Ok(sstables)
    }

    fn scan_table(
        &self,
        _dir: &Path,
        _table: &TableRef,
        _visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()> {
        Err(KvsError::Unsupported {
            operation: "reading SSTables without a server",
            backend: STORE_KIND,
        })
    }
}
