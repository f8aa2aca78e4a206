//! The etcd backend of Ortelius.
//!
//! Every key of a store lives under its prefix and follows the ordered layout of
//! `ortelius_kvs::keycodec` (the one RocksDB uses): table id, escaped row and column, then the
//! bitwise-inverted timestamp, so a cell's newest version below a bound is the first key of a
//! plain ascending range read with `limit 1` (etcd ignores the limit when asked to sort, so
//! nothing here sorts). Reads are linearizable (etcd's default).
//!
//! Writes go in etcd transactions of at most `maxTxnOps` operations and `maxRequestBytes`
//! bytes: `put_unless_exists` compares create revisions to 0, `check_and_set` compares the
//! value, `put` checks existing versions and writes the rest in one transaction guarded by the
//! same comparisons. **Guarantees hold per transaction**: a call whose cells need more than one
//! transaction is not atomic across them (`put_unless_exists` removes what it wrote when a
//! later part conflicts). The transaction protocol's commit point is one cell, so it never
//! depends on a split batch.

mod config;
mod maintenance;
pub mod rebuild;
mod scan;
pub mod snapshot;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse,
};
use ortelius_kvs::keycodec as keys;
use ortelius_kvs::{
    validate_read_ts, validate_version_ts, CandidateCellsRequest, CandidatePage, Cell, CellIter,
    CellWrites, CheckAndSetRequest, ColumnRange, ColumnSelection, KeyValueService, KvsError,
    KvsResult, RangeRequest, RowIter, RowRange, TableRef, Timestamp, TimestampRangeDelete, Value,
    ATOMIC_TS, MAX_READ_TS, SWEEP_SENTINEL_TS,
};

pub use config::{EtcdConfig, MaintenanceConfig, RebuildConfig, RebuildMember};
pub use maintenance::{Maintenance, MaintenanceReport};

/// The etcd [`KeyValueService`].
pub struct EtcdKvs {
    runtime: tokio::runtime::Runtime,
    client: Client,
    config: EtcdConfig,
    describe: String,
    prefix: Vec<u8>,
    /// Table ids by name (a cache of the catalogue; reloaded on a miss).
    tables: RwLock<BTreeMap<TableRef, u32>>,
    /// Compaction and defragmentation, when the config asks for them (on a connection of its
    /// own; stops when the store is dropped).
    maintenance: Option<Maintenance>,
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "a lock of the etcd backend was poisoned by a panic".to_owned(),
    }
}

fn corrupt(detail: impl Into<String>) -> KvsError {
    KvsError::Corruption {
        detail: detail.into(),
    }
}

/// Maps an etcd error of `operation`; `write`: a lost answer may hide an applied write.
pub(crate) fn classify(
    store: &str,
    operation: &'static str,
    write: bool,
    e: &etcd_client::Error,
) -> KvsError {
    let detail = format!("{operation} on {store}: {e}");
    let maybe = |detail: String| {
        if write {
            KvsError::MaybeApplied { operation, detail }
        } else {
            KvsError::Unavailable { detail }
        }
    };
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message();
            match status.code() {
                tonic::Code::Unavailable
                    if message.contains("timed out") || message.contains("leader changed") =>
                {
                    maybe(detail)
                }
                tonic::Code::Unavailable => KvsError::Unavailable { detail },
                tonic::Code::Cancelled
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Unknown
                | tonic::Code::Internal
                | tonic::Code::Aborted => maybe(detail),
                tonic::Code::ResourceExhausted if message.contains("too many requests") => {
                    KvsError::Unavailable { detail }
                }
                tonic::Code::OutOfRange if message.contains("decoded message length") => {
                    maybe(detail)
                }
                tonic::Code::OutOfRange if message.contains("compacted") => {
                    KvsError::Unavailable { detail }
                }
                tonic::Code::ResourceExhausted if over_quota(e) => KvsError::Storage {
                    detail: format!(
                        "{detail}; a member reached its --quota-backend-bytes and etcd refuses \
                         writes until someone compacts, defragments and disarms the alarm \
                         (etcdctl compact, defrag, alarm disarm); with `maintenance` \
                         configured this store does that itself and retries for \
                         requestTimeout"
                    ),
                },
                _ => KvsError::Storage { detail },
            }
        }
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => maybe(detail),
        _ => KvsError::Storage { detail },
    }
}

/// etcd refused a write because a member's database reached its quota (the NOSPACE alarm is
/// raised, or was already). Such a write was refused before it was proposed or when applied:
/// nothing of it is stored.
fn over_quota(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(status)
        if status.code() == tonic::Code::ResourceExhausted
            && status.message().contains("database space exceeded"))
}

fn get_response(op: TxnOpResponse) -> KvsResult<Vec<KeyValue>> {
    match op {
        TxnOpResponse::Get(mut g) => Ok(g.take_kvs()),
        _ => Err(corrupt(
            "etcd answered a transaction read with something else",
        )),
    }
}

/// Splits `items` into groups within the transaction limits.
pub(crate) fn groups<T>(
    items: &[T],
    max_ops: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<&[T]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, item) in items.iter().enumerate() {
        let s = size(item) + 64;
        if i > start && (i - start >= max_ops || bytes + s > max_bytes) {
            out.push(&items[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < items.len() {
        out.push(&items[start..]);
    }
    out
}

impl EtcdKvs {
    /// Connects and checks the cluster answers within the connect timeout.
    pub fn open(config: &EtcdConfig) -> KvsResult<Self> {
        config.validate()?;
        let describe = config.describe();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("ortelius-etcd")
            .build()
            .map_err(|e| KvsError::Storage {
                detail: format!("cannot start the etcd runtime: {e}"),
            })?;
        // A member that lost its leader answers at once instead of waiting out the request
        // timeout; a connection to a member cut off by the network is found dead by HTTP/2
        // pings (no more often than etcd's default --grpc-keepalive-min-time allows).
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout)
            .with_require_leader(true)
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let (Some(user), Some(password)) = (&config.user, config.password()?) {
            options = options.with_user(user.clone(), password);
        }
        let endpoints = config.endpoints.clone();
        let deadline = config.connect_timeout + config.request_timeout;
        let mut client = runtime
            .block_on(async {
                tokio::time::timeout(deadline, Client::connect(endpoints, Some(options))).await
            })
            .map_err(|_| KvsError::Unavailable {
                detail: format!("cannot connect to {describe}: no answer within {deadline:?}"),
            })?
            .map_err(|e| classify(&describe, "connect", false, &e))?;
        // The client connects lazily: ask something now so a wrong address fails here.
        let prefix = config.prefix.as_bytes().to_vec();
        runtime
            .block_on(async {
                tokio::time::timeout(
                    deadline,
                    client.get(prefix.clone(), Some(GetOptions::new().with_count_only())),
                )
                .await
            })
            .map_err(|_| KvsError::Unavailable {
                detail: format!("cannot reach {describe}: no answer within {deadline:?}"),
            })?
            .map_err(|e| classify(&describe, "connect", false, &e))?;
        let kvs = Self {
            runtime,
            client,
            config: config.clone(),
            describe,
            prefix,
            tables: RwLock::new(BTreeMap::new()),
            maintenance: None,
        };
        kvs.reload_catalog()?;
        let maintenance = match &config.maintenance {
            None => None,
            Some(m) => {
                let worker = Self::open(&EtcdConfig {
                    maintenance: None,
                    ..config.clone()
                })?;
                Some(Maintenance::spawn(
                    Arc::new(worker),
                    m.interval,
                    m.keep_revisions,
                    m.defragment_above_bytes,
                ))
            }
        };
        Ok(Self { maintenance, ..kvs })
    }

    /// The background maintenance configured for this store, if any.
    pub fn maintenance(&self) -> Option<&Maintenance> {
        self.maintenance.as_ref()
    }

    pub fn config(&self) -> &EtcdConfig {
        &self.config
    }

    pub fn describe(&self) -> &str {
        &self.describe
    }

    /// A store key: the prefix, then the layout's key.
    pub(crate) fn key(&self, inner: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + inner.len());
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(inner);
        k
    }

    /// The layout's key of a store key.
    pub(crate) fn inner<'k>(&self, key: &'k [u8]) -> KvsResult<&'k [u8]> {
        key.strip_prefix(self.prefix.as_slice())
            .ok_or_else(|| corrupt("a key outside the store's prefix"))
    }

    pub(crate) fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    pub(crate) fn client(&self) -> Client {
        self.client.clone()
    }

    /// Runs a request, again while it fails in a way that certainly left nothing applied
    /// (`Unavailable`: a member that is down or has no leader, a connection refused) until
    /// the request timeout has passed: the client spreads requests over every endpoint, so
    /// without this a dead member fails a share of them. A write refused because the cluster
    /// is over its space quota is also retried when this store runs maintenance: the pass it
    /// asks for makes room and disarms the alarm, so a writer faster than the maintenance
    /// interval waits for it instead of failing.
    pub(crate) fn call<T, Fut>(
        &self,
        operation: &'static str,
        write: bool,
        request: impl Fn(Client) -> Fut,
    ) -> KvsResult<T>
    where
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = std::time::Instant::now() + self.config.request_timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let e = match self.block_on(request(self.client())) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            let error = classify(&self.describe, operation, write, &e);
            let retriable = match (&error, &self.maintenance) {
                (KvsError::Unavailable { .. }, _) => true,
                (_, Some(maintenance)) if over_quota(&e) => {
                    maintenance.make_room();
                    true
                }
                _ => false,
            };
            if !retriable || std::time::Instant::now() + pause >= deadline {
                return Err(error);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(250));
        }
    }

    /// The peer URLs of every member of the cluster this store is connected to.
    pub(crate) fn peer_urls(&self) -> KvsResult<Vec<String>> {
        let members = self.call("member list", false, |mut client| async move {
            client.member_list().await
        })?;
        Ok(members
            .members()
            .iter()
            .flat_map(|m| m.peer_urls().iter().cloned())
            .collect())
    }

    /// One key, read linearizably.
    fn get_key(&self, operation: &'static str, key: &[u8]) -> KvsResult<etcd_client::GetResponse> {
        self.call(operation, false, |mut client| {
            let key = key.to_vec();
            async move { client.get(key, None).await }
        })
    }

    fn txn(
        &self,
        operation: &'static str,
        write: bool,
        txn: Txn,
    ) -> KvsResult<etcd_client::TxnResponse> {
        self.call(operation, write, |mut client| {
            let txn = txn.clone();
            async move { client.txn(txn).await }
        })
    }

    /// One page of a key range: up to `limit` keys from `start` (inclusive) to `end`.
    pub(crate) fn range(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        limit: i64,
        keys_only: bool,
        revision: Option<i64>,
    ) -> KvsResult<(Vec<KeyValue>, bool, i64)> {
        let mut options = GetOptions::new().with_range(end).with_limit(limit);
        if keys_only {
            options = options.with_keys_only();
        }
        if let Some(r) = revision {
            options = options.with_revision(r);
        }
        let mut response = self.call("read", false, |mut client| {
            let (start, options) = (start.clone(), options.clone());
            async move { client.get(start, Some(options)).await }
        })?;
        let revision = response.header().map_or(0, |h| h.revision());
        let more = response.more();
        Ok((response.take_kvs(), more, revision))
    }

    /// Every key of a range, paged, at one revision.
    pub(crate) fn range_all(
        &self,
        start: Vec<u8>,
        end: Vec<u8>,
        keys_only: bool,
    ) -> KvsResult<Vec<KeyValue>> {
        let mut out = Vec::new();
        let (mut from, mut revision) = (start, None);
        loop {
            let (page, more, rev) = self.range(from, end.clone(), 1000, keys_only, revision)?;
            revision = Some(revision.unwrap_or(rev));
            let last = page.last().map(|kv| kv.key().to_vec());
            out.extend(page);
            match (more, last) {
                (true, Some(mut last)) => {
                    last.push(0);
                    from = last;
                }
                _ => return Ok(out),
            }
        }
    }

    fn reload_catalog(&self) -> KvsResult<BTreeMap<TableRef, u32>> {
        let start = self.key(keys::CATALOG_TABLE_PREFIX);
        let mut end = start.clone();
        end.push(0xFF);
        let mut tables = BTreeMap::new();
        for kv in self.range_all(start, end, false)? {
            let name = self
                .inner(kv.key())?
                .strip_prefix(keys::CATALOG_TABLE_PREFIX)
                .ok_or_else(|| corrupt("malformed catalogue key"))?;
            let name =
                std::str::from_utf8(name).map_err(|_| corrupt("a table name is not UTF-8"))?;
            let table = TableRef::parse(name)
                .map_err(|_| corrupt(format!("malformed table name {name:?}")))?;
            let id: [u8; 4] = kv
                .value()
                .get(..4)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt(format!("malformed catalogue entry for {name}")))?;
            tables.insert(table, u32::from_be_bytes(id));
        }
        *self.tables.write().map_err(|_| poisoned())? = tables.clone();
        Ok(tables)
    }

    fn table_id(&self, table: &TableRef) -> KvsResult<u32> {
        if let Some(id) = self.tables.read().map_err(|_| poisoned())?.get(table) {
            return Ok(*id);
        }
        self.reload_catalog()?
            .get(table)
            .copied()
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })
    }

    /// The newest version below each cell's bound (a transaction of limited range reads).
    fn latest(
        &self,
        table: &TableRef,
        cells: &[(Cell, Timestamp)],
        keys_only: bool,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        let id = self.table_id(table)?;
        let mut out = BTreeMap::new();
        for group in groups(
            cells,
            self.config.max_txn_ops,
            self.config.max_request_bytes,
            |(c, _)| 2 * (c.row().len() + c.column().len()),
        ) {
            let ops: Vec<TxnOp> = group
                .iter()
                .map(|(cell, ts)| self.newest_below(id, cell, *ts, keys_only))
                .collect();
            let response = self.txn("get", false, Txn::new().and_then(ops))?;
            for ((cell, _), op) in group.iter().zip(response.op_responses()) {
                if let Some(kv) = get_response(op)?.into_iter().next() {
                    let decoded = keys::decode(self.inner(kv.key())?)?;
                    out.insert(cell.clone(), Value::new(kv.value(), decoded.ts));
                }
            }
        }
        Ok(out)
    }

    /// The read of a cell's newest version below `ts`: one forward range read with limit 1.
    fn newest_below(&self, id: u32, cell: &Cell, ts: Timestamp, keys_only: bool) -> TxnOp {
        let prefix = keys::cell_prefix(id, cell.row(), cell.column());
        let mut options = GetOptions::new()
            .with_range(self.key(&keys::past_terminator(prefix.clone())))
            .with_limit(1);
        if keys_only {
            options = options.with_keys_only();
        }
        TxnOp::get(self.key(&keys::with_ts(&prefix, ts - 1)), Some(options))
    }

    /// Writes versions unless a (cell, ts) holds a different value; each group of the limits
    /// is all or nothing (compare-guarded against concurrent writers of the same versions).
    fn put_versions(&self, versions: &[(u32, TableRef, &Cell, Timestamp, &[u8])]) -> KvsResult<()> {
        let mut seen: BTreeMap<Vec<u8>, &[u8]> = BTreeMap::new();
        let mut keyed = Vec::with_capacity(versions.len());
        for (id, table, cell, ts, value) in versions {
            let key = self.key(&keys::version_key(*id, cell, *ts));
            if let Some(other) = seen.insert(key.clone(), value) {
                if other != *value {
                    return Err(KvsError::ValueAlreadyWritten {
                        table: table.clone(),
                        cell: (*cell).clone(),
                        timestamp: *ts,
                    });
                }
                continue;
            }
            keyed.push((key, table, *cell, *ts, *value));
        }
        for group in groups(
            &keyed,
            self.config.max_txn_ops,
            self.config.max_request_bytes,
            |(k, _, _, _, v)| k.len() + v.len(),
        ) {
            // Fresh versions, the common case, in one round trip: write them all if none exists
            // yet, else read them back.
            let reads: Vec<TxnOp> = group
                .iter()
                .map(|(k, ..)| TxnOp::get(k.clone(), None))
                .collect();
            let fresh = Txn::new()
                .when(
                    group
                        .iter()
                        .map(|(k, ..)| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    group
                        .iter()
                        .map(|(k, _, _, _, v)| TxnOp::put(k.clone(), v.to_vec(), None))
                        .collect::<Vec<_>>(),
                )
                .or_else(reads.clone());
            let answer = self.txn("put", true, fresh)?;
            if answer.succeeded() {
                continue;
            }
            // Some exist: identical values are fine, a different one is an error; write the
            // rest, comparing what exists, and look again if someone wrote meanwhile.
            let mut existing = answer.op_responses();
            let mut written = false;
            for _attempt in 0..5 {
                let mut compares = Vec::new();
                let mut puts = Vec::new();
                for ((key, table, cell, ts, value), op) in group.iter().zip(existing) {
                    match get_response(op)?.into_iter().next() {
                        Some(kv) if kv.value() != *value => {
                            return Err(KvsError::ValueAlreadyWritten {
                                table: (*table).clone(),
                                cell: (*cell).clone(),
                                timestamp: *ts,
                            })
                        }
                        Some(_) => compares.push(Compare::value(
                            key.clone(),
                            CompareOp::Equal,
                            value.to_vec(),
                        )),
                        None => {
                            compares.push(Compare::create_revision(
                                key.clone(),
                                CompareOp::Equal,
                                0,
                            ));
                            puts.push(TxnOp::put(key.clone(), value.to_vec(), None));
                        }
                    }
                }
                if puts.is_empty()
                    || self
                        .txn("put", true, Txn::new().when(compares).and_then(puts))?
                        .succeeded()
                {
                    written = true;
                    break;
                }
                existing = self
                    .txn("put", false, Txn::new().and_then(reads.clone()))?
                    .op_responses();
            }
            if !written {
                return Err(KvsError::Unavailable {
                    detail: "versions being written kept changing under five attempts to write them; try again".to_owned(),
                });
            }
        }
        Ok(())
    }

    fn delete_keys(&self, keys: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> KvsResult<()> {
        for group in groups(
            &keys,
            self.config.max_txn_ops,
            self.config.max_request_bytes,
            |(k, e)| k.len() + e.as_ref().map_or(0, Vec::len),
        ) {
            let ops: Vec<TxnOp> = group
                .iter()
                .map(|(k, end)| {
                    TxnOp::delete(
                        k.clone(),
                        end.clone().map(|e| DeleteOptions::new().with_range(e)),
                    )
                })
                .collect();
            self.txn("delete", true, Txn::new().and_then(ops))?;
        }
        Ok(())
    }

    /// Versions of one row (or a slice of it), reduced to the newest below `ts` per column.
    fn row_cells(
        &self,
        id: u32,
        row: &[u8],
        start: Vec<u8>,
        end: Vec<u8>,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Vec<u8>, Value>> {
        let mut out = BTreeMap::new();
        for kv in self.range_all(start, end, false)? {
            let d = keys::decode(self.inner(kv.key())?)?;
            if d.row == row && d.ts < ts && !out.contains_key(&d.column) {
                out.insert(d.column, Value::new(kv.value(), d.ts));
            }
        }
        let _ = id;
        Ok(out)
    }
}

impl KeyValueService for EtcdKvs {
    fn backend_name(&self) -> &'static str {
        "etcd"
    }

    fn shared_between_processes(&self) -> bool {
        true
    }

    fn create_table(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        let catalog_key = self.key(&keys::catalog_key(&table.qualified_name()));
        let next_key = self.key(keys::NEXT_TABLE_ID_KEY);
        for _attempt in 0..20 {
            let current = self.get_key("create_table", &catalog_key)?;
            if let Some(kv) = current.kvs().first() {
                let id = kv
                    .value()
                    .get(..4)
                    .ok_or_else(|| corrupt("malformed catalogue entry"))?
                    .to_vec();
                let mut value = id;
                value.extend_from_slice(metadata);
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(
                        catalog_key.clone(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then(vec![TxnOp::put(catalog_key.clone(), value, None)]);
                if self.txn("create_table", true, txn)?.succeeded() {
                    self.reload_catalog()?;
                    return Ok(());
                }
                continue;
            }
            let next = self.get_key("create_table", &next_key)?;
            let (id, guard) = match next.kvs().first() {
                Some(kv) => (
                    u32::from_be_bytes(
                        kv.value()
                            .try_into()
                            .map_err(|_| corrupt("malformed next table id"))?,
                    ),
                    Compare::mod_revision(next_key.clone(), CompareOp::Equal, kv.mod_revision()),
                ),
                None => (
                    0,
                    Compare::create_revision(next_key.clone(), CompareOp::Equal, 0),
                ),
            };
            let after = id.checked_add(1).ok_or_else(|| KvsError::Storage {
                detail: "table ids exhausted".to_owned(),
            })?;
            let mut value = id.to_be_bytes().to_vec();
            value.extend_from_slice(metadata);
            let txn = Txn::new()
                .when(vec![
                    guard,
                    Compare::create_revision(catalog_key.clone(), CompareOp::Equal, 0),
                ])
                .and_then(vec![
                    TxnOp::put(next_key.clone(), after.to_be_bytes().to_vec(), None),
                    TxnOp::put(catalog_key.clone(), value, None),
                ]);
            if self.txn("create_table", true, txn)?.succeeded() {
                self.tables
                    .write()
                    .map_err(|_| poisoned())?
                    .insert(table.clone(), id);
                return Ok(());
            }
        }
        Err(KvsError::Unavailable {
            detail: format!(
                "create_table {table}: too much contention on the catalogue of {}",
                self.describe
            ),
        })
    }

    fn drop_table(&self, table: &TableRef) -> KvsResult<()> {
        let Ok(id) = self.table_id(table) else {
            return Ok(());
        };
        let txn = Txn::new().and_then(vec![
            TxnOp::delete(self.key(&keys::catalog_key(&table.qualified_name())), None),
            TxnOp::delete(
                self.key(&keys::table_start(id)),
                Some(DeleteOptions::new().with_range(self.key(&keys::table_end(id)))),
            ),
        ]);
        self.txn("drop_table", true, txn)?;
        self.tables.write().map_err(|_| poisoned())?.remove(table);
        Ok(())
    }

    fn truncate_table(&self, table: &TableRef) -> KvsResult<()> {
        let id = self.table_id(table)?;
        self.delete_keys(vec![(
            self.key(&keys::table_start(id)),
            Some(self.key(&keys::table_end(id))),
        )])
    }

    fn list_tables(&self) -> KvsResult<Vec<TableRef>> {
        Ok(self.reload_catalog()?.into_keys().collect())
    }

    fn table_metadata(&self, table: &TableRef) -> KvsResult<Vec<u8>> {
        let r = self.get_key(
            "table_metadata",
            &self.key(&keys::catalog_key(&table.qualified_name())),
        )?;
        match r.kvs().first() {
            Some(kv) => Ok(kv.value().get(4..).unwrap_or_default().to_vec()),
            None => Err(KvsError::TableNotFound {
                table: table.clone(),
            }),
        }
    }

    fn put_table_metadata(&self, table: &TableRef, metadata: &[u8]) -> KvsResult<()> {
        self.table_id(table)?;
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
        self.latest(table, cells, false)
    }

    fn get_rows(
        &self,
        table: &TableRef,
        rows: &[Vec<u8>],
        columns: &ColumnSelection,
        ts: Timestamp,
    ) -> KvsResult<BTreeMap<Cell, Value>> {
        validate_read_ts(ts)?;
        let id = self.table_id(table)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let prefix = keys::row_prefix(id, row);
            let end = keys::past_terminator(prefix.clone());
            for (column, value) in self.row_cells(id, row, self.key(&prefix), self.key(&end), ts)? {
                if columns.contains(&column) {
                    out.insert(Cell::new(row.clone(), column)?, value);
                }
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
        let id = self.table_id(table)?;
        let scan = scan::RangeScan::new(self, id, request.clone(), ts);
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
        let id = self.table_id(table)?;
        let (start, end) = (&columns.start, &columns.end);
        if !start.is_empty() && !end.is_empty() && start >= end {
            return Ok(Box::new(std::iter::empty()));
        }
        let mut out = Vec::new();
        for row in rows {
            let from = if start.is_empty() {
                keys::row_prefix(id, row)
            } else {
                keys::cell_prefix(id, row, start)
            };
            let to = if end.is_empty() {
                keys::past_terminator(keys::row_prefix(id, row))
            } else {
                keys::cell_prefix(id, row, end)
            };
            for (column, value) in self.row_cells(id, row, self.key(&from), self.key(&to), ts)? {
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
            .latest(table, cells, true)?
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
        let id = self.table_id(table)?;
        let mut out = BTreeMap::new();
        for cell in cells {
            let prefix = keys::cell_prefix(id, cell.row(), cell.column());
            let found = self.range_all(
                self.key(&keys::with_ts(&prefix, ts - 1)),
                self.key(&keys::past_terminator(prefix.clone())),
                true,
            )?;
            let mut all = found
                .iter()
                .map(|kv| Ok(keys::decode(self.inner(kv.key())?)?.ts))
                .collect::<KvsResult<Vec<Timestamp>>>()?;
            if !all.is_empty() {
                all.reverse();
                out.insert(cell.clone(), all);
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
        let id = self.table_id(table)?;
        scan::candidates(self, id, request)
    }

    fn put(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        let id = self.table_id(table)?;
        let versions: Vec<_> = writes
            .iter()
            .map(|(c, v)| (id, table.clone(), c, ts, v.as_slice()))
            .collect();
        self.put_versions(&versions)
    }

    fn multi_put(&self, writes: &[(TableRef, CellWrites)], ts: Timestamp) -> KvsResult<()> {
        validate_version_ts(ts, false)?;
        let mut versions = Vec::new();
        for (table, cells) in writes {
            let id = self.table_id(table)?;
            versions.extend(
                cells
                    .iter()
                    .map(|(c, v)| (id, table.clone(), c, ts, v.as_slice())),
            );
        }
        self.put_versions(&versions)
    }

    fn multi_put_reading_latest(
        &self,
        writes: &[(TableRef, CellWrites)],
        read_latest: &[bool],
        ts: Timestamp,
    ) -> KvsResult<Vec<BTreeMap<Cell, Timestamp>>> {
        validate_version_ts(ts, false)?;
        // Fresh versions within one transaction's limits, the common case: one transaction
        // reads the newest versions (before its writes, as its operations run in order) and
        // writes them all if none exists yet. Otherwise, or if one does, the two-step way.
        let mut reads = Vec::new();
        let mut puts = Vec::new();
        let mut compares = Vec::new();
        let mut distinct = BTreeSet::new();
        let mut bytes = 0usize;
        for (i, (table, cells)) in writes.iter().enumerate() {
            let id = self.table_id(table)?;
            let read = read_latest.get(i).copied().unwrap_or(false);
            for (cell, value) in cells {
                let key = self.key(&keys::version_key(id, cell, ts));
                bytes = bytes
                    .saturating_add(2 * key.len())
                    .saturating_add(value.len())
                    .saturating_add(128);
                if read {
                    reads.push((i, cell, self.newest_below(id, cell, MAX_READ_TS, true)));
                }
                compares.push(Compare::create_revision(key.clone(), CompareOp::Equal, 0));
                puts.push(TxnOp::put(key.clone(), value.clone(), None));
                distinct.insert(key);
            }
        }
        let fits = reads.len() + puts.len() <= self.config.max_txn_ops
            && bytes <= self.config.max_request_bytes
            && distinct.len() == puts.len();
        if fits {
            let ops: Vec<TxnOp> = reads.iter().map(|(_, _, op)| op.clone()).collect();
            let answer = self.txn(
                "put",
                true,
                Txn::new().when(compares).and_then([ops, puts].concat()),
            )?;
            if answer.succeeded() {
                let mut latest = vec![BTreeMap::new(); writes.len()];
                for ((i, cell, _), op) in reads.iter().zip(answer.op_responses()) {
                    if let Some(kv) = get_response(op)?.into_iter().next() {
                        let decoded = keys::decode(self.inner(kv.key())?)?;
                        if let Some(map) = latest.get_mut(*i) {
                            map.insert((*cell).clone(), decoded.ts);
                        }
                    }
                }
                return Ok(latest);
            }
        }
        ortelius_kvs::read_latest_then_multi_put(self, writes, read_latest, ts)
    }

    fn put_with_timestamps(&self, table: &TableRef, values: &[(Cell, Value)]) -> KvsResult<()> {
        for (_, v) in values {
            validate_version_ts(v.timestamp, true)?;
        }
        let id = self.table_id(table)?;
        let versions: Vec<_> = values
            .iter()
            .map(|(c, v)| (id, table.clone(), c, v.timestamp, v.contents.as_slice()))
            .collect();
        self.put_versions(&versions)
    }

    fn put_unless_exists(&self, table: &TableRef, writes: &[(Cell, Vec<u8>)]) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let mut written: Vec<Vec<u8>> = Vec::new();
        for group in groups(
            writes,
            self.config.max_txn_ops,
            self.config.max_request_bytes,
            |(c, v)| 2 * (c.row().len() + c.column().len()) + v.len(),
        ) {
            let keys_of: Vec<Vec<u8>> = group
                .iter()
                .map(|(c, _)| self.key(&keys::version_key(id, c, ATOMIC_TS)))
                .collect();
            let txn = Txn::new()
                .when(
                    keys_of
                        .iter()
                        .map(|k| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
                        .collect::<Vec<_>>(),
                )
                .and_then(
                    keys_of
                        .iter()
                        .zip(group)
                        .map(|(k, (_, v))| TxnOp::put(k.clone(), v.clone(), None))
                        .collect::<Vec<_>>(),
                )
                .or_else(
                    keys_of
                        .iter()
                        .map(|k| TxnOp::get(k.clone(), Some(GetOptions::new().with_keys_only())))
                        .collect::<Vec<_>>(),
                );
            let response = self.txn("put_unless_exists", true, txn)?;
            if response.succeeded() {
                written.extend(keys_of);
                continue;
            }
            let mut existing = Vec::new();
            for ((cell, _), op) in group.iter().zip(response.op_responses()) {
                if !get_response(op)?.is_empty() {
                    existing.push(cell.clone());
                }
            }
            // All or nothing: undo what earlier groups of this call wrote.
            self.delete_keys(written.into_iter().map(|k| (k, None)).collect())?;
            return Err(KvsError::KeyAlreadyExists {
                table: table.clone(),
                cells: existing,
            });
        }
        Ok(())
    }

    fn check_and_set(&self, table: &TableRef, request: &CheckAndSetRequest) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let key = self.key(&keys::version_key(id, &request.cell, ATOMIC_TS));
        let compare = match &request.expected {
            None => Compare::create_revision(key.clone(), CompareOp::Equal, 0),
            Some(old) => Compare::value(key.clone(), CompareOp::Equal, old.clone()),
        };
        let txn = Txn::new()
            .when(vec![compare])
            .and_then(vec![TxnOp::put(
                key.clone(),
                request.new_value.clone(),
                None,
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let response = self.txn("check_and_set", true, txn)?;
        if response.succeeded() {
            return Ok(());
        }
        let actual = match response.op_responses().into_iter().next() {
            Some(op) => get_response(op)?
                .into_iter()
                .next()
                .map(|kv| kv.value().to_vec()),
            None => None,
        };
        Err(KvsError::CheckAndSetFailed {
            table: table.clone(),
            cell: request.cell.clone(),
            actual,
        })
    }

    fn delete(&self, table: &TableRef, versions: &[(Cell, Timestamp)]) -> KvsResult<()> {
        let id = self.table_id(table)?;
        self.delete_keys(
            versions
                .iter()
                .map(|(c, ts)| (self.key(&keys::version_key(id, c, *ts)), None))
                .collect(),
        )
    }

    fn delete_range(&self, table: &TableRef, rows: &RowRange) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let start = if rows.start.is_empty() {
            keys::table_start(id)
        } else {
            keys::row_prefix(id, &rows.start)
        };
        let end = if rows.end.is_empty() {
            keys::table_end(id)
        } else {
            keys::row_prefix(id, &rows.end)
        };
        if start >= end {
            return Ok(());
        }
        self.delete_keys(vec![(self.key(&start), Some(self.key(&end)))])
    }

    fn delete_all_timestamps(
        &self,
        table: &TableRef,
        deletes: &[(Cell, TimestampRangeDelete)],
    ) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let ranges = deletes
            .iter()
            .map(|(cell, range)| {
                let (min, max) = range.bounds();
                let prefix = keys::cell_prefix(id, cell.row(), cell.column());
                // Newest first: from `max` down to `min`, the end just past `min`'s key.
                let mut end = keys::with_ts(&prefix, min);
                end.push(0);
                (self.key(&keys::with_ts(&prefix, max)), Some(self.key(&end)))
            })
            .collect();
        self.delete_keys(ranges)
    }

    fn add_garbage_collection_sentinel_values(
        &self,
        table: &TableRef,
        cells: &[Cell],
    ) -> KvsResult<()> {
        let id = self.table_id(table)?;
        let versions: Vec<_> = cells
            .iter()
            .map(|c| (id, table.clone(), c, SWEEP_SENTINEL_TS, &[][..]))
            .collect();
        self.put_versions(&versions)
    }
}
