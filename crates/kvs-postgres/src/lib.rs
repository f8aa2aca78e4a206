//! The PostgreSQL backend of Ortelius, in the layout of AtlasDB's dbkvs.
//!
//! Every Ortelius table is one SQL table `"<schema>".t_<id>` with columns `(row_name bytea,
//! col_name bytea, ts bigint, val bytea)` and primary key `(row_name, col_name, ts)`; the
//! `catalog` table maps names to never-reused ids (from the `table_ids` sequence) and holds the
//! metadata, so PostgreSQL's 63-byte identifier limit never bites and a dropped-and-recreated
//! table starts empty. Point reads probe the index once per cell (a `LATERAL ... ORDER BY ts
//! DESC LIMIT 1` per cell, a batch in one round trip); range scans stream in pages along the
//! primary key (see `range`). `put_unless_exists` is `INSERT ... ON CONFLICT DO NOTHING` (all or nothing in
//! one transaction), `check_and_set` a conditional `UPDATE`. Data writes commit with
//! `synchronous_commit = off`, atomic operations with it on (see `pool`).

mod config;
mod pool;
mod range;
pub mod snapshot;
mod sql;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::RwLock;
use std::time::Duration;

use ortelius_kvs::{
    validate_read_ts, validate_version_ts, CandidateCell, CandidateCellsRequest, CandidatePage,
    Cell, CellIter, CellWrites, CheckAndSetRequest, ColumnRange, ColumnSelection, KeyValueService,
    KvsError, KvsResult, RangeRequest, RowIter, RowRange, TableRef, Timestamp,
    TimestampRangeDelete, Value, SWEEP_SENTINEL_TS,
};
use postgres::types::ToSql;

pub use config::{PostgresConfig, RelationalConfig, Secret};
use pool::{classify, is_missing_relation, Conn, Phase, Pool};

/// Cells per statement (AtlasDB batches 1000 cells).
const BATCH: usize = 1000;
/// How often a statement that failed transiently (a broken connection) is tried again.
const ATTEMPTS: u32 = 3;

#[derive(Clone, Debug)]
struct TableInfo {
    id: i64,
}

/// The PostgreSQL [`KeyValueService`].
pub struct PostgresKvs {
    config: PostgresConfig,
    describe: String,
    /// `synchronous_commit = off`: reads, data writes, deletes.
    plain: Pool,
    /// `synchronous_commit = on`: put-unless-exists, check-and-set, catalogue changes.
    atomic: Pool,
    tables: RwLock<BTreeMap<TableRef, TableInfo>>,
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "the postgres table cache lock was poisoned by a panic".to_owned(),
    }
}

fn corrupt(detail: impl Into<String>) -> KvsError {
    KvsError::Corruption {
        detail: detail.into(),
    }
}

/// Reads column `i` of a row, as a typed error on mismatch.
fn col<'a, T: postgres::types::FromSql<'a>>(row: &'a postgres::Row, i: usize) -> KvsResult<T> {
    row.try_get(i)
        .map_err(|e| corrupt(format!("unexpected result column {i}: {e}")))
}

fn split_cells<'a>(cells: impl Iterator<Item = &'a Cell>) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    cells.map(|c| (c.row(), c.column())).unzip()
}

impl PostgresKvs {
    /// Connects, creating the schema and catalogue if missing. Fails within the connect timeout
    /// with an error naming the server and database when the server cannot be reached or
    /// refuses the credentials.
    pub fn open(config: &PostgresConfig) -> KvsResult<Self> {
        config.validate()?;
        let describe = config.describe();
        let plain = Pool::new(
            config.client_config(false)?,
            describe.clone(),
            config.pool_size,
            config.connect_timeout,
        );
        let atomic = Pool::new(
            config.client_config(true)?,
            describe.clone(),
            config.pool_size,
            config.connect_timeout,
        );
        let kvs = Self {
            config: config.clone(),
            describe,
            plain,
            atomic,
            tables: RwLock::new(BTreeMap::new()),
        };
        kvs.ensure_schema()?;
        kvs.reload_catalog()?;
        Ok(kvs)
    }

    /// Where the store is, for messages.
    pub fn describe(&self) -> &str {
        &self.describe
    }

    pub fn config(&self) -> &PostgresConfig {
        &self.config
    }

    fn schema(&self) -> &str {
        &self.config.schema
    }

    fn catalog(&self) -> String {
        format!("\"{}\".catalog", self.schema())
    }

    fn lock_key(&self) -> String {
        format!("ortelius:{}", self.schema())
    }

    /// Runs `f` on a connection of `pool`, again on a fresh connection if it failed
    /// transiently (a server restart leaves every pooled connection broken).
    fn with_conn<T>(
        &self,
        pool: &Pool,
        operation: &'static str,
        phase: Phase,
        mut f: impl FnMut(&mut Conn) -> Result<T, postgres::Error>,
    ) -> KvsResult<T> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut conn = pool.get()?;
            match f(&mut conn) {
                Ok(v) => return Ok(v),
                Err(e) => {
                    let err = classify(&self.describe, operation, phase, &e);
                    if matches!(err, KvsError::Unavailable { .. }) && attempt < ATTEMPTS {
                        drop(conn);
                        std::thread::sleep(Duration::from_millis(50 * u64::from(attempt)));
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    fn ensure_schema(&self) -> KvsResult<()> {
        let (schema, catalog, key) = (self.schema().to_owned(), self.catalog(), self.lock_key());
        self.with_conn(&self.atomic, "create the schema", Phase::NotApplied, |conn| {
            let mut tx = conn.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
            tx.batch_execute(&format!(
                "CREATE SCHEMA IF NOT EXISTS \"{schema}\"; \
                 CREATE TABLE IF NOT EXISTS {catalog} (id bigint PRIMARY KEY, name text NOT NULL UNIQUE, metadata bytea NOT NULL); \
                 CREATE SEQUENCE IF NOT EXISTS \"{schema}\".table_ids"
            ))?;
            tx.commit()
        })
    }

    /// Reloads the table catalogue (other processes may have created or dropped tables).
    fn reload_catalog(&self) -> KvsResult<BTreeMap<TableRef, TableInfo>> {
        let sql = format!("SELECT name, id FROM {}", self.catalog());
        let rows = self.with_conn(
            &self.plain,
            "read the catalogue",
            Phase::NotApplied,
            |conn| {
                let stmt = conn.prepare(&sql)?;
                conn.client.query(&stmt, &[])
            },
        )?;
        let mut tables = BTreeMap::new();
        for row in &rows {
            let name: String = col(row, 0)?;
            let table = TableRef::parse(&name)
                .map_err(|_| corrupt(format!("malformed catalogue entry {name:?}")))?;
            tables.insert(table, TableInfo { id: col(row, 1)? });
        }
        *self.tables.write().map_err(|_| poisoned())? = tables.clone();
        Ok(tables)
    }

    /// The table's id, from the cache or (on a miss) the catalogue.
    fn table_id(&self, table: &TableRef) -> KvsResult<i64> {
        if let Some(info) = self.tables.read().map_err(|_| poisoned())?.get(table) {
            return Ok(info.id);
        }
        self.reload_catalog()?
            .get(table)
            .map(|t| t.id)
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })
    }

    fn relation(&self, table: &TableRef) -> KvsResult<String> {
        Ok(sql::relation(self.schema(), self.table_id(table)?))
    }

    /// Runs a statement on a table's relation; if the relation is gone (another process
    /// dropped the table), refreshes the catalogue and reports `TableNotFound` or tries the
    /// new relation once.
    fn on_table<T>(
        &self,
        table: &TableRef,
        pool: &Pool,
        operation: &'static str,
        phase: Phase,
        mut f: impl FnMut(&mut Conn, &str) -> Result<T, postgres::Error>,
    ) -> KvsResult<T> {
        let mut retried = false;
        loop {
            let rel = self.relation(table)?;
            let missing = std::cell::Cell::new(false);
            let result = self.with_conn(pool, operation, phase, |conn| {
                f(conn, &rel).inspect_err(|e| missing.set(is_missing_relation(e)))
            });
            if missing.get() && !retried {
                retried = true;
                if let Ok(mut cache) = self.tables.write() {
                    cache.remove(table);
                }
                continue;
            }
            return result;
        }
    }

    fn get_batch(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
        with_values: bool,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        let mut out = BTreeMap::new();
        if let [(cell, ts)] = cells {
            let found =
                self.on_table(table, &self.plain, "get", Phase::NotApplied, |conn, rel| {
                    let stmt = conn.prepare(&sql::get_cell(rel, with_values))?;
                    conn.client
                        .query_opt(&stmt, &[&cell.row(), &cell.column(), ts])
                })?;
            if let Some(row) = found {
                let contents = if with_values {
                    col(&row, 1)?
                } else {
                    Vec::new()
                };
                out.insert(cell.clone(), Value::new(contents, col(&row, 0)?));
            }
            return Ok(out);
        }
        for chunk in cells.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter().map(|(c, _)| c));
            let bounds: Vec<i64> = chunk.iter().map(|(_, ts)| *ts).collect();
            let found =
                self.on_table(table, &self.plain, "get", Phase::NotApplied, |conn, rel| {
                    let stmt = conn.prepare(&sql::get_cells(rel, with_values))?;
                    conn.client.query(&stmt, &[&rows, &cols, &bounds])
                })?;
            for row in &found {
                let i: i64 = col(row, 0)?;
                let (cell, _) = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| chunk.get(i))
                    .ok_or_else(|| corrupt("a cell ordinal out of range"))?;
                let contents = if with_values {
                    col(row, 2)?
                } else {
                    Vec::new()
                };
                out.insert(cell.clone(), Value::new(contents, col(row, 1)?));
            }
        }
        Ok(out)
    }

    /// Writes versions unless a (cell, ts) holds a different value (then nothing is written).
    /// With `reading_latest`, answers each cell's newest version as it was before the write,
    /// read by the same statements (a single statement, so all or nothing, for at most
    /// `BATCH` versions).
    fn put_versions(
        &self,
        table: &TableRef,
        versions: &[(&Cell, Timestamp, &[u8])],
        reading_latest: bool,
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        // Two different values for one (cell, ts) in the same call can never both hold.
        let mut seen: HashMap<(&Cell, Timestamp), &[u8]> = HashMap::new();
        for (cell, ts, value) in versions {
            if let Some(other) = seen.insert((cell, *ts), value) {
                if other != *value {
                    return Err(KvsError::ValueAlreadyWritten {
                        table: table.clone(),
                        cell: (*cell).clone(),
                        timestamp: *ts,
                    });
                }
            }
        }
        if let [(cell, ts, value)] = versions {
            let latest = self.put_version(table, cell, *ts, value, reading_latest)?;
            return Ok(latest.map(|ts| ((*cell).clone(), ts)).into_iter().collect());
        }
        let mut latest = BTreeMap::new();
        for chunk in versions.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter().map(|(c, _, _)| *c));
            let tss: Vec<i64> = chunk.iter().map(|(_, ts, _)| *ts).collect();
            let vals: Vec<&[u8]> = chunk.iter().map(|(_, _, v)| *v).collect();
            let answer =
                self.on_table(table, &self.plain, "put", Phase::Committing, |conn, rel| {
                    let stmt = conn.prepare(&sql::put_versions(rel, reading_latest))?;
                    conn.client.query(&stmt, &[&rows, &cols, &tss, &vals])
                })?;
            let mut inserted = Vec::new();
            for row in &answer {
                let kind: String = col(row, 0)?;
                let cell = Cell::new(col::<Vec<u8>>(row, 1)?, col::<Vec<u8>>(row, 2)?)?;
                let ts: i64 = col(row, 3)?;
                match kind.as_str() {
                    "d" => {
                        return Err(KvsError::ValueAlreadyWritten {
                            table: table.clone(),
                            cell,
                            timestamp: ts,
                        })
                    }
                    "l" => {
                        latest.insert(cell, ts);
                    }
                    _ => inserted.push((cell, ts)),
                }
            }
            let distinct: BTreeSet<(&Cell, Timestamp)> =
                chunk.iter().map(|(c, ts, _)| (*c, *ts)).collect();
            if inserted.len() < distinct.len() {
                self.check_rewrites(table, &rows, &cols, &tss, &vals, &inserted)?;
            }
        }
        Ok(latest)
    }

    /// [`Self::put_versions`] of one version, in simpler statements: an insert (with the
    /// newest version read alongside, if asked), and only if the version existed already, a
    /// read of its value.
    fn put_version(
        &self,
        table: &TableRef,
        cell: &Cell,
        ts: Timestamp,
        value: &[u8],
        reading_latest: bool,
    ) -> KvsResult<Option<Timestamp>> {
        let key: [&(dyn postgres::types::ToSql + Sync); 3] = [&cell.row(), &cell.column(), &ts];
        let params = [key[0], key[1], key[2], &value];
        let (inserted, latest) =
            self.on_table(table, &self.plain, "put", Phase::Committing, |conn, rel| {
                if reading_latest {
                    let stmt = conn.prepare(&sql::put_version_reading_latest(rel))?;
                    let row = conn.client.query_one(&stmt, &params)?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
                } else {
                    let stmt = conn.prepare(&sql::put_version(rel))?;
                    Ok((conn.client.query_opt(&stmt, &params)?.is_some(), None))
                }
            })?;
        if inserted {
            return Ok(latest);
        }
        let existing =
            self.on_table(table, &self.plain, "put", Phase::NotApplied, |conn, rel| {
                let stmt = conn.prepare(&sql::read_version(rel))?;
                conn.client.query_opt(&stmt, &key)
            })?;
        match existing {
            // Deleted meanwhile counts as written, as in `check_rewrites`.
            None => Ok(latest),
            Some(row) if col::<&[u8]>(&row, 0)? == value => Ok(latest),
            Some(_) => Err(KvsError::ValueAlreadyWritten {
                table: table.clone(),
                cell: cell.clone(),
                timestamp: ts,
            }),
        }
    }

    /// After a put skipped some versions that already existed: they must hold the same value.
    /// If one does not (a concurrent writer of the same version), the versions this put
    /// inserted are removed again and the put fails.
    #[allow(clippy::too_many_arguments)]
    fn check_rewrites(
        &self,
        table: &TableRef,
        rows: &[&[u8]],
        cols: &[&[u8]],
        tss: &[i64],
        vals: &[&[u8]],
        inserted: &[(Cell, Timestamp)],
    ) -> KvsResult<()> {
        let differing =
            self.on_table(table, &self.plain, "put", Phase::NotApplied, |conn, rel| {
                let stmt = conn.prepare(&sql::find_differing(rel))?;
                conn.client.query(&stmt, &[&rows, &cols, &tss, &vals])
            })?;
        let Some(row) = differing.first() else {
            return Ok(());
        };
        let cell = Cell::new(col::<Vec<u8>>(row, 0)?, col::<Vec<u8>>(row, 1)?)?;
        let timestamp: i64 = col(row, 2)?;
        self.delete(table, inserted)?;
        Err(KvsError::ValueAlreadyWritten {
            table: table.clone(),
            cell,
            timestamp,
        })
    }
}

impl KeyValueService for PostgresKvs {
    fn backend_name(&self) -> &'static str {
        "postgres"
    }

    fn shared_between_processes(&self) -> bool {
        true
    }

    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let (catalog, key, schema) = (self.catalog(), self.lock_key(), self.schema().to_owned());
        let name = table.qualified_name();
        let id = self.with_conn(&self.atomic, "create_table", Phase::Committing, |conn| {
            let mut tx = conn.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
            let existing = tx.query_opt(
                &format!("UPDATE {catalog} SET metadata = $2 WHERE name = $1 RETURNING id"),
                &[&name, &metadata],
            )?;
            let id: i64 = match existing {
                Some(row) => row.try_get(0)?,
                None => {
                    let id: i64 = tx
                        .query_one(&format!("SELECT nextval('\"{schema}\".table_ids')"), &[])?
                        .try_get(0)?;
                    tx.batch_execute(&sql::create_table(&sql::relation(&schema, id)))?;
                    tx.execute(
                        &format!("INSERT INTO {catalog} (id, name, metadata) VALUES ($1, $2, $3)"),
                        &[&id, &name, &metadata],
                    )?;
                    id
                }
            };
            tx.commit()?;
            Ok(id)
        })?;
        self.tables
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone(), TableInfo { id });
        Ok(())
    }

    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        let (catalog, key, schema) = (self.catalog(), self.lock_key(), self.schema().to_owned());
        let name = table.qualified_name();
        self.with_conn(&self.atomic, "drop_table", Phase::Committing, |conn| {
            let mut tx = conn.client.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&key])?;
            if let Some(row) = tx.query_opt(
                &format!("DELETE FROM {catalog} WHERE name = $1 RETURNING id"),
                &[&name],
            )? {
                let id: i64 = row.try_get(0)?;
                tx.batch_execute(&format!(
                    "DROP TABLE IF EXISTS {}",
                    sql::relation(&schema, id)
                ))?;
            }
            tx.commit()
        })?;
        self.tables.write().map_err(|_| poisoned())?.remove(table);
        Ok(())
    }

    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        self.on_table(
            table,
            &self.atomic,
            "truncate_table",
            Phase::Committing,
            |conn, rel| conn.client.batch_execute(&format!("TRUNCATE {rel}")),
        )
    }

    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        Ok(self.reload_catalog()?.into_keys().collect())
    }

    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        let sql = format!("SELECT metadata FROM {} WHERE name = $1", self.catalog());
        let name = table.qualified_name();
        let row = self.with_conn(&self.plain, "table_metadata", Phase::NotApplied, |conn| {
            let stmt = conn.prepare(&sql)?;
            conn.client.query_opt(&stmt, &[&name])
        })?;
        match row {
            Some(row) => col(&row, 0),
            None => Err(KvsError::TableNotFound {
                table: table.clone(),
            }),
        }
    }

    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let sql = format!(
            "UPDATE {} SET metadata = $2 WHERE name = $1",
            self.catalog()
        );
        let name = table.qualified_name();
        let updated = self.with_conn(
            &self.atomic,
            "put_table_metadata",
            Phase::Committing,
            |conn| {
                let stmt = conn.prepare(&sql)?;
                conn.client.execute(&stmt, &[&name, &metadata])
            },
        )?;
        if updated == 0 {
            return Err(KvsError::TableNotFound {
                table: table.clone(),
            });
        }
        Ok(())
    }

    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        self.table_id(table)?;
        self.get_batch(table, cells, true)
    }

    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        validate_read_ts(ts)?;
        self.table_id(table)?;
        let only = match columns {
            ColumnSelection::All => None,
            ColumnSelection::Only(cols) if cols.is_empty() => return Ok(BTreeMap::new()),
            ColumnSelection::Only(cols) => Some(cols.iter().map(Vec::as_slice).collect::<Vec<_>>()),
        };
        let mut out = BTreeMap::new();
        for chunk in rows.chunks(BATCH) {
            let chunk: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            let found = self.on_table(
                table,
                &self.plain,
                "get_rows",
                Phase::NotApplied,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::get_rows(rel, only.is_some()))?;
                    match &only {
                        Some(cols) => conn.client.query(&stmt, &[&chunk, &ts, cols]),
                        None => conn.client.query(&stmt, &[&chunk, &ts]),
                    }
                },
            )?;
            for row in &found {
                out.insert(
                    Cell::new(col::<Vec<u8>>(row, 0)?, col::<Vec<u8>>(row, 1)?)?,
                    Value::new(col::<Vec<u8>>(row, 3)?, col(row, 2)?),
                );
            }
        }
        Ok(out)
    }

    fn get_range<'a>(
        &'a self,
        table: &TableRef,
        request: &RangeRequest,
        ts: Timestamp,
    ) -> KvsResult<RowIter<'a>> {
        validate_read_ts(ts)?;
        self.table_id(table)?;
        Ok(Box::new(range::RangeScan::new(
            self,
            table.clone(),
            request.clone(),
            ts,
        )))
    }

    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>> {
        validate_read_ts(ts)?;
        self.table_id(table)?;
        Ok(Box::new(range::ColumnRangeScan::new(
            self,
            table.clone(),
            rows.to_vec(),
            columns.clone(),
            ts,
        )))
    }

    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        self.table_id(table)?;
        Ok(self
            .get_batch(table, cells, false)?
            .into_iter()
            .map(|(c, v)| (c, v.timestamp))
            .collect())
    }

    fn get_all_timestamps(
        &self,
        table: &TableRef,
        cells: &[Cell],
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Vec<Timestamp>>> {
        validate_read_ts(ts)?;
        self.table_id(table)?;
        let mut out: BTreeMap<Cell, Vec<Timestamp>> = BTreeMap::new();
        for chunk in cells.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter());
            let found = self.on_table(
                table,
                &self.plain,
                "get_all_timestamps",
                Phase::NotApplied,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::all_timestamps(rel))?;
                    conn.client.query(&stmt, &[&rows, &cols, &ts])
                },
            )?;
            for row in &found {
                let i: i64 = col(row, 0)?;
                let cell = usize::try_from(i - 1)
                    .ok()
                    .and_then(|i| chunk.get(i))
                    .ok_or_else(|| corrupt("a cell ordinal out of range"))?;
                out.entry(cell.clone()).or_default().push(col(row, 1)?);
            }
        }
        Ok(out)
    }

    fn get_candidate_cells_for_sweeping(
        &self,
        table: &TableRef,
        request: &CandidateCellsRequest,
    ) -> KvsResult<CandidatePage> {
        validate_read_ts(request.max_ts_exclusive)?;
        self.table_id(table)?;
        let batch = request.batch_size.clamp(1, 100_000);
        let limit = i64::try_from(batch + 1).unwrap_or(i64::MAX);
        let max = request.max_ts_exclusive;
        let found = self.on_table(
            table,
            &self.plain,
            "get_candidate_cells_for_sweeping",
            Phase::NotApplied,
            |conn, rel| {
                let stmt = conn.prepare(&sql::candidates(rel, request.start.is_some()))?;
                match &request.start {
                    Some(c) => conn
                        .client
                        .query(&stmt, &[&max, &limit, &c.row(), &c.column()]),
                    None => conn.client.query(&stmt, &[&max, &limit]),
                }
            },
        )?;
        let mut cells = Vec::new();
        let mut next_start = None;
        for (i, row) in found.iter().enumerate() {
            let cell = Cell::new(col::<Vec<u8>>(row, 0)?, col::<Vec<u8>>(row, 1)?)?;
            if i == batch {
                next_start = Some(cell);
                break;
            }
            let newest_first: Vec<i64> = col(row, 2)?;
            let empties: Vec<bool> = col(row, 3)?;
            let latest_is_empty = empties.first().copied().unwrap_or(false);
            let mut timestamps: Vec<Timestamp> = newest_first
                .into_iter()
                .filter(|ts| request.include_sentinels || *ts != SWEEP_SENTINEL_TS)
                .collect();
            if timestamps.is_empty() {
                continue;
            }
            timestamps.reverse();
            cells.push(CandidateCell {
                cell,
                timestamps,
                latest_is_empty,
            });
        }
        Ok(CandidatePage { cells, next_start })
    }

    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        self.table_id(table)?;
        let versions: Vec<(&Cell, Timestamp, &[u8])> =
            writes.iter().map(|(c, v)| (c, ts, v.as_slice())).collect();
        self.put_versions(table, &versions, false).map(drop)
    }

    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        // One table, one chunk: `put` is then one statement, all or nothing, where the
        // transaction below takes four round trips (begin, write, check, commit).
        if let [(table, cells)] = writes {
            if cells.len() <= BATCH {
                return self.put(table, cells, ts);
            }
        }
        let rels = writes
            .iter()
            .map(|(t, _)| self.relation(t))
            .collect::<KvsResult<Vec<String>>>()?;
        // All tables or none: one transaction; a difference found rolls everything back.
        let mut differing: Option<(usize, Cell, Timestamp)> = None;
        self.with_conn(&self.plain, "multi_put", Phase::Committing, |conn| {
            differing = None;
            let statements = rels
                .iter()
                .map(|rel| conn.prepare(&sql::put_versions(rel, false)))
                .collect::<Result<Vec<_>, _>>()?;
            let check = rels
                .iter()
                .map(|rel| conn.prepare(&sql::find_differing(rel)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut tx = conn.client.transaction()?;
            for (i, (_, cells)) in writes.iter().enumerate() {
                for chunk in cells.chunks(BATCH) {
                    let (rows, cols) = split_cells(chunk.iter().map(|(c, _)| c));
                    let tss = vec![ts; chunk.len()];
                    let vals: Vec<&[u8]> = chunk.iter().map(|(_, v)| v.as_slice()).collect();
                    let params: [&(dyn ToSql + Sync); 4] = [&rows, &cols, &tss, &vals];
                    tx.query(&statements[i], &params)?;
                    if let Some(row) = tx.query(&check[i], &params)?.first() {
                        let cell =
                            Cell::new(row.try_get::<_, Vec<u8>>(0)?, row.try_get::<_, Vec<u8>>(1)?);
                        if let Ok(cell) = cell {
                            differing = Some((i, cell, row.try_get(2)?));
                        }
                        return tx.rollback();
                    }
                }
            }
            tx.commit()
        })?;
        match differing {
            Some((i, cell, timestamp)) => Err(KvsError::ValueAlreadyWritten {
                table: writes[i].0.clone(),
                cell,
                timestamp,
            }),
            None => Ok(()),
        }
    }

    fn multi_put_reading_latest(
        &self,
        writes: &[(TableRef, CellWrites)],
        read_latest: &[bool],
        ts: Timestamp,
    ) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
        // One table, one chunk: one statement writes and reads, all or nothing.
        if let ([(table, cells)], [reading_latest]) = (writes, read_latest) {
            if cells.len() <= BATCH {
                validate_version_ts(ts, false)?;
                self.table_id(table)?;
                let versions: Vec<(&Cell, Timestamp, &[u8])> =
                    cells.iter().map(|(c, v)| (c, ts, v.as_slice())).collect();
                return Ok(vec![self.put_versions(
                    table,
                    &versions,
                    *reading_latest,
                )?]);
            }
        }
        ortelius_kvs::read_latest_then_multi_put(self, writes, read_latest, ts)
    }

    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        for (_, v) in values {
            validate_version_ts(v.timestamp, true)?;
        }
        self.table_id(table)?;
        let versions: Vec<(&Cell, Timestamp, &[u8])> = values
            .iter()
            .map(|(c, v)| (c, v.timestamp, v.contents.as_slice()))
            .collect();
        self.put_versions(table, &versions, false).map(drop)
    }

    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        self.table_id(table)?;
        if writes.is_empty() {
            return Ok(());
        }
        if let [(cell, value)] = writes {
            // One cell: one autocommitted statement, exactly one winner among racers.
            let inserted = self.on_table(
                table,
                &self.atomic,
                "put_unless_exists",
                Phase::Committing,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::insert_atomic_one(rel))?;
                    conn.client
                        .query(&stmt, &[&cell.row(), &cell.column(), &value.as_slice()])
                },
            )?;
            if inserted.is_empty() {
                return Err(KvsError::KeyAlreadyExists {
                    table: table.clone(),
                    cells: vec![cell.clone()],
                });
            }
            return Ok(());
        }
        let (rows, cols) = split_cells(writes.iter().map(|(c, _)| c));
        let vals: Vec<&[u8]> = writes.iter().map(|(_, v)| v.as_slice()).collect();
        let mut existing = Vec::new();
        self.on_table(
            table,
            &self.atomic,
            "put_unless_exists",
            Phase::Committing,
            |conn, rel| {
                existing.clear();
                let stmt = conn.prepare(&sql::insert_atomic_many(rel))?;
                let mut tx = conn.client.transaction()?;
                let inserted = tx.query(&stmt, &[&rows, &cols, &vals])?;
                let mut written: BTreeSet<(Vec<u8>, Vec<u8>)> = BTreeSet::new();
                for row in &inserted {
                    written.insert((row.try_get(0)?, row.try_get(1)?));
                }
                existing = writes
                    .iter()
                    .filter(|(c, _)| !written.contains(&(c.row().to_vec(), c.column().to_vec())))
                    .map(|(c, _)| c.clone())
                    .collect();
                if existing.is_empty() {
                    tx.commit()
                } else {
                    tx.rollback()
                }
            },
        )?;
        if !existing.is_empty() {
            return Err(KvsError::KeyAlreadyExists {
                table: table.clone(),
                cells: existing,
            });
        }
        Ok(())
    }

    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        self.table_id(table)?;
        let cell = &request.cell;
        let applied = match &request.expected {
            None => {
                match self.put_unless_exists(table, &[(cell.clone(), request.new_value.clone())]) {
                    Ok(()) => true,
                    Err(KvsError::KeyAlreadyExists { .. }) => false,
                    Err(e) => return Err(e),
                }
            }
            Some(expected) => !self
                .on_table(
                    table,
                    &self.atomic,
                    "check_and_set",
                    Phase::Committing,
                    |conn, rel| {
                        let stmt = conn.prepare(&sql::compare_and_swap(rel))?;
                        conn.client.query(
                            &stmt,
                            &[
                                &cell.row(),
                                &cell.column(),
                                &expected.as_slice(),
                                &request.new_value.as_slice(),
                            ],
                        )
                    },
                )?
                .is_empty(),
        };
        if applied {
            return Ok(());
        }
        let actual = self.on_table(
            table,
            &self.atomic,
            "check_and_set",
            Phase::NotApplied,
            |conn, rel| {
                let stmt = conn.prepare(&sql::read_atomic(rel))?;
                conn.client.query_opt(&stmt, &[&cell.row(), &cell.column()])
            },
        )?;
        Err(KvsError::CheckAndSetFailed {
            table: table.clone(),
            cell: cell.clone(),
            actual: actual.map(|row| col(&row, 0)).transpose()?,
        })
    }

    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        self.table_id(table)?;
        for chunk in versions.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter().map(|(c, _)| c));
            let tss: Vec<i64> = chunk.iter().map(|(_, ts)| *ts).collect();
            self.on_table(
                table,
                &self.plain,
                "delete",
                Phase::Committing,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::delete_versions(rel))?;
                    conn.client.execute(&stmt, &[&rows, &cols, &tss])
                },
            )?;
        }
        Ok(())
    }

    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        self.table_id(table)?;
        let (start, end) = (rows.start.as_slice(), rows.end.as_slice());
        if !start.is_empty() && !end.is_empty() && start >= end {
            return Ok(());
        }
        self.on_table(
            table,
            &self.plain,
            "delete_range",
            Phase::Committing,
            |conn, rel| {
                let stmt =
                    conn.prepare(&sql::delete_rows(rel, !start.is_empty(), !end.is_empty()))?;
                match (start.is_empty(), end.is_empty()) {
                    (false, false) => conn.client.execute(&stmt, &[&start, &end]),
                    (false, true) => conn.client.execute(&stmt, &[&start]),
                    (true, false) => conn.client.execute(&stmt, &[&end]),
                    (true, true) => conn.client.execute(&stmt, &[]),
                }
            },
        )?;
        Ok(())
    }

    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        self.table_id(table)?;
        for chunk in deletes.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter().map(|(c, _)| c));
            let (lo, hi): (Vec<i64>, Vec<i64>) = chunk.iter().map(|(_, d)| d.bounds()).unzip();
            self.on_table(
                table,
                &self.plain,
                "delete_all_timestamps",
                Phase::Committing,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::delete_timestamp_ranges(rel))?;
                    conn.client.execute(&stmt, &[&rows, &cols, &lo, &hi])
                },
            )?;
        }
        Ok(())
    }

    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        self.table_id(table)?;
        for chunk in cells.chunks(BATCH) {
            let (rows, cols) = split_cells(chunk.iter());
            self.on_table(
                table,
                &self.plain,
                "add_garbage_collection_sentinel_values",
                Phase::Committing,
                |conn, rel| {
                    let stmt = conn.prepare(&sql::add_sentinels(rel))?;
                    conn.client.execute(&stmt, &[&rows, &cols])
                },
            )?;
        }
        Ok(())
    }
}
