//! Raw snapshots of a PostgreSQL store: one binary `COPY` file per table plus `snapshot.json`
//! (the catalogue and the table-id sequence), taken in parallel from one exported snapshot so
//! every table is read at the same instant while writers go on (what `pg_dump -j` does).
//! A restore loads the files into a staging schema, builds the primary keys, marks the store as
//! being restored and then swaps the staging schema in with one transaction. Deep verification
//! reads the files without a server.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ortelius_kvs::snapshot::{
    mark_restore_in_progress, Loaded, ProgressCount, RestoreTarget, SnapshotFormat, SnapshotInfo,
    SnapshotProgress, SnapshotSource, TargetState, RESTORE_MARKER_TABLE,
};
use ortelius_kvs::{
    validate_name, validate_version_ts, Cell, KeyValueService, KvsError, KvsResult, TableRef, Value,
};
use postgres::{Client, IsolationLevel, NoTls};
use serde::{Deserialize, Serialize};

use crate::config::PostgresConfig;
use crate::pool::{classify, Phase};
use crate::{sql, PostgresKvs};

/// The store kind recorded in manifests.
pub const STORE_KIND: &str = "postgres";
const SNAPSHOT_FILE: &str = "snapshot.json";
const FORMAT: u32 = 1;
/// Most connections a snapshot or a restore uses at once.
const MAX_WORKERS: usize = 4;
const COPY_SIGNATURE: &[u8; 11] = b"PGCOPY\n\xff\r\n\0";

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotManifest {
    format: u32,
    /// The table-id sequence: ids at or below it were handed out.
    last_table_id: i64,
    tables: Vec<SnapshotTable>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SnapshotTable {
    id: i64,
    name: String,
    /// Hex.
    metadata: String,
    file: String,
}

fn hex(bytes: &[u8]) -> String {
    ortelius_kvs::snapshot::to_hex(bytes)
}

fn unhex(text: &str) -> KvsResult<Vec<u8>> {
    ortelius_kvs::snapshot::from_hex(text)
        .ok_or_else(|| corrupt(format!("{SNAPSHOT_FILE} holds malformed metadata")))
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

fn connect(config: &PostgresConfig) -> KvsResult<Client> {
    config
        .client_config(false)?
        .connect(NoTls)
        .map_err(|e| crate::pool::connect_error(&config.describe(), &e))
}

/// Runs `work` for each item on up to `workers` threads (each with its own state from
/// `setup`); stops at the first error.
fn parallel<T: Sync, S>(
    items: &[T],
    workers: usize,
    setup: impl Fn() -> KvsResult<S> + Sync,
    work: impl Fn(&mut S, &T) -> KvsResult<()> + Sync,
) -> KvsResult<()> {
    let next = AtomicUsize::new(0);
    let failure: Mutex<Option<KvsError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                let run = || -> KvsResult<()> {
                    let mut state = setup()?;
                    loop {
                        if failure.lock().map(|f| f.is_some()).unwrap_or(true) {
                            return Ok(());
                        }
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        let Some(item) = items.get(i) else {
                            return Ok(());
                        };
                        work(&mut state, item)?;
                    }
                };
                if let Err(e) = run() {
                    if let Ok(mut f) = failure.lock() {
                        f.get_or_insert(e);
                    }
                }
            });
        }
    });
    match failure.into_inner() {
        Ok(None) => Ok(()),
        Ok(Some(e)) => Err(e),
        Err(_) => Err(KvsError::Storage {
            detail: "a snapshot worker panicked".to_owned(),
        }),
    }
}

/// Takes snapshots of an open PostgreSQL store.
pub struct PostgresSnapshots {
    kvs: Arc<PostgresKvs>,
}

impl PostgresSnapshots {
    pub fn new(kvs: Arc<PostgresKvs>) -> Self {
        Self { kvs }
    }
}

impl SnapshotSource for PostgresSnapshots {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn take(&self, dir: &Path, progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        let config = self.kvs.config();
        let store = config.describe();
        if dir.exists() {
            return Err(KvsError::Storage {
                detail: format!(
                    "snapshot target {} already exists; choose a new directory",
                    dir.display()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let store = store.as_str();
        let failed = |operation: &'static str| {
            move |e: postgres::Error| classify(store, operation, Phase::NotApplied, &e)
        };
        // The leader exports a snapshot and keeps its transaction open until every worker has
        // attached to it; the workers then read all tables as of that one instant.
        let mut leader = connect(config)?;
        let mut tx = leader
            .build_transaction()
            .isolation_level(IsolationLevel::RepeatableRead)
            .read_only(true)
            .start()
            .map_err(failed("begin the snapshot"))?;
        let snapshot_id: String = tx
            .query_one("SELECT pg_export_snapshot()", &[])
            .and_then(|r| r.try_get(0))
            .map_err(failed("export the snapshot"))?;
        let schema = &config.schema;
        let catalog = tx
            .query(
                &format!("SELECT id, name, metadata FROM \"{schema}\".catalog ORDER BY id"),
                &[],
            )
            .map_err(failed("read the catalogue"))?;
        let last_table_id: i64 = tx
            .query_one(
                &format!("SELECT last_value FROM \"{schema}\".table_ids"),
                &[],
            )
            .and_then(|r| r.try_get(0))
            .map_err(failed("read the table-id sequence"))?;
        let mut tables = Vec::with_capacity(catalog.len());
        for row in &catalog {
            let id: i64 = row.try_get(0).map_err(failed("read the catalogue"))?;
            let name: String = row.try_get(1).map_err(failed("read the catalogue"))?;
            let metadata: Vec<u8> = row.try_get(2).map_err(failed("read the catalogue"))?;
            tables.push(SnapshotTable {
                id,
                name,
                metadata: hex(&metadata),
                file: format!("t_{id}.copy"),
            });
        }
        let done = ProgressCount::new();
        let total = tables.len() as u64;
        parallel(
            &tables,
            MAX_WORKERS.min(config.pool_size),
            || {
                let mut client = connect(config)?;
                client
                    .batch_execute(&format!(
                        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{snapshot_id}'"
                    ))
                    .map_err(failed("attach to the snapshot"))?;
                Ok(client)
            },
            |client, table| {
                let path = dir.join(&table.file);
                let rel = sql::relation(schema, table.id);
                let mut out = BufWriter::new(
                    File::create(&path).map_err(|e| io_error("cannot write", &path, e))?,
                );
                let mut reader = client
                    .copy_out(&format!(
                        "COPY (SELECT row_name, col_name, ts, val FROM {rel}) TO STDOUT (FORMAT binary)"
                    ))
                    .map_err(failed("copy a table out"))?;
                std::io::copy(&mut reader, &mut out)
                    .map_err(|e| io_error("cannot copy a table into", &path, e))?;
                drop(reader);
                out.into_inner()
                    .map_err(|e| io_error("cannot write", &path, e.into_error()))?
                    .sync_all()
                    .map_err(|e| io_error("cannot sync", &path, e))?;
                done.add(1, |now| progress(now, total));
                Ok(())
            },
        )?;
        tx.commit().map_err(failed("finish the snapshot"))?;
        let manifest = SnapshotManifest {
            format: FORMAT,
            last_table_id,
            tables,
        };
        let text = serde_json::to_vec_pretty(&manifest).map_err(KvsError::storage)?;
        let path = dir.join(SNAPSHOT_FILE);
        let mut f = File::create(&path).map_err(|e| io_error("cannot write", &path, e))?;
        f.write_all(&text)
            .and_then(|()| f.sync_all())
            .map_err(|e| io_error("cannot write", &path, e))?;
        progress(total, total);
        Ok(SnapshotInfo::default())
    }
}

fn read_manifest(dir: &Path) -> KvsResult<SnapshotManifest> {
    let path = dir.join(SNAPSHOT_FILE);
    let text = std::fs::read(&path).map_err(|e| io_error("cannot read", &path, e))?;
    let manifest: SnapshotManifest = serde_json::from_slice(&text)
        .map_err(|e| corrupt(format!("{} is malformed: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(corrupt(format!(
            "{} has format {}; this build reads format {FORMAT}",
            path.display(),
            manifest.format
        )));
    }
    for t in &manifest.tables {
        TableRef::parse(&t.name).map_err(|_| corrupt(format!("bad table name {:?}", t.name)))?;
        if t.file != format!("t_{}.copy", t.id) {
            return Err(corrupt(format!("bad file name {:?}", t.file)));
        }
    }
    Ok(manifest)
}

/// A PostgreSQL schema a snapshot can be restored into.
pub struct PostgresTarget {
    config: PostgresConfig,
}

impl PostgresTarget {
    pub fn new(config: PostgresConfig) -> KvsResult<Self> {
        config.validate()?;
        Ok(Self { config })
    }

    fn staging(&self) -> String {
        format!("{}__restoring", self.config.schema)
    }

    fn failed<'a>(&'a self, operation: &'static str) -> impl Fn(postgres::Error) -> KvsError + 'a {
        move |e| classify(&self.config.describe(), operation, Phase::NotApplied, &e)
    }
}

impl RestoreTarget for PostgresTarget {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn describe(&self) -> String {
        self.config.describe()
    }

    fn state(&self) -> KvsResult<TargetState> {
        let mut client = connect(&self.config)?;
        let schema = &self.config.schema;
        let relations: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relkind = 'r'",
                &[schema],
            )
            .and_then(|r| r.try_get(0))
            .map_err(self.failed("inspect the schema"))?;
        if relations == 0 {
            return Ok(TargetState::Empty);
        }
        let has_catalog: bool = client
            .query_one(
                "SELECT to_regclass(format('%I.catalog', $1::text)) IS NOT NULL",
                &[schema],
            )
            .and_then(|r| r.try_get(0))
            .map_err(self.failed("inspect the schema"))?;
        if !has_catalog {
            return Ok(TargetState::HasData);
        }
        let names: Vec<String> = client
            .query(&format!("SELECT name FROM \"{schema}\".catalog"), &[])
            .map_err(self.failed("read the catalogue"))?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(self.failed("read the catalogue"))?;
        Ok(if names.iter().any(|n| n == RESTORE_MARKER_TABLE) {
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
        let manifest = read_manifest(dir)?;
        let (schema, staging) = (self.config.schema.clone(), self.staging());
        let mut client = connect(&self.config)?;
        client
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS \"{staging}\" CASCADE; CREATE SCHEMA \"{staging}\"; \
                 CREATE TABLE \"{staging}\".catalog (id bigint PRIMARY KEY, name text NOT NULL UNIQUE, metadata bytea NOT NULL); \
                 CREATE SEQUENCE \"{staging}\".table_ids"
            ))
            .map_err(self.failed("create the staging schema"))?;
        client
            .execute(
                &format!("SELECT setval('\"{staging}\".table_ids', $1)"),
                &[&manifest.last_table_id],
            )
            .map_err(self.failed("set the table-id sequence"))?;
        for t in &manifest.tables {
            let metadata = unhex(&t.metadata)?;
            client
                .execute(
                    &format!("INSERT INTO \"{staging}\".catalog (id, name, metadata) VALUES ($1, $2, $3)"),
                    &[&t.id, &t.name, &metadata],
                )
                .map_err(self.failed("fill the catalogue"))?;
            // Load first, index after: building the key once is faster than keeping it up.
            client
                .batch_execute(&format!(
                    "CREATE TABLE {} (row_name bytea NOT NULL, col_name bytea NOT NULL, ts bigint NOT NULL, val bytea NOT NULL)",
                    sql::relation(&staging, t.id)
                ))
                .map_err(self.failed("create a table"))?;
        }
        let sizes: Vec<u64> = manifest
            .tables
            .iter()
            .map(|t| std::fs::metadata(dir.join(&t.file)).map_or(0, |m| m.len()))
            .collect();
        let total: u64 = sizes.iter().sum();
        let done = ProgressCount::new();
        let indexed: Vec<(&SnapshotTable, u64)> = manifest.tables.iter().zip(sizes).collect();
        parallel(
            &indexed,
            MAX_WORKERS.min(self.config.pool_size),
            || connect(&self.config),
            |client, (table, size)| {
                let path: PathBuf = dir.join(&table.file);
                let rel = sql::relation(&staging, table.id);
                let mut input = BufReader::new(
                    File::open(&path).map_err(|e| io_error("cannot read", &path, e))?,
                );
                let mut writer = client
                    .copy_in(&format!("COPY {rel} FROM STDIN (FORMAT binary)"))
                    .map_err(self.failed("copy a table in"))?;
                std::io::copy(&mut input, &mut writer)
                    .map_err(|e| io_error("cannot load", &path, e))?;
                writer.finish().map_err(self.failed("copy a table in"))?;
                client
                    .batch_execute(&format!(
                        "ALTER TABLE {rel} ADD PRIMARY KEY (row_name, col_name, ts)"
                    ))
                    .map_err(self.failed("build a primary key"))?;
                done.add(*size, |now| progress(now, total));
                Ok(())
            },
        )?;
        {
            let staged = PostgresKvs::open(&PostgresConfig {
                schema: staging.clone(),
                pool_size: 1,
                ..self.config.clone()
            })?;
            mark_restore_in_progress(&staged, &dir.display().to_string())?;
        }
        let mut tx = client
            .transaction()
            .map_err(self.failed("swap in the restored schema"))?;
        tx.batch_execute(&format!(
            "DROP SCHEMA IF EXISTS \"{schema}\" CASCADE; ALTER SCHEMA \"{staging}\" RENAME TO \"{schema}\""
        ))
        .and_then(|()| tx.commit())
        .map_err(|e| classify(&self.config.describe(), "swap in the restored schema", Phase::Committing, &e))?;
        progress(total, total);
        Ok(Loaded::default())
    }

    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>> {
        Ok(Arc::new(PostgresKvs::open(&self.config)?))
    }
}

/// Reads PostgreSQL snapshots without a server.
pub struct PostgresFormat;

/// Reads one binary COPY file of `(row_name, col_name, ts, val)` tuples.
fn read_copy(path: &Path, visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>) -> KvsResult<u64> {
    let bad = |what: &str| corrupt(format!("{}: {what}", path.display()));
    let mut r = BufReader::new(File::open(path).map_err(|e| io_error("cannot read", path, e))?);
    let read = |r: &mut BufReader<File>, buf: &mut [u8]| {
        r.read_exact(buf)
            .map_err(|e| io_error("cannot read", path, e))
    };
    let mut signature = [0u8; 11];
    read(&mut r, &mut signature)?;
    if &signature != COPY_SIGNATURE {
        return Err(bad("not a binary COPY file"));
    }
    let mut word = [0u8; 4];
    read(&mut r, &mut word)?; // flags
    read(&mut r, &mut word)?;
    let extension = u32::from_be_bytes(word) as usize;
    if extension > 1 << 20 {
        return Err(bad("absurd header extension"));
    }
    let mut skip = vec![0u8; extension];
    read(&mut r, &mut skip)?;
    let mut tuples = 0u64;
    loop {
        let mut count = [0u8; 2];
        read(&mut r, &mut count)?;
        match i16::from_be_bytes(count) {
            -1 => break,
            4 => {}
            n => return Err(bad(&format!("a tuple with {n} fields, expected 4"))),
        }
        let mut fields: [Vec<u8>; 4] = Default::default();
        for field in &mut fields {
            read(&mut r, &mut word)?;
            let len = i32::from_be_bytes(word);
            let len = usize::try_from(len).map_err(|_| bad("a NULL field"))?;
            if len > 64 << 20 {
                return Err(bad("a field over 64 MiB"));
            }
            field.resize(len, 0);
            read(&mut r, field)?;
        }
        let [row, column, ts, val] = fields;
        let ts: [u8; 8] = ts
            .try_into()
            .map_err(|_| bad("a timestamp that is not 8 bytes"))?;
        let ts = i64::from_be_bytes(ts);
        validate_version_ts(ts, true).map_err(|e| bad(&e.to_string()))?;
        validate_name(&row, "row").map_err(|e| bad(&e.to_string()))?;
        validate_name(&column, "column").map_err(|e| bad(&e.to_string()))?;
        visit(Cell::new(row, column)?, Value::new(val, ts))?;
        tuples += 1;
    }
    let mut trailing = [0u8; 1];
    if r.read(&mut trailing)
        .map_err(|e| io_error("cannot read", path, e))?
        != 0
    {
        return Err(bad("data after the end marker"));
    }
    Ok(tuples)
}

impl SnapshotFormat for PostgresFormat {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn verify(&self, dir: &Path) -> KvsResult<u64> {
        let manifest = read_manifest(dir)?;
        let mut entries = 0;
        for t in &manifest.tables {
            unhex(&t.metadata)?;
            entries += read_copy(&dir.join(&t.file), &mut |_, _| Ok(()))?;
        }
        Ok(entries)
    }

    fn scan_table(
        &self,
        dir: &Path,
        table: &TableRef,
        visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()> {
        let manifest = read_manifest(dir)?;
        let name = table.qualified_name();
        let t = manifest
            .tables
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })?;
        read_copy(&dir.join(&t.file), visit).map(drop)
    }
}
