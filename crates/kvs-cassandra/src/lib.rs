//! The Apache Cassandra backend of Ortelius, in AtlasDB's CQL layout (see `cql`), through the
//! `scylla` driver (CQL native protocol v4) on a private Tokio runtime.
//!
//! - Reads and writes at the configured consistency (QUORUM by default); put-unless-exists and
//!   check-and-set are lightweight transactions at SERIAL (the result's `[applied]` and current
//!   value are read by column name: Cassandra answers with fewer columns than Scylla); deletes
//!   at ALL, as AtlasDB does, so no replica keeps a value a quorum forgot.
//! - Plain writes and deletes carry client timestamps from a per-process monotonic clock, so a
//!   rewrite after a delete is never shadowed by the tombstone.
//! - The atomic version of a cell (`ATOMIC_TS`) is only ever mutated through Paxos: besides
//!   put-unless-exists and check-and-set, plain puts at `ATOMIC_TS` are inserts-if-absent and
//!   its deletes (including the undo of put-unless-exists, the atomic part of a timestamp-range
//!   delete and of a row-range delete) are lightweight deletes, as AtlasDB deletes atomic-table
//!   cells. Lightweight transactions cannot carry a client timestamp: their cells get the
//!   server's ballot time (milliseconds), which a client clock may be ahead of or behind, so a
//!   client-stamped tombstone could hide a later put-unless-exists or fail to hide an earlier
//!   one. No client-stamped tombstone covers an atomic version (a row-range delete deletes
//!   each column's other versions by range instead of the whole partition).
//! - Row-range scans need row order: the cluster must use `ByteOrderedPartitioner`, where a
//!   row's token is its bytes. (Cost: no hashing, so data is spread by key ranges and the
//!   driver's token-aware routing is off.) A reverse range is read forward and returned in
//!   reverse, in memory.
//! - Not atomic across rows (as in AtlasDB): `put` checks every cell first and then writes
//!   (`multi_put`, a transaction's data, writes without that read, see the trait;
//!   `multi_put_reading_latest` sends the conflict check's first read alongside that write);
//!   `put_unless_exists` is atomic per row and undoes earlier rows if a later one
//!   conflicts. The transaction protocol needs neither: its commit point is one cell.

mod config;
mod cql;
mod scan;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::future::{try_join, try_join_all, Either};
use ortelius_kvs::{
    validate_read_ts, validate_version_ts, CandidateCellsRequest, CandidatePage, Cell, CellIter,
    CellWrites, CheckAndSetRequest, ColumnRange, ColumnSelection, KeyValueService, KvsError,
    KvsResult, RangeRequest, RowIter, RowRange, TableRef, Timestamp, TimestampRangeDelete, Value,
    ATOMIC_TS, SWEEP_SENTINEL_TS,
};
use scylla::client::execution_profile::ExecutionProfile;
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::errors::ExecutionError;
use scylla::policies::load_balancing::DefaultPolicy;
use scylla::policies::retry::FallthroughRetryPolicy;
use scylla::response::query_result::QueryResult;
use scylla::statement::prepared::PreparedStatement;
use scylla::statement::{Consistency, SerialConsistency};
use scylla::value::{CqlValue, Row};

pub use config::{CassandraConfig, ConsistencyLevel, NodeAccess};
use cql::{classify, inv, is_missing_table, CATALOG};

/// Cells per round of concurrent requests.
const CONCURRENCY: usize = 256;
/// The longest internal table name Cassandra accepts.
const MAX_CQL_NAME: usize = 48;

/// What a statement does, which decides its consistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Kind {
    Read,
    Write,
    Delete,
    Lwt,
    /// A lightweight delete, committed at ALL like the other deletes.
    LwtDelete,
}

/// The Cassandra [`KeyValueService`].
pub struct CassandraKvs {
    runtime: tokio::runtime::Runtime,
    session: Session,
    config: CassandraConfig,
    describe: String,
    statements: Mutex<std::collections::HashMap<String, PreparedStatement>>,
    tables: RwLock<BTreeSet<TableRef>>,
    /// The last client write timestamp (microseconds), kept strictly increasing.
    clock: AtomicI64,
    /// Added to the wall clock for client write timestamps: zero except in tests that play a
    /// client whose clock disagrees with the servers'.
    clock_skew: AtomicI64,
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "a lock of the cassandra backend was poisoned by a panic".to_owned(),
    }
}

fn corrupt(detail: impl Into<String>) -> KvsError {
    KvsError::Corruption {
        detail: detail.into(),
    }
}

/// The internal (CQL) name of a table.
pub fn internal_name(table: &TableRef) -> String {
    if table.namespace().is_empty() {
        table.name().to_owned()
    } else {
        format!("{}__{}", table.namespace(), table.name())
    }
}

fn consistency(level: ConsistencyLevel) -> Consistency {
    match level {
        ConsistencyLevel::One => Consistency::One,
        ConsistencyLevel::Quorum => Consistency::Quorum,
        ConsistencyLevel::LocalQuorum => Consistency::LocalQuorum,
        ConsistencyLevel::All => Consistency::All,
    }
}

/// A session on its own runtime (nothing created yet). Unreachable contact points fail within
/// the connect timeout, naming them.
pub(crate) fn connect(config: &CassandraConfig) -> KvsResult<(tokio::runtime::Runtime, Session)> {
    config.validate()?;
    let describe = config.describe();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("ortelius-cassandra")
        .build()
        .map_err(|e| KvsError::Storage {
            detail: format!("cannot start the cassandra runtime: {e}"),
        })?;
    let profile = ExecutionProfile::builder()
        .consistency(consistency(config.consistency))
        .serial_consistency(Some(SerialConsistency::Serial))
        .request_timeout(Some(config.request_timeout))
        .load_balancing_policy(DefaultPolicy::builder().token_aware(false).build())
        .retry_policy(Arc::new(FallthroughRetryPolicy::new()))
        .build();
    let mut builder = SessionBuilder::new()
        .known_nodes(&config.servers)
        .connection_timeout(config.connect_timeout)
        .schema_agreement_timeout(config.request_timeout.max(Duration::from_secs(30)))
        .default_execution_profile_handle(profile.into_handle());
    if let (Some(user), Some(password)) = (&config.user, config.password()?) {
        builder = builder.user(user, password);
    }
    let deadline = config.connect_timeout + Duration::from_secs(5);
    let session = runtime
        .block_on(async { tokio::time::timeout(deadline, builder.build()).await })
        .map_err(|_| KvsError::Unavailable {
            detail: format!("cannot connect to {describe}: no answer within {deadline:?}"),
        })?
        .map_err(|e| KvsError::Unavailable {
            detail: format!("cannot connect to {describe}: {e}"),
        })?;
    Ok((runtime, session))
}

/// Reads typed rows out of a result.
pub(crate) fn rows<R>(result: QueryResult) -> KvsResult<Vec<R>>
where
    R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
{
    let rows = result
        .into_rows_result()
        .map_err(|e| corrupt(format!("expected rows: {e}")))?;
    let iter = rows
        .rows::<R>()
        .map_err(|e| corrupt(format!("unexpected columns: {e}")))?;
    iter.collect::<Result<Vec<R>, _>>()
        .map_err(|e| corrupt(format!("undecodable row: {e}")))
}

/// The outcome of a lightweight transaction: applied, and the current `value` if it was not.
fn lwt_outcome(result: QueryResult) -> KvsResult<(bool, Option<Vec<u8>>)> {
    let rows = result
        .into_rows_result()
        .map_err(|e| corrupt(format!("a lightweight transaction answered no row: {e}")))?;
    let specs = rows.column_specs();
    let applied_at = specs
        .get_by_name("[applied]")
        .map(|(i, _)| i)
        .ok_or_else(|| corrupt("a lightweight transaction answered no [applied]"))?;
    let value_at = specs.get_by_name("value").map(|(i, _)| i);
    let row: Row = rows
        .first_row::<Row>()
        .map_err(|e| corrupt(format!("undecodable lightweight-transaction row: {e}")))?;
    let applied = row
        .columns
        .get(applied_at)
        .and_then(|c| c.as_ref())
        .and_then(CqlValue::as_boolean)
        .unwrap_or(false);
    let value = value_at
        .and_then(|i| row.columns.get(i).cloned())
        .flatten()
        .and_then(CqlValue::into_blob);
    Ok((applied, value))
}

impl CassandraKvs {
    /// Connects and creates the keyspace and catalogue if missing. Unreachable contact points
    /// fail within the connect timeout, naming them.
    pub fn open(config: &CassandraConfig) -> KvsResult<Self> {
        let (runtime, session) = connect(config)?;
        let describe = config.describe();
        let kvs = Self {
            runtime,
            session,
            config: config.clone(),
            describe,
            statements: Mutex::new(std::collections::HashMap::new()),
            tables: RwLock::new(BTreeSet::new()),
            clock: AtomicI64::new(0),
            clock_skew: AtomicI64::new(0),
        };
        kvs.ensure_keyspace()?;
        kvs.reload_catalog()?;
        Ok(kvs)
    }

    /// Drops the whole keyspace (tests and tear-downs; nothing else uses it).
    pub fn drop_keyspace(&self) -> KvsResult<()> {
        self.schema(&format!(
            "DROP KEYSPACE IF EXISTS \"{}\"",
            self.config.keyspace
        ))?;
        self.tables.write().map_err(|_| poisoned())?.clear();
        Ok(())
    }

    pub fn config(&self) -> &CassandraConfig {
        &self.config
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// `"keyspace"."name"`.
    fn qualified(&self, internal: &str) -> String {
        format!("\"{}\".\"{internal}\"", self.config.keyspace)
    }

    fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// Shifts this client's write clock by `micros` from the wall clock (tests: a client on a
    /// host whose clock is ahead of or behind the servers'). Client timestamps stay strictly
    /// increasing: a clock moved back holds until the wall clock catches up.
    #[doc(hidden)]
    pub fn skew_write_clock(&self, micros: i64) {
        self.clock_skew.store(micros, Ordering::SeqCst);
    }

    /// A strictly increasing client write timestamp (microseconds since the epoch).
    fn write_timestamp(&self) -> i64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .saturating_add(self.clock_skew.load(Ordering::SeqCst));
        let mut last = self.clock.load(Ordering::SeqCst);
        loop {
            let next = now.max(last.saturating_add(1));
            match self
                .clock
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// The prepared statement for `cql`, prepared once.
    fn prepare(&self, cql: &str, kind: Kind) -> KvsResult<PreparedStatement> {
        let key = format!("{kind:?}:{cql}");
        if let Some(p) = self.statements.lock().map_err(|_| poisoned())?.get(&key) {
            return Ok(p.clone());
        }
        let mut prepared =
            self.block_on(self.session.prepare(cql))
                .map_err(|e| KvsError::Unavailable {
                    detail: format!("cannot prepare a statement on {}: {e}", self.describe),
                })?;
        match kind {
            Kind::Read | Kind::Write => {}
            Kind::Delete => prepared.set_consistency(Consistency::All),
            Kind::Lwt => prepared.set_serial_consistency(Some(SerialConsistency::Serial)),
            Kind::LwtDelete => {
                prepared.set_consistency(Consistency::All);
                prepared.set_serial_consistency(Some(SerialConsistency::Serial));
            }
        }
        self.statements
            .lock()
            .map_err(|_| poisoned())?
            .insert(key, prepared.clone());
        Ok(prepared)
    }

    /// Runs an unprepared schema statement, waiting for schema agreement.
    fn schema(&self, cql: &str) -> KvsResult<()> {
        match self.block_on(self.session.query_unpaged(cql, ())) {
            Ok(_) => Ok(()),
            // The statement was applied; only the agreement wait timed out: wait once more.
            Err(ExecutionError::SchemaAgreementError(_)) => self
                .block_on(self.session.await_schema_agreement())
                .map(drop)
                .map_err(|e| KvsError::Unavailable {
                    detail: format!(
                        "the nodes of {} do not agree on the schema: {e}",
                        self.describe
                    ),
                }),
            Err(e) => Err(classify(&self.describe, "change the schema", true, &e)),
        }
    }

    fn ensure_keyspace(&self) -> KvsResult<()> {
        self.schema(&format!(
            "CREATE KEYSPACE IF NOT EXISTS \"{}\" WITH replication = {{'class': 'SimpleStrategy', 'replication_factor': {}}}",
            self.config.keyspace, self.config.replication_factor
        ))?;
        self.schema(&format!(
            "CREATE TABLE IF NOT EXISTS {} (internal text PRIMARY KEY, name text, metadata blob)",
            self.qualified(CATALOG)
        ))
    }

    fn reload_catalog(&self) -> KvsResult<BTreeSet<TableRef>> {
        let stmt = self.prepare(
            &format!("SELECT name FROM {}", self.qualified(CATALOG)),
            Kind::Read,
        )?;
        let names: Vec<(String,)> = self.block_on(async {
            let mut out = Vec::new();
            let mut paging = scylla::response::PagingState::start();
            loop {
                let (result, next) = self
                    .session
                    .execute_single_page(&stmt, (), paging)
                    .await
                    .map_err(|e| classify(&self.describe, "read the catalogue", false, &e))?;
                out.extend(rows::<(String,)>(result)?);
                match next.into_paging_control_flow() {
                    std::ops::ControlFlow::Break(()) => return Ok::<_, KvsError>(out),
                    std::ops::ControlFlow::Continue(p) => paging = p,
                }
            }
        })?;
        let mut tables = BTreeSet::new();
        for (name,) in names {
            tables.insert(
                TableRef::parse(&name)
                    .map_err(|_| corrupt(format!("malformed catalogue entry {name:?}")))?,
            );
        }
        *self.tables.write().map_err(|_| poisoned())? = tables.clone();
        Ok(tables)
    }

    /// The CQL name of an existing table (`TableNotFound` otherwise).
    fn table(&self, table: &TableRef) -> KvsResult<String> {
        let known = self.tables.read().map_err(|_| poisoned())?.contains(table);
        if known || self.reload_catalog()?.contains(table) {
            return Ok(self.qualified(&internal_name(table)));
        }
        Err(KvsError::TableNotFound {
            table: table.clone(),
        })
    }

    /// Maps an error on `table`, turning "no such table" into `TableNotFound`.
    fn fail(
        &self,
        table: &TableRef,
        operation: &'static str,
        write: bool,
        e: &ExecutionError,
    ) -> KvsError {
        if is_missing_table(e) {
            if let Ok(mut cache) = self.tables.write() {
                cache.remove(table);
            }
            return KvsError::TableNotFound {
                table: table.clone(),
            };
        }
        classify(&self.describe, operation, write, e)
    }

    /// The newest version below each cell's bound, one request per cell, many at once.
    fn latest(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
        with_value: bool,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        let stmt = self.prepare(&cql::latest(&self.table(table)?, with_value), Kind::Read)?;
        let mut out = BTreeMap::new();
        for chunk in cells.chunks(CONCURRENCY) {
            let answers = self.block_on(try_join_all(chunk.iter().map(|(cell, ts)| {
                self.session
                    .execute_unpaged(&stmt, (cell.row(), cell.column(), inv(*ts)))
            })));
            let answers = answers.map_err(|e| self.fail(table, "get", false, &e))?;
            for ((cell, _), result) in chunk.iter().zip(answers) {
                let value = if with_value {
                    rows::<(i64, Vec<u8>)>(result)?
                        .into_iter()
                        .next()
                        .map(|(c2, v)| Value::new(v, inv(c2)))
                } else {
                    rows::<(i64,)>(result)?
                        .into_iter()
                        .next()
                        .map(|(c2,)| Value::new(Vec::new(), inv(c2)))
                };
                if let Some(v) = value {
                    out.insert(cell.clone(), v);
                }
            }
        }
        Ok(out)
    }

    /// Every page of a prepared query, as typed rows.
    fn select_all<R, V>(
        &self,
        table: &TableRef,
        stmt: &PreparedStatement,
        values: V,
    ) -> KvsResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
        V: scylla::serialize::row::SerializeRow + Clone,
    {
        self.block_on(self.fetch_all(table, stmt, values))
    }

    /// Every page of a prepared query, as typed rows, to await alongside other requests.
    async fn fetch_all<R, V>(
        &self,
        table: &TableRef,
        stmt: &PreparedStatement,
        values: V,
    ) -> KvsResult<Vec<R>>
    where
        R: for<'f, 'm> scylla::deserialize::row::DeserializeRow<'f, 'm>,
        V: scylla::serialize::row::SerializeRow + Clone,
    {
        let mut out = Vec::new();
        let mut paging = scylla::response::PagingState::start();
        loop {
            let (result, next) = self
                .session
                .execute_single_page(stmt, values.clone(), paging)
                .await
                .map_err(|e| self.fail(table, "read", false, &e))?;
            out.extend(rows::<R>(result)?);
            match next.into_paging_control_flow() {
                std::ops::ControlFlow::Break(()) => return Ok(out),
                std::ops::ControlFlow::Continue(p) => paging = p,
            }
        }
    }

    /// Refuses a put that would change the value of an existing (cell, ts).
    fn check_rewrites(
        &self,
        table: &TableRef,
        versions: &[(&Cell, Timestamp, &[u8])],
    ) -> KvsResult<()> {
        let stmt = self.prepare(&cql::exact(&self.table(table)?), Kind::Read)?;
        for chunk in versions.chunks(CONCURRENCY) {
            let answers = self
                .block_on(try_join_all(chunk.iter().map(|(cell, ts, _)| {
                    self.session
                        .execute_unpaged(&stmt, (cell.row(), cell.column(), inv(*ts)))
                })))
                .map_err(|e| self.fail(table, "put", false, &e))?;
            for ((cell, ts, value), result) in chunk.iter().zip(answers) {
                if let Some((existing,)) = rows::<(Vec<u8>,)>(result)?.into_iter().next() {
                    if existing.as_slice() != *value {
                        return Err(KvsError::ValueAlreadyWritten {
                            table: table.clone(),
                            cell: (*cell).clone(),
                            timestamp: *ts,
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn write_versions(
        &self,
        table: &TableRef,
        versions: &[(&Cell, Timestamp, &[u8])],
    ) -> KvsResult<()> {
        let (atomic, versions): (Vec<_>, Vec<_>) =
            versions.iter().partition(|(_, ts, _)| *ts == ATOMIC_TS);
        // The atomic version is only written through Paxos (see the crate docs): as an insert
        // if absent, where an equal value already there is the same write done before.
        for (cell, _, value) in atomic {
            let (applied, actual) = self.insert_if_absent(table, cell, value)?;
            if !applied && actual.as_deref().unwrap_or_default() != value {
                return Err(KvsError::ValueAlreadyWritten {
                    table: table.clone(),
                    cell: cell.clone(),
                    timestamp: ATOMIC_TS,
                });
            }
        }
        let stmt = self.prepare(&cql::insert(&self.table(table)?), Kind::Write)?;
        for chunk in versions.chunks(CONCURRENCY) {
            self.block_on(try_join_all(chunk.iter().map(|(cell, ts, value)| {
                self.session.execute_unpaged(
                    &stmt,
                    (
                        cell.row(),
                        cell.column(),
                        inv(*ts),
                        *value,
                        self.write_timestamp(),
                    ),
                )
            })))
            .map_err(|e| self.fail(table, "put", true, &e))?;
        }
        Ok(())
    }

    fn put_versions(
        &self,
        table: &TableRef,
        versions: &[(&Cell, Timestamp, &[u8])],
    ) -> KvsResult<()> {
        let mut seen: BTreeMap<(&Cell, Timestamp), &[u8]> = BTreeMap::new();
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
        self.check_rewrites(table, versions)?;
        self.write_versions(table, versions)
    }

    /// One lightweight insert-if-absent of an atomic cell.
    fn insert_if_absent(
        &self,
        table: &TableRef,
        cell: &Cell,
        value: &[u8],
    ) -> KvsResult<(bool, Option<Vec<u8>>)> {
        let stmt = self.prepare(&cql::insert_if_absent(&self.table(table)?), Kind::Lwt)?;
        let result = self
            .block_on(
                self.session
                    .execute_unpaged(&stmt, (cell.row(), cell.column(), value)),
            )
            .map_err(|e| self.fail(table, "put_unless_exists", true, &e))?;
        lwt_outcome(result)
    }

    fn delete_cells(&self, table: &TableRef, versions: &[(&Cell, Timestamp)]) -> KvsResult<()> {
        let (atomic, versions): (Vec<_>, Vec<_>) =
            versions.iter().partition(|(_, ts)| *ts == ATOMIC_TS);
        let atomic: Vec<(&Cell, Option<&[u8]>)> =
            atomic.into_iter().map(|&(c, _)| (c, None)).collect();
        self.delete_atomic(table, "delete", &atomic)?;
        let stmt = self.prepare(&cql::delete_version(&self.table(table)?), Kind::Delete)?;
        for chunk in versions.chunks(CONCURRENCY) {
            self.block_on(try_join_all(chunk.iter().map(|(cell, ts)| {
                self.session.execute_unpaged(
                    &stmt,
                    (self.write_timestamp(), cell.row(), cell.column(), inv(*ts)),
                )
            })))
            .map_err(|e| self.fail(table, "delete", true, &e))?;
        }
        Ok(())
    }

    /// Deletes atomic versions through Paxos, each if it exists or, with a value, only if it
    /// still holds that value (the undo of a put-unless-exists leaves a value someone else has
    /// set since). Paxos rounds on one partition contend, so a wave takes one cell per row.
    fn delete_atomic(
        &self,
        table: &TableRef,
        operation: &'static str,
        cells: &[(&Cell, Option<&[u8]>)],
    ) -> KvsResult<()> {
        if cells.is_empty() {
            return Ok(());
        }
        let q = self.table(table)?;
        let if_exists = self.prepare(&cql::delete_atomic_if_exists(&q), Kind::LwtDelete)?;
        let if_value = self.prepare(&cql::delete_atomic_if_value(&q), Kind::LwtDelete)?;
        let mut pending: Vec<(&Cell, Option<&[u8]>)> = cells.to_vec();
        while !pending.is_empty() {
            let mut rows = BTreeSet::new();
            let (wave, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(cell, _)| rows.len() < CONCURRENCY && rows.insert(cell.row()));
            pending = rest;
            self.block_on(try_join_all(wave.iter().map(|(cell, expected)| {
                match expected {
                    None => Either::Left(
                        self.session
                            .execute_unpaged(&if_exists, (cell.row(), cell.column())),
                    ),
                    Some(value) => Either::Right(
                        self.session
                            .execute_unpaged(&if_value, (cell.row(), cell.column(), *value)),
                    ),
                }
            })))
            .map_err(|e| self.fail(table, operation, true, &e))?;
        }
        Ok(())
    }

    /// Client-stamped range tombstones over versions of cells: (row, column, lowest and
    /// highest clustering value, inclusive), none of them covering an atomic version. `stmt`
    /// is `cql::delete_versions_between`, prepared beforehand (preparing blocks).
    async fn delete_clustering_ranges(
        &self,
        table: &TableRef,
        operation: &'static str,
        stmt: &PreparedStatement,
        ranges: &[(&[u8], &[u8], i64, i64)],
    ) -> KvsResult<()> {
        for chunk in ranges.chunks(CONCURRENCY) {
            try_join_all(chunk.iter().map(|(row, column, lo, hi)| {
                self.session
                    .execute_unpaged(stmt, (self.write_timestamp(), *row, *column, *lo, *hi))
            }))
            .await
            .map_err(|e| self.fail(table, operation, true, &e))?;
        }
        Ok(())
    }

    /// Versions of one row's cells as read (newest first per cell), reduced to the newest
    /// version below `ts` of each column.
    fn newest_per_column(
        versions: Vec<(Vec<u8>, i64, Vec<u8>)>,
        ts: Timestamp,
    ) -> BTreeMap<Vec<u8>, Value> {
        let mut out = BTreeMap::new();
        for (column, c2, value) in versions {
            let version_ts = inv(c2);
            if version_ts < ts && !out.contains_key(&column) {
                out.insert(column, Value::new(value, version_ts));
            }
        }
        out
    }
}

impl KeyValueService for CassandraKvs {
    fn backend_name(&self) -> &'static str {
        "cassandra"
    }

    fn shared_between_processes(&self) -> bool {
        true
    }

    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let internal = internal_name(table);
        if internal.len() > MAX_CQL_NAME {
            return Err(KvsError::InvalidTableName {
                name: table.qualified_name(),
                reason: "on Cassandra, namespace and name together must fit in 46 bytes (CQL table names are at most 48)",
            });
        }
        let catalog = self.qualified(CATALOG);
        let read = self.prepare(
            &format!("SELECT name FROM {catalog} WHERE internal = ?"),
            Kind::Read,
        )?;
        let existing: Vec<(String,)> = self.select_all(table, &read, (internal.as_str(),))?;
        if let Some((name,)) = existing.first() {
            if *name != table.qualified_name() {
                return Err(KvsError::InvalidTableName {
                    name: table.qualified_name(),
                    reason:
                        "its Cassandra name (namespace__name) is already taken by another table",
                });
            }
        }
        self.schema(&cql::create_table(&self.qualified(&internal)))?;
        let write = self.prepare(
            &format!("INSERT INTO {catalog} (internal, name, metadata) VALUES (?, ?, ?)"),
            Kind::Write,
        )?;
        self.block_on(self.session.execute_unpaged(
            &write,
            (internal.as_str(), table.qualified_name(), metadata),
        ))
        .map_err(|e| classify(&self.describe, "create_table", true, &e))?;
        self.tables
            .write()
            .map_err(|_| poisoned())?
            .insert(table.clone());
        Ok(())
    }

    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        let internal = internal_name(table);
        let delete = self.prepare(
            &format!("DELETE FROM {} WHERE internal = ?", self.qualified(CATALOG)),
            Kind::Write,
        )?;
        self.block_on(self.session.execute_unpaged(&delete, (internal.as_str(),)))
            .map_err(|e| classify(&self.describe, "drop_table", true, &e))?;
        self.schema(&format!(
            "DROP TABLE IF EXISTS {}",
            self.qualified(&internal)
        ))?;
        self.tables.write().map_err(|_| poisoned())?.remove(table);
        Ok(())
    }

    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        let q = self.table(table)?;
        self.block_on(self.session.query_unpaged(format!("TRUNCATE {q}"), ()))
            .map_err(|e| self.fail(table, "truncate_table", true, &e))?;
        Ok(())
    }

    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        Ok(self.reload_catalog()?.into_iter().collect())
    }

    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        let stmt = self.prepare(
            &format!(
                "SELECT metadata FROM {} WHERE internal = ?",
                self.qualified(CATALOG)
            ),
            Kind::Read,
        )?;
        let internal = internal_name(table);
        let found: Vec<(Option<Vec<u8>>,)> = self.select_all(table, &stmt, (internal.as_str(),))?;
        match found.into_iter().next() {
            Some((m,)) => Ok(m.unwrap_or_default()),
            None => Err(KvsError::TableNotFound {
                table: table.clone(),
            }),
        }
    }

    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.table(table)?;
        self.create_table(table, metadata)
    }

    fn get(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        self.latest(table, cells, true)
    }

    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        validate_read_ts(ts)?;
        let q = self.table(table)?;
        let only = match columns {
            ColumnSelection::All => None,
            ColumnSelection::Only(c) if c.is_empty() => return Ok(BTreeMap::new()),
            ColumnSelection::Only(c) => Some(c.clone()),
        };
        let stmt = self.prepare(&cql::row(&q, only.is_some()), Kind::Read)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let versions: Vec<(Vec<u8>, i64, Vec<u8>)> = match &only {
                Some(cols) => self.select_all(table, &stmt, (row.as_slice(), cols.clone()))?,
                None => self.select_all(table, &stmt, (row.as_slice(),))?,
            };
            for (column, value) in Self::newest_per_column(versions, ts) {
                out.insert(Cell::new(row.clone(), column)?, value);
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
        self.table(table)?;
        let scan = scan::RangeScan::new(self, table.clone(), request.clone(), ts)?;
        if request.reverse {
            let mut all = scan.collect::<KvsResult<Vec<_>>>()?;
            all.reverse();
            return Ok(Box::new(all.into_iter().map(Ok)));
        }
        Ok(Box::new(scan))
    }

    fn get_rows_column_range<'a>(
        &'a self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnRange,
        ts: Timestamp,
    ) -> KvsResult<CellIter<'a>> {
        validate_read_ts(ts)?;
        let q = self.table(table)?;
        let (start, end) = (&columns.start, &columns.end);
        if !start.is_empty() && !end.is_empty() && start >= end {
            return Ok(Box::new(std::iter::empty()));
        }
        let stmt = self.prepare(
            &cql::row_columns(&q, !start.is_empty(), !end.is_empty()),
            Kind::Read,
        )?;
        let table = table.clone();
        let mut out = Vec::new();
        // Rows in caller order, each read whole (paged) and reduced to its visible cells.
        for row in rows {
            let versions: Vec<(Vec<u8>, i64, Vec<u8>)> = match (start.is_empty(), end.is_empty()) {
                (true, true) => self.select_all(&table, &stmt, (row.as_slice(),))?,
                (false, true) => {
                    self.select_all(&table, &stmt, (row.as_slice(), start.as_slice()))?
                }
                (true, false) => {
                    self.select_all(&table, &stmt, (row.as_slice(), end.as_slice()))?
                }
                (false, false) => self.select_all(
                    &table,
                    &stmt,
                    (row.as_slice(), start.as_slice(), end.as_slice()),
                )?,
            };
            for (column, value) in Self::newest_per_column(versions, ts) {
                out.push(Cell::new(row.clone(), column).map(|c| (c, value)));
            }
        }
        Ok(Box::new(out.into_iter()))
    }

    fn get_latest_timestamps(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
    ) -> KvsResult<BTreeMap<Cell, Timestamp>> {
        for (_, ts) in cells {
            validate_read_ts(*ts)?;
        }
        Ok(self
            .latest(table, cells, false)?
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
        let stmt = self.prepare(&cql::cell_versions(&self.table(table)?), Kind::Read)?;
        let mut out = BTreeMap::new();
        for cell in cells {
            let found: Vec<(i64,)> =
                self.select_all(table, &stmt, (cell.row(), cell.column(), inv(ts)))?;
            if !found.is_empty() {
                // Newest first as stored: reverse to ascending.
                out.insert(
                    cell.clone(),
                    found.into_iter().rev().map(|(c2,)| inv(c2)).collect(),
                );
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
        self.table(table)?;
        let batch = request.batch_size.clamp(1, 100_000);
        let start_row = request
            .start
            .as_ref()
            .map(|c| c.row().to_vec())
            .unwrap_or_default();
        let mut versions = scan::VersionScan::new(self, table.clone(), start_row, Vec::new())?;
        let mut cells = Vec::new();
        let mut current: Option<(Cell, Vec<(Timestamp, bool)>)> = None;
        while let Some(version) = versions.next_version()? {
            let (row, column, ts, empty) = version;
            if let Some(start) = &request.start {
                if (row.as_slice(), column.as_slice()) < (start.row(), start.column()) {
                    continue;
                }
            }
            let same = current
                .as_ref()
                .is_some_and(|(c, _)| c.row() == row.as_slice() && c.column() == column.as_slice());
            if !same {
                if let Some((cell, vs)) = current.take() {
                    if let Some(candidate) = scan::candidate(cell, vs, request) {
                        cells.push(candidate);
                    }
                }
                if cells.len() == batch {
                    return Ok(CandidatePage {
                        cells,
                        next_start: Some(Cell::new(row, column)?),
                    });
                }
                current = Some((Cell::new(row, column)?, Vec::new()));
            }
            if ts < request.max_ts_exclusive {
                if let Some((_, vs)) = current.as_mut() {
                    vs.push((ts, empty));
                }
            }
        }
        if let Some((cell, vs)) = current.take() {
            if let Some(candidate) = scan::candidate(cell, vs, request) {
                cells.push(candidate);
            }
        }
        Ok(CandidatePage {
            cells,
            next_start: None,
        })
    }

    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        self.table(table)?;
        let versions: Vec<(&Cell, Timestamp, &[u8])> =
            writes.iter().map(|(c, v)| (c, ts, v.as_slice())).collect();
        self.put_versions(table, &versions)
    }

    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        for (table, _) in writes {
            self.table(table)?;
        }
        // No read for a different value already at (cell, ts): the trait allows skipping it
        // here, and on Cassandra it would be a round trip of every write transaction's four.
        for (table, cells) in writes {
            let versions: Vec<(&Cell, Timestamp, &[u8])> =
                cells.iter().map(|(c, v)| (c, ts, v.as_slice())).collect();
            self.write_versions(table, &versions)?;
        }
        Ok(())
    }

    /// The conflict reads and the data writes go out together: the commit waits for the slower
    /// of the two, not their sum. The read may land after the write; this write's own version
    /// is recognised by its client write time (unique to this write, as the clock is strictly
    /// increasing) and left out, so the answer is the newest version of someone else.
    fn multi_put_reading_latest(
        &self,
        writes: &[(TableRef, CellWrites)],
        read_latest: &[bool],
        ts: Timestamp,
    ) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
        validate_version_ts(ts, false)?;
        if ts == ATOMIC_TS {
            // Written through Paxos, not with a client write time (see `write_versions`).
            return ortelius_kvs::read_latest_then_multi_put(self, writes, read_latest, ts);
        }
        let mut statements = Vec::with_capacity(writes.len());
        for (i, (table, _)) in writes.iter().enumerate() {
            let name = self.table(table)?;
            let read = if read_latest.get(i).copied().unwrap_or(false) {
                Some(self.prepare(&cql::latest_two_written(&name), Kind::Read)?)
            } else {
                None
            };
            statements.push((self.prepare(&cql::insert(&name), Kind::Write)?, read));
        }
        let mut out = Vec::with_capacity(writes.len());
        for ((table, cells), (insert, read)) in writes.iter().zip(&statements) {
            let mut latest = BTreeMap::new();
            for chunk in cells.chunks(CONCURRENCY) {
                let stamped: Vec<(&Cell, &[u8], i64)> = chunk
                    .iter()
                    .map(|(cell, value)| (cell, value.as_slice(), self.write_timestamp()))
                    .collect();
                let reads = async {
                    let Some(read) = read else {
                        return Ok(Vec::new());
                    };
                    try_join_all(stamped.iter().map(|(cell, _, _)| {
                        self.session.execute_unpaged(
                            read,
                            (cell.row(), cell.column(), inv(ortelius_kvs::MAX_READ_TS)),
                        )
                    }))
                    .await
                };
                let puts = try_join_all(stamped.iter().map(|(cell, value, written)| {
                    self.session.execute_unpaged(
                        insert,
                        (cell.row(), cell.column(), inv(ts), *value, *written),
                    )
                }));
                // The reads are polled first, so they are usually sent first too.
                let (answers, _) = self
                    .block_on(try_join(reads, puts))
                    .map_err(|e| self.fail(table, "put", true, &e))?;
                for ((cell, _, ours), result) in stamped.iter().zip(answers) {
                    let newest = rows::<(i64, Option<i64>)>(result)?
                        .into_iter()
                        .map(|(column2, written)| (inv(column2), written))
                        .find(|(version, written)| !(*version == ts && *written == Some(*ours)));
                    if let Some((version, _)) = newest {
                        latest.insert((*cell).clone(), version);
                    }
                }
            }
            out.push(latest);
        }
        Ok(out)
    }

    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        for (_, v) in values {
            validate_version_ts(v.timestamp, true)?;
        }
        self.table(table)?;
        let versions: Vec<(&Cell, Timestamp, &[u8])> = values
            .iter()
            .map(|(c, v)| (c, v.timestamp, v.contents.as_slice()))
            .collect();
        self.put_versions(table, &versions)
    }

    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        self.table(table)?;
        let mut written: Vec<(&Cell, Option<&[u8]>)> = Vec::new();
        let mut existing = Vec::new();
        for (cell, value) in writes {
            let (applied, _) = self.insert_if_absent(table, cell, value)?;
            if applied {
                written.push((cell, Some(value.as_slice())));
            } else {
                existing.push(cell.clone());
            }
        }
        if existing.is_empty() {
            return Ok(());
        }
        // All or nothing: undo the cells this call wrote (through Paxos, like the writes).
        self.delete_atomic(table, "put_unless_exists", &written)?;
        Err(KvsError::KeyAlreadyExists {
            table: table.clone(),
            cells: existing,
        })
    }

    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        let cell = &request.cell;
        let (applied, actual) = match &request.expected {
            None => self.insert_if_absent(table, cell, &request.new_value)?,
            Some(expected) => {
                let stmt = self.prepare(&cql::update_if(&self.table(table)?), Kind::Lwt)?;
                let result = self
                    .block_on(self.session.execute_unpaged(
                        &stmt,
                        (
                            request.new_value.as_slice(),
                            cell.row(),
                            cell.column(),
                            expected.as_slice(),
                        ),
                    ))
                    .map_err(|e| self.fail(table, "check_and_set", true, &e))?;
                lwt_outcome(result)?
            }
        };
        if applied {
            return Ok(());
        }
        Err(KvsError::CheckAndSetFailed {
            table: table.clone(),
            cell: cell.clone(),
            actual,
        })
    }

    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        self.table(table)?;
        let versions: Vec<(&Cell, Timestamp)> = versions.iter().map(|(c, t)| (c, *t)).collect();
        self.delete_cells(table, &versions)
    }

    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        let q = self.table(table)?;
        if !rows.start.is_empty() && !rows.end.is_empty() && rows.start >= rows.end {
            return Ok(());
        }
        let keys = scan::keys_in_range(self, table, &q, rows)?;
        let read = self.prepare(&cql::row_versions(&q), Kind::Read)?;
        let ranges = self.prepare(&cql::delete_versions_between(&q), Kind::Delete)?;
        // Not a partition tombstone: a client-stamped one would cover atomic versions (see the
        // crate docs). Each column's other versions go by range, its atomic one through Paxos.
        let (others, _) = cql::split_at_atomic(Timestamp::MIN, Timestamp::MAX);
        for chunk in keys.chunks(CONCURRENCY) {
            let versions: Vec<Vec<(Vec<u8>, i64)>> = self.block_on(try_join_all(
                chunk
                    .iter()
                    .map(|key| self.fetch_all(table, &read, (key.as_slice(),))),
            ))?;
            let mut columns: BTreeMap<(&[u8], &[u8]), bool> = BTreeMap::new();
            for (key, versions) in chunk.iter().zip(&versions) {
                for (column, c2) in versions {
                    let has_atomic = columns
                        .entry((key.as_slice(), column.as_slice()))
                        .or_default();
                    *has_atomic |= inv(*c2) == ATOMIC_TS;
                }
            }
            let tombstones: Vec<(&[u8], &[u8], i64, i64)> = columns
                .keys()
                .flat_map(|(row, column)| others.iter().map(|(lo, hi)| (*row, *column, *lo, *hi)))
                .collect();
            self.block_on(self.delete_clustering_ranges(
                table,
                "delete_range",
                &ranges,
                &tombstones,
            ))?;
            let cells = columns
                .iter()
                .filter(|(_, has_atomic)| **has_atomic)
                .map(|((row, column), _)| Cell::new(*row, *column))
                .collect::<KvsResult<Vec<Cell>>>()?;
            let cells: Vec<(&Cell, Option<&[u8]>)> = cells.iter().map(|c| (c, None)).collect();
            self.delete_atomic(table, "delete_range", &cells)?;
        }
        Ok(())
    }

    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        let q = self.table(table)?;
        let ranges = self.prepare(&cql::delete_versions_between(&q), Kind::Delete)?;
        let probe = self.prepare(&cql::atomic_version(&q), Kind::Read)?;
        for chunk in deletes.chunks(CONCURRENCY) {
            let mut tombstones: Vec<(&[u8], &[u8], i64, i64)> = Vec::new();
            let mut covers_atomic: Vec<&Cell> = Vec::new();
            for (cell, range) in chunk {
                let (min, max) = range.bounds();
                let (others, atomic) = cql::split_at_atomic(min, max);
                tombstones.extend(
                    others
                        .into_iter()
                        .map(|(lo, hi)| (cell.row(), cell.column(), lo, hi)),
                );
                if atomic {
                    covers_atomic.push(cell);
                }
            }
            // The atomic version goes through Paxos, only where there is one: a read, sent
            // with the range tombstones, spares sweep a Paxos round per cell.
            let found = async {
                try_join_all(covers_atomic.iter().map(|cell| {
                    self.session
                        .execute_unpaged(&probe, (cell.row(), cell.column()))
                }))
                .await
                .map_err(|e| self.fail(table, "delete_all_timestamps", true, &e))
            };
            let (_, found) = self.block_on(try_join(
                self.delete_clustering_ranges(table, "delete_all_timestamps", &ranges, &tombstones),
                found,
            ))?;
            let mut present: Vec<(&Cell, Option<&[u8]>)> = Vec::new();
            for (cell, result) in covers_atomic.into_iter().zip(found) {
                if !rows::<(i64,)>(result)?.is_empty() {
                    present.push((cell, None));
                }
            }
            self.delete_atomic(table, "delete_all_timestamps", &present)?;
        }
        Ok(())
    }

    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        self.table(table)?;
        let versions: Vec<(&Cell, Timestamp, &[u8])> = cells
            .iter()
            .map(|c| (c, SWEEP_SENTINEL_TS, &[][..]))
            .collect();
        self.write_versions(table, &versions)
    }
}
