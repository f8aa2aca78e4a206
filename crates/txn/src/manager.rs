//! The transaction manager: starts transactions, knows table settings, and runs closures with
//! retries.

use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use ortelius_kvs::{KeyValueService, TableRef, Timestamp};
use ortelius_timelock::{
    InProcessLockService, LockService, LockToken, PersistentTimestampService, StartError,
    TimestampService,
};

use crate::backup_lock::{SystemWallClock, WallClock};
use crate::error::{RetryClass, TxnError, TxnResult};
use crate::metadata::TableMetadata;
use crate::punch::Puncher;
use crate::transaction::{State, Transaction};
use crate::txn_table::TransactionsTable;

/// Settings of a [`TransactionManager`].
#[derive(Clone, Debug)]
pub struct TransactionConfig {
    /// How long a committer waits for its commit locks, and a reader for a committing writer.
    pub lock_timeout: Duration,
    /// How many times `run` retries a retriable failure.
    pub max_retries: u32,
    /// How many transaction outcomes the commit-timestamp cache keeps.
    pub commit_ts_cache_size: usize,
    /// How often the leases of open write transactions' immutable-timestamp guards are
    /// refreshed (well below the lock service's lease, 20 s in process), so a transaction may
    /// stay open longer than one lease.
    pub lease_refresh_interval: Duration,
    /// Read-only transactions older than this fail their reads (retriable), and sweep never
    /// removes what a reader that started less than this long ago could need.
    pub read_timeout: Duration,
    /// How often a (wall clock → timestamp) punch is recorded.
    pub punch_interval: Duration,
}

impl Default for TransactionConfig {
    fn default() -> Self {
        Self {
            lock_timeout: Duration::from_secs(60),
            max_retries: 10,
            commit_ts_cache_size: 1_000_000,
            lease_refresh_interval: Duration::from_secs(5),
            read_timeout: Duration::from_secs(3600),
            punch_interval: Duration::from_secs(60),
        }
    }
}

/// Snapshot isolation (the default) or serializable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Isolation {
    #[default]
    Snapshot,
    /// Reads of every write-write-checked table are validated at commit.
    Serializable,
}

pub(crate) struct Inner {
    pub kvs: Arc<dyn KeyValueService>,
    pub timestamps: Arc<dyn TimestampService>,
    pub locks: Arc<dyn LockService>,
    pub txns: TransactionsTable,
    pub config: TransactionConfig,
    metadata: RwLock<HashMap<TableRef, TableMetadata>>,
    /// Seed for retry back-off jitter.
    jitter: Mutex<u64>,
    /// Immutable-timestamp guards of open write transactions, kept alive by the refresher.
    pub open_guards: Mutex<HashSet<LockToken>>,
    pub puncher: Puncher,
    last_punch: Mutex<Option<Instant>>,
    pub metrics: crate::metrics::Metrics,
}

impl Inner {
    /// A fresh timestamp from the timestamp service (counted).
    pub(crate) fn fresh_timestamp(&self) -> TxnResult<Timestamp> {
        let ts = self.timestamps.fresh_timestamp()?;
        self.metrics.timestamps(1);
        Ok(ts)
    }

    /// Punches a fresh timestamp if the last punch is older than the punch interval.
    fn punch_if_due(&self) {
        let due = self.last_punch.lock().is_ok_and(|mut last| {
            let due = last.is_none_or(|t| t.elapsed() >= self.config.punch_interval);
            if due {
                *last = Some(Instant::now());
            }
            due
        });
        if due {
            if let Ok(ts) = self.fresh_timestamp() {
                // Best effort: a missed punch only makes the unreadable timestamp older.
                let _ = self.puncher.punch(ts);
            }
        }
    }
}

impl Inner {
    /// A table's settings (cached after the first read).
    pub fn metadata(&self, table: &TableRef) -> TxnResult<TableMetadata> {
        if let Some(m) = self
            .metadata
            .read()
            .ok()
            .and_then(|m| m.get(table).copied())
        {
            return Ok(m);
        }
        let m = TableMetadata::decode(&self.kvs.table_metadata(table)?)?;
        if let Ok(mut cache) = self.metadata.write() {
            cache.insert(table.clone(), m);
        }
        Ok(m)
    }
}

/// Starts and runs transactions over one store. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct TransactionManager {
    inner: Arc<Inner>,
}

impl TransactionManager {
    /// A manager over explicit services (e.g. a remote time authority).
    pub fn new(
        kvs: Arc<dyn KeyValueService>,
        timestamps: Arc<dyn TimestampService>,
        locks: Arc<dyn LockService>,
        config: TransactionConfig,
    ) -> TxnResult<Self> {
        Self::with_wall_clock(kvs, timestamps, locks, config, Arc::new(SystemWallClock))
    }

    /// Like [`new`](Self::new) with an explicit wall clock (for the punch table; tests).
    pub fn with_wall_clock(
        kvs: Arc<dyn KeyValueService>,
        timestamps: Arc<dyn TimestampService>,
        locks: Arc<dyn LockService>,
        config: TransactionConfig,
        wall_clock: Arc<dyn WallClock>,
    ) -> TxnResult<Self> {
        // A store whose restore has not finished may hold commits after the backup timestamp
        // and a timestamp bound below them: nothing may run on it yet.
        ortelius_kvs::snapshot::ensure_no_unfinished_restore(&*kvs, kvs.backend_name())?;
        let puncher = Puncher::new(kvs.clone(), wall_clock)?;
        let txns = TransactionsTable::new(kvs.clone(), config.commit_ts_cache_size)?;
        Ok(Self {
            inner: Arc::new(Inner {
                kvs,
                timestamps,
                locks,
                txns,
                config,
                metadata: RwLock::new(HashMap::new()),
                jitter: Mutex::new(0x9E37_79B9_7F4A_7C15),
                open_guards: Mutex::new(HashSet::new()),
                puncher,
                last_punch: Mutex::new(None),
                metrics: crate::metrics::Metrics::default(),
            }),
        }
        .with_lease_refresher())
    }

    /// Starts the background thread that refreshes open transactions' guards. It holds only a
    /// weak reference and ends once the manager is dropped.
    fn with_lease_refresher(self) -> Self {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.config.lease_refresh_interval;
        let spawned = std::thread::Builder::new()
            .name("ortelius-lease-refresher".to_owned())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(inner) = weak.upgrade() else { return };
                inner.punch_if_due();
                let tokens: Vec<LockToken> = inner
                    .open_guards
                    .lock()
                    .map(|g| g.iter().copied().collect())
                    .unwrap_or_default();
                if !tokens.is_empty() {
                    // A guard that already expired stays expired: its transaction fails at commit.
                    let _ = inner.locks.refresh(&tokens);
                }
            });
        // Without the thread, transactions longer than one lease fail at commit (retriable).
        drop(spawned);
        self
    }

    /// Embedded mode: this process owns the store and runs the timestamp and lock services.
    pub fn embedded(kvs: Arc<dyn KeyValueService>, config: TransactionConfig) -> TxnResult<Self> {
        let timestamps = Arc::new(PersistentTimestampService::new(kvs.clone())?);
        Self::new(
            kvs,
            timestamps,
            Arc::new(InProcessLockService::default()),
            config,
        )
    }

    pub fn kvs(&self) -> &Arc<dyn KeyValueService> {
        &self.inner.kvs
    }

    pub fn timestamps(&self) -> &Arc<dyn TimestampService> {
        &self.inner.timestamps
    }

    pub fn locks(&self) -> &Arc<dyn LockService> {
        &self.inner.locks
    }

    /// This process's transaction metrics (`Metrics::render` gives the Prometheus text).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.inner.metrics
    }

    pub fn transactions_table(&self) -> &TransactionsTable {
        &self.inner.txns
    }

    /// A table's conflict handler and sweep strategy.
    pub fn table_metadata(&self, table: &TableRef) -> TxnResult<TableMetadata> {
        self.inner.metadata(table)
    }

    /// Creates a transactional table (idempotent) with its conflict handler and sweep strategy.
    pub fn create_table(&self, table: &TableRef, metadata: TableMetadata) -> TxnResult<()> {
        if table.namespace().is_empty() && table.name().starts_with('_') {
            return Err(TxnError::SystemTable {
                table: table.clone(),
            });
        }
        self.inner.kvs.create_table(table, &metadata.encode())?;
        if let Ok(mut cache) = self.inner.metadata.write() {
            cache.insert(table.clone(), metadata);
        }
        Ok(())
    }

    /// The unreadable timestamp: the one that was current `read_timeout` ago (0 if there is no
    /// punch that old). No reader that started since then can need a version below it.
    pub fn unreadable_timestamp(&self) -> TxnResult<Timestamp> {
        let puncher = &self.inner.puncher;
        let then = puncher
            .now_ms()
            .saturating_sub(self.inner.config.read_timeout.as_millis() as u64);
        Ok(puncher.timestamp_at(then)?.unwrap_or(0))
    }

    /// Records a punch now (normally done in the background every `punch_interval`).
    pub fn punch(&self) -> TxnResult<()> {
        let ts = self.fresh_timestamp()?;
        Ok(self.inner.puncher.punch(ts)?)
    }

    /// A fresh timestamp.
    pub fn fresh_timestamp(&self) -> TxnResult<Timestamp> {
        self.inner.fresh_timestamp()
    }

    /// The immutable timestamp: below the start of every running write transaction.
    pub fn immutable_timestamp(&self) -> TxnResult<Timestamp> {
        match self
            .inner
            .locks
            .min_locked_timestamp()
            .map_err(TxnError::Lock)?
        {
            Some(ts) => Ok(ts),
            None => self.fresh_timestamp(),
        }
    }

    fn transaction(
        &self,
        start_ts: Timestamp,
        immutable_lock: Option<ortelius_timelock::LockToken>,
        read_only: bool,
        isolation: Isolation,
    ) -> Transaction {
        Transaction {
            inner: self.inner.clone(),
            start_ts,
            immutable_lock,
            read_only,
            serializable: isolation == Isolation::Serializable,
            started: Instant::now(),
            state: Mutex::new(State::Open),
            writes: Mutex::new(Default::default()),
            reads: Mutex::new(Vec::new()),
            commit_ts: std::sync::OnceLock::new(),
        }
    }

    /// Starts a write transaction: locks a fresh timestamp as its immutable-timestamp guard,
    /// *then* takes its start timestamp (so no sweep can pass the start while it runs).
    pub fn begin(&self, isolation: Isolation) -> TxnResult<Transaction> {
        let (token, start_ts) = self
            .inner
            .locks
            .start_transaction(&*self.inner.timestamps)
            .map_err(|e| match e {
                StartError::Timestamp(e) => TxnError::Timestamp(e),
                StartError::Lock(e) => TxnError::Lock(e),
            })?;
        // The start timestamp (the guard's timestamp is the lock service's own).
        self.inner.metrics.timestamps(1);
        if let Ok(mut guards) = self.inner.open_guards.lock() {
            guards.insert(token);
        }
        Ok(self.transaction(start_ts, Some(token), false, isolation))
    }

    /// Starts a read-only transaction: no locks; writes fail.
    pub fn begin_read_only(&self) -> TxnResult<Transaction> {
        let start_ts = self.inner.fresh_timestamp()?;
        Ok(self.transaction(start_ts, None, true, Isolation::Snapshot))
    }

    /// A read-only transaction reading the snapshot at an earlier timestamp `start_ts` (e.g. a
    /// backup timestamp). Refuses timestamps not yet handed out: reading "the future" would
    /// miss commits that land below it later.
    pub fn begin_read_only_at(&self, start_ts: Timestamp) -> TxnResult<Transaction> {
        let now = self.inner.fresh_timestamp()?;
        if start_ts < 0 || start_ts >= now {
            return Err(TxnError::InvalidTimestamp {
                timestamp: start_ts,
                latest: now,
            });
        }
        Ok(self.transaction(start_ts, None, true, Isolation::Snapshot))
    }

    /// Runs `task` in a snapshot-isolated transaction and commits, retrying retriable failures.
    pub fn run<T>(&self, task: impl FnMut(&Transaction) -> TxnResult<T>) -> TxnResult<T> {
        self.run_with(Isolation::Snapshot, task)
    }

    /// Like [`run`](Self::run) with the given isolation.
    pub fn run_with<T>(
        &self,
        isolation: Isolation,
        mut task: impl FnMut(&Transaction) -> TxnResult<T>,
    ) -> TxnResult<T> {
        self.retrying(|| {
            let txn = self.begin(isolation)?;
            let value = task(&txn)?;
            txn.commit()?;
            Ok(value)
        })
    }

    /// Runs `task` in a read-only transaction, retrying retriable failures (sentinel reads).
    pub fn run_read_only<T>(
        &self,
        mut task: impl FnMut(&Transaction) -> TxnResult<T>,
    ) -> TxnResult<T> {
        self.retrying(|| {
            let txn = self.begin_read_only()?;
            task(&txn)
        })
    }

    fn retrying<T>(&self, mut attempt: impl FnMut() -> TxnResult<T>) -> TxnResult<T> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(e) if e.retry_class() == RetryClass::Retriable => {
                    if attempts > self.inner.config.max_retries {
                        return Err(TxnError::RetriesExhausted {
                            attempts,
                            last: Box::new(e),
                        });
                    }
                    std::thread::sleep(self.backoff(attempts));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Randomised exponential back-off (up to ~1 ms × 2^attempt, capped at 100 ms), so
    /// conflicting retries do not collide again in lock step.
    fn backoff(&self, attempt: u32) -> Duration {
        let random = self.inner.jitter.lock().map_or(7, |mut s| {
            *s ^= *s << 13;
            *s ^= *s >> 7;
            *s ^= *s << 17;
            *s
        });
        let cap_micros = (1000u64 << attempt.min(7)).min(100_000);
        Duration::from_micros(random % cap_micros)
    }
}
