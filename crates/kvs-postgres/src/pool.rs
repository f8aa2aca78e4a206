//! A small connection pool with per-connection prepared statements, and the mapping of
//! PostgreSQL errors to the contract's error classes.
//!
//! Two pools serve a store: connections of the *plain* pool run with `synchronous_commit =
//! off` (data writes, deletes, reads), those of the *atomic* pool with it on (put-unless-exists
//! and check-and-set: the commit record and the timestamp bound). A synchronous commit flushes
//! the write-ahead log up to itself, so every plain write made before a commit record is
//! durable once that record is — the argument RocksDB's unsynced puts rest on too.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ortelius_kvs::{KvsError, KvsResult};
use postgres::error::SqlState;
use postgres::{Client, NoTls, Statement};

/// A connection and the statements prepared on it.
pub(crate) struct Conn {
    pub client: Client,
    statements: HashMap<String, Statement>,
}

impl Conn {
    /// The statement for `sql`, prepared once per connection.
    pub fn prepare(&mut self, sql: &str) -> Result<Statement, postgres::Error> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), s.clone());
        Ok(s)
    }
}

struct Slots {
    idle: Vec<Conn>,
    open: usize,
}

/// A bounded pool of connections with the same settings.
pub(crate) struct Pool {
    config: postgres::Config,
    describe: String,
    size: usize,
    connect_timeout: Duration,
    slots: Mutex<Slots>,
    returned: Condvar,
}

/// A connection on loan from a pool; goes back on drop unless it broke.
pub(crate) struct Pooled<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
}

impl std::ops::Deref for Pooled<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl std::ops::DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .unwrap_or_else(|| unreachable!("a pooled connection is present until dropped"))
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        let Ok(mut slots) = self.pool.slots() else {
            return;
        };
        if conn.client.is_closed() {
            slots.open = slots.open.saturating_sub(1);
        } else {
            slots.idle.push(conn);
        }
        self.pool.returned.notify_one();
    }
}

fn poisoned() -> KvsError {
    KvsError::Storage {
        detail: "the postgres connection pool's lock was poisoned by a panic".to_owned(),
    }
}

impl Pool {
    pub fn new(
        config: postgres::Config,
        describe: String,
        size: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            config,
            describe,
            size,
            connect_timeout,
            slots: Mutex::new(Slots {
                idle: Vec::new(),
                open: 0,
            }),
            returned: Condvar::new(),
        }
    }

    fn slots(&self) -> KvsResult<MutexGuard<'_, Slots>> {
        self.slots.lock().map_err(|_| poisoned())
    }

    /// A connection: an idle one, a new one while under the size, or the next one returned.
    pub fn get(&self) -> KvsResult<Pooled<'_>> {
        let deadline = Instant::now() + self.connect_timeout;
        let mut slots = self.slots()?;
        loop {
            if let Some(conn) = slots.idle.pop() {
                return Ok(Pooled {
                    pool: self,
                    conn: Some(conn),
                });
            }
            if slots.open < self.size {
                slots.open += 1;
                drop(slots);
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(Pooled {
                        pool: self,
                        conn: Some(Conn {
                            client,
                            statements: HashMap::new(),
                        }),
                    }),
                    Err(e) => {
                        if let Ok(mut slots) = self.slots() {
                            slots.open = slots.open.saturating_sub(1);
                        }
                        self.returned.notify_one();
                        Err(connect_error(&self.describe, &e))
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(KvsError::Unavailable {
                    detail: format!(
                        "all {} connections to {} stayed busy for {:?}",
                        self.size, self.describe, self.connect_timeout
                    ),
                });
            }
            slots = self
                .returned
                .wait_timeout(slots, deadline - now)
                .map_err(|_| poisoned())?
                .0;
        }
    }
}

/// A failed connection attempt, told apart by cause so the operator knows what to fix.
pub(crate) fn connect_error(store: &str, e: &postgres::Error) -> KvsError {
    let code = e.code();
    let reason = if code == Some(&SqlState::INVALID_PASSWORD)
        || code == Some(&SqlState::INVALID_AUTHORIZATION_SPECIFICATION)
    {
        "the server refused the user name or password; check user and passwordFile".to_owned()
    } else if code == Some(&SqlState::INVALID_CATALOG_NAME) {
        "the database does not exist; create it (CREATE DATABASE) or fix database in the config"
            .to_owned()
    } else {
        // The server's own message (never contains the password we sent).
        e.as_db_error()
            .map_or_else(|| e.to_string(), |db| db.message().to_owned())
    };
    let detail = format!("cannot connect to {store}: {reason}");
    match code {
        // Wrong credentials or database: retrying will not help.
        Some(c)
            if *c == SqlState::INVALID_PASSWORD
                || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                || *c == SqlState::INVALID_CATALOG_NAME =>
        {
            KvsError::Storage { detail }
        }
        _ => KvsError::Unavailable { detail },
    }
}

/// Where in an operation an error happened: it decides whether a write may have applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// A read, or a write inside a transaction that was not committed: nothing applied.
    NotApplied,
    /// A write committed by this very statement or by `COMMIT`: a lost reply may hide success.
    Committing,
}

/// Server errors after which the statement certainly did not take effect and trying again may
/// succeed.
fn is_transient_server_error(code: &SqlState) -> bool {
    *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::ADMIN_SHUTDOWN
        || *code == SqlState::CRASH_SHUTDOWN
        || *code == SqlState::CANNOT_CONNECT_NOW
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::TOO_MANY_CONNECTIONS
}

/// Maps an error of `operation` to the contract's errors.
pub(crate) fn classify(
    store: &str,
    operation: &'static str,
    phase: Phase,
    e: &postgres::Error,
) -> KvsError {
    let cause = match e.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    let detail = format!("{operation} on {store}: {cause}");
    match e.code() {
        // The server answered with an error: the statement (and its transaction) failed, so
        // nothing was applied — except when the error arrives as the connection dies.
        Some(code) if is_transient_server_error(code) => {
            if phase == Phase::Committing && !e.is_closed() && *code != SqlState::ADMIN_SHUTDOWN {
                KvsError::Unavailable { detail }
            } else if phase == Phase::Committing {
                KvsError::MaybeApplied { operation, detail }
            } else {
                KvsError::Unavailable { detail }
            }
        }
        Some(_) => KvsError::Storage { detail },
        // No answer: the connection broke (server restart, killed backend, network).
        None if phase == Phase::Committing => KvsError::MaybeApplied { operation, detail },
        None => KvsError::Unavailable { detail },
    }
}

/// Whether an error means the table's SQL relation is gone (dropped by another process).
pub(crate) fn is_missing_relation(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::UNDEFINED_TABLE)
}
