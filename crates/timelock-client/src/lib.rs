//! The client of the timelock server: [`TimelockClient`] implements the timestamp and lock
//! traits of `ortelius-timelock`, so a `TransactionManager` runs unchanged against the shared
//! authority.
//!
//! - One TCP connection to the leader, pipelined: many threads' requests are in flight at once
//!   and answers are matched by request id.
//! - Concurrent requests for fresh timestamps are coalesced: while one request is in flight,
//!   the others queue, and the next request asks for all of them at once.
//! - Failover: on "not leader" the client follows the server's hint; on a broken connection it
//!   tries the configured servers in turn until the request's deadline. Every request is safe
//!   to repeat (a repeated lock request leaves at most a lock that expires with its lease).
//! - Transactions start in one round trip (guard lock + start timestamp).

mod conn;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ortelius_timelock::wire::{ErrorCode, RemoteToken, Request, Response};
use ortelius_timelock::{
    FastForward, LockDescriptor, LockError, LockService, LockToken, StartError, TimestampError,
    TimestampRange, TimestampService, MAX_TIMESTAMPS_PER_REQUEST,
};
use serde::Deserialize;

use conn::Connection;

/// The `timelock` block of the config.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TimelockConfig {
    /// Every server of the cluster, `host:port`.
    pub servers: Vec<String>,
    /// The client token, if the servers require one.
    #[serde(default)]
    pub token: Option<String>,
    /// The admin token: only needed to fast-forward (restores).
    #[serde(default)]
    pub admin_token: Option<String>,
    /// How long connecting to one server may take (seconds), default 3.
    #[serde(default = "default_connect_secs")]
    pub connect_timeout_secs: u64,
    /// How long a request may take in total, failovers included (seconds), default 30.
    #[serde(default = "default_request_secs")]
    pub request_timeout_secs: u64,
}

fn default_connect_secs() -> u64 {
    3
}
fn default_request_secs() -> u64 {
    30
}

impl TimelockConfig {
    pub fn new(servers: Vec<String>) -> Self {
        Self {
            servers,
            token: None,
            admin_token: None,
            connect_timeout_secs: default_connect_secs(),
            request_timeout_secs: default_request_secs(),
        }
    }
}

/// Why a request failed.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no timelock server answers ({servers}): {detail}")]
    Unreachable { servers: String, detail: String },
    #[error("the timelock server refused: {message}")]
    Refused { code: ErrorCode, message: String },
    #[error("the timelock server answered something unexpected: {0}")]
    Protocol(String),
}

impl ClientError {
    fn timestamp(self) -> TimestampError {
        match self {
            Self::Refused {
                code: ErrorCode::Invalid,
                message,
            } => TimestampError::InvalidRequest(message),
            Self::Refused {
                code: ErrorCode::Exhausted,
                ..
            } => TimestampError::Exhausted,
            Self::Refused {
                code: ErrorCode::Unauthorized,
                message,
            } => TimestampError::Storage(message),
            other => TimestampError::Unavailable(other.to_string()),
        }
    }

    fn lock(self) -> LockError {
        match self {
            Self::Refused {
                code: ErrorCode::LockTimeout,
                message,
            } => LockError::Timeout {
                descriptor: message,
                waited: Duration::ZERO,
            },
            other => LockError::Unavailable(other.to_string()),
        }
    }
}

/// A batch of callers waiting for fresh timestamps.
#[derive(Default)]
struct Coalescer {
    queue: Vec<(u32, mpsc::Sender<Result<TimestampRange, ClientError>>)>,
    in_flight: bool,
}

struct Inner {
    config: TimelockConfig,
    /// The connection to the server believed to lead.
    current: Mutex<Option<Arc<Connection>>>,
    /// Where to try first (the last leader hint).
    preferred: Mutex<Option<String>>,
    coalescer: Mutex<Coalescer>,
    /// Local lock tokens and the server's tokens they stand for.
    tokens: Mutex<HashMap<u64, RemoteToken>>,
    next_token: AtomicU64,
}

/// The timelock server as a timestamp and lock service. Cheap to clone.
#[derive(Clone)]
pub struct TimelockClient {
    inner: Arc<Inner>,
}

fn unexpected(r: &Response) -> ClientError {
    ClientError::Protocol(format!("{r:?}"))
}

impl TimelockClient {
    /// A client; connects on first use.
    pub fn new(config: TimelockConfig) -> Result<Self, ClientError> {
        if config.servers.is_empty() {
            return Err(ClientError::Unreachable {
                servers: String::new(),
                detail: "timelock.servers is empty; list every timelock server".to_owned(),
            });
        }
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                current: Mutex::new(None),
                preferred: Mutex::new(None),
                coalescer: Mutex::new(Coalescer::default()),
                tokens: Mutex::new(HashMap::new()),
                next_token: AtomicU64::new(1),
            }),
        })
    }

    /// Connects now and returns the cluster id (checks the servers and the token).
    pub fn cluster(&self) -> Result<String, ClientError> {
        match self.call(&Request::Leader)? {
            Response::Leader { cluster, .. } => Ok(cluster),
            other => Err(unexpected(&other)),
        }
    }

    fn servers(&self) -> String {
        self.inner.config.servers.join(", ")
    }

    /// A connection to (what we believe is) the leader.
    fn connection(&self, last_error: &mut String) -> Option<Arc<Connection>> {
        if let Ok(current) = self.inner.current.lock() {
            if let Some(c) = current.as_ref().filter(|c| !c.is_broken()) {
                return Some(c.clone());
            }
        }
        let preferred = self.inner.preferred.lock().ok().and_then(|p| p.clone());
        let token = self
            .inner
            .config
            .admin_token
            .clone()
            .or_else(|| self.inner.config.token.clone())
            .unwrap_or_default();
        let timeout = Duration::from_secs(self.inner.config.connect_timeout_secs.max(1));
        for address in preferred.iter().chain(self.inner.config.servers.iter()) {
            match Connection::open(address, &token, timeout) {
                Ok(c) => {
                    let c = Arc::new(c);
                    if let Ok(mut current) = self.inner.current.lock() {
                        *current = Some(c.clone());
                    }
                    return Some(c);
                }
                Err(e) => *last_error = format!("{address}: {e}"),
            }
        }
        None
    }

    fn forget(&self, broken: &Arc<Connection>) {
        if let Ok(mut current) = self.inner.current.lock() {
            if current.as_ref().is_some_and(|c| Arc::ptr_eq(c, broken)) {
                *current = None;
            }
        }
    }

    /// Sends `request` to the leader, following hints and failing over until the deadline.
    fn call(&self, request: &Request) -> Result<Response, ClientError> {
        self.call_waiting(request, Duration::ZERO)
    }

    /// [`call`](Self::call) for a request the server may hold for up to `wait` (a lock).
    fn call_waiting(&self, request: &Request, wait: Duration) -> Result<Response, ClientError> {
        let deadline = Instant::now()
            + Duration::from_secs(self.inner.config.request_timeout_secs.max(1))
            + wait;
        let mut last_error = "no attempt".to_owned();
        loop {
            if Instant::now() >= deadline {
                return Err(ClientError::Unreachable {
                    servers: self.servers(),
                    detail: last_error,
                });
            }
            let Some(conn) = self.connection(&mut last_error) else {
                std::thread::sleep(Duration::from_millis(200));
                continue;
            };
            match conn.call(request, deadline) {
                Ok(Response::Error {
                    code: ErrorCode::NotLeader,
                    message,
                    leader,
                }) => {
                    last_error = format!("{}: {message}", conn.address());
                    self.forget(&conn);
                    if let Ok(mut p) = self.inner.preferred.lock() {
                        *p = leader.filter(|l| l != conn.address());
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Response::Error {
                    code: ErrorCode::Unavailable,
                    message,
                    ..
                }) => {
                    last_error = format!("{}: {message}", conn.address());
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Response::Error { code, message, .. }) => {
                    return Err(ClientError::Refused { code, message })
                }
                Ok(response) => return Ok(response),
                Err(e) => {
                    last_error = format!("{}: {e}", conn.address());
                    self.forget(&conn);
                }
            }
        }
    }

    fn local(&self, remote: RemoteToken) -> LockToken {
        let id = self.inner.next_token.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut tokens) = self.inner.tokens.lock() {
            tokens.insert(id, remote);
        }
        LockToken::from_raw(id)
    }

    fn remotes(&self, tokens: &[LockToken]) -> Vec<(LockToken, RemoteToken)> {
        let Ok(map) = self.inner.tokens.lock() else {
            return Vec::new();
        };
        tokens
            .iter()
            .filter_map(|t| map.get(&t.raw()).map(|r| (*t, *r)))
            .collect()
    }

    /// Sends a token request and maps the answer back to local tokens.
    fn token_call(
        &self,
        tokens: &[LockToken],
        request: impl FnOnce(Vec<RemoteToken>) -> Request,
        forget_answered: bool,
    ) -> Result<Vec<LockToken>, LockError> {
        let pairs = self.remotes(tokens);
        if pairs.is_empty() {
            return Ok(Vec::new());
        }
        let answered = match self
            .call(&request(pairs.iter().map(|(_, r)| *r).collect()))
            .map_err(ClientError::lock)?
        {
            Response::Tokens(ts) => ts,
            other => return Err(unexpected(&other).lock()),
        };
        let mut map = self.inner.tokens.lock().map_err(|_| LockError::Poisoned)?;
        let mut out = Vec::new();
        for (local, remote) in pairs {
            let kept = answered.contains(&remote);
            if kept {
                out.push(local);
            }
            // Released, or no longer valid anywhere (expired, or granted by a lost leader).
            if forget_answered || !kept {
                map.remove(&local.raw());
            }
        }
        Ok(out)
    }

    /// The coalescing path of fresh timestamps.
    fn coalesced(&self, count: u32) -> Result<TimestampRange, ClientError> {
        let (tx, rx) = mpsc::channel();
        let lead = {
            let mut c = self
                .inner
                .coalescer
                .lock()
                .map_err(|_| ClientError::Protocol("coalescer poisoned".to_owned()))?;
            c.queue.push((count, tx));
            !std::mem::replace(&mut c.in_flight, true)
        };
        if lead {
            loop {
                let batch = match self.inner.coalescer.lock() {
                    Ok(mut c) if c.queue.is_empty() => {
                        c.in_flight = false;
                        break;
                    }
                    Ok(mut c) => {
                        // Keep each request within the server's limit.
                        let mut total = 0u32;
                        let mut take = 0;
                        for (n, _) in &c.queue {
                            if take > 0 && total.saturating_add(*n) > 100_000 {
                                break;
                            }
                            total = total.saturating_add(*n);
                            take += 1;
                        }
                        c.queue.drain(..take).collect::<Vec<_>>()
                    }
                    Err(_) => break,
                };
                let total: u32 = batch.iter().map(|(n, _)| *n).sum();
                match self.call(&Request::FreshTimestamps { count: total }) {
                    Ok(Response::Range { first, last }) if last - first + 1 == i64::from(total) => {
                        let mut next = first;
                        for (n, waiter) in batch {
                            let end = next + i64::from(n) - 1;
                            let _ = waiter.send(Ok(TimestampRange {
                                first: next,
                                last: end,
                            }));
                            next = end + 1;
                        }
                    }
                    Ok(other) => {
                        for (_, waiter) in batch {
                            let _ = waiter.send(Err(unexpected(&other)));
                        }
                    }
                    Err(e) => {
                        for (_, waiter) in batch {
                            let _ = waiter.send(Err(e.clone()));
                        }
                    }
                }
            }
        }
        rx.recv()
            .map_err(|_| ClientError::Protocol("the coalescing request vanished".to_owned()))?
    }
}

impl TimelockClient {
    /// Makes this server cluster the timestamp authority of a store (once per store; later
    /// calls are cheap): refuses if the store belongs to another cluster or an in-process
    /// allocator is running on it, and first fast-forwards the server past the store's
    /// persisted bound when that is needed (with the admin token).
    pub fn attach(
        &self,
        kvs: Arc<dyn ortelius_kvs::KeyValueService>,
    ) -> Result<(), TimestampError> {
        let cluster = self.cluster().map_err(ClientError::timestamp)?;
        let fresh = self.fresh_timestamp()?;
        match ortelius_timelock::claim_for_timelock(kvs.clone(), &cluster, fresh) {
            Err(TimestampError::TimelockBehindStore { bound })
                if self.inner.config.admin_token.is_some() =>
            {
                self.fast_forward(bound)?;
                let fresh = self.fresh_timestamp()?;
                ortelius_timelock::claim_for_timelock(kvs, &cluster, fresh)
            }
            other => other,
        }
    }
}

impl TimestampService for TimelockClient {
    fn fresh_timestamps(&self, count: u32) -> Result<TimestampRange, TimestampError> {
        if count == 0 || count > MAX_TIMESTAMPS_PER_REQUEST {
            return Err(TimestampError::InvalidRequest(format!(
                "asked for {count} timestamps; ask for 1 to {MAX_TIMESTAMPS_PER_REQUEST}"
            )));
        }
        self.coalesced(count).map_err(ClientError::timestamp)
    }

    fn fast_forward(&self, to: i64) -> Result<FastForward, TimestampError> {
        match self
            .call(&Request::FastForward { timestamp: to })
            .map_err(ClientError::timestamp)?
        {
            Response::FastForwarded {
                advanced: true,
                previous,
                current,
            } => Ok(FastForward::Advanced {
                from: previous,
                to: current,
            }),
            Response::FastForwarded {
                advanced: false,
                current,
                ..
            } => Ok(FastForward::AlreadyBeyond { current }),
            other => Err(unexpected(&other).timestamp()),
        }
    }
}

fn descriptors(d: &[LockDescriptor]) -> Vec<Vec<u8>> {
    d.iter().map(|d| d.as_bytes().to_vec()).collect()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LockService for TimelockClient {
    fn lock(&self, d: &[LockDescriptor], timeout: Duration) -> Result<LockToken, LockError> {
        match self
            .call_waiting(
                &Request::Lock {
                    descriptors: descriptors(d),
                    timeout_ms: millis(timeout),
                },
                timeout,
            )
            .map_err(ClientError::lock)?
        {
            Response::Token(t) => Ok(self.local(t)),
            other => Err(unexpected(&other).lock()),
        }
    }

    fn refresh(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        self.token_call(tokens, |tokens| Request::Refresh { tokens }, false)
    }

    fn unlock(&self, tokens: &[LockToken]) -> Result<Vec<LockToken>, LockError> {
        self.token_call(tokens, |tokens| Request::Unlock { tokens }, true)
    }

    fn wait_for_locks(&self, d: &[LockDescriptor], timeout: Duration) -> Result<(), LockError> {
        match self
            .call_waiting(
                &Request::WaitForLocks {
                    descriptors: descriptors(d),
                    timeout_ms: millis(timeout),
                },
                timeout,
            )
            .map_err(ClientError::lock)?
        {
            Response::Ok => Ok(()),
            other => Err(unexpected(&other).lock()),
        }
    }

    fn lock_immutable_timestamp(&self, ts: i64) -> Result<LockToken, LockError> {
        match self
            .call(&Request::LockImmutable { timestamp: ts })
            .map_err(ClientError::lock)?
        {
            Response::Token(t) => Ok(self.local(t)),
            other => Err(unexpected(&other).lock()),
        }
    }

    fn min_locked_timestamp(&self) -> Result<Option<i64>, LockError> {
        match self.call(&Request::MinLocked).map_err(ClientError::lock)? {
            Response::MaybeTimestamp(ts) => Ok(ts),
            other => Err(unexpected(&other).lock()),
        }
    }

    /// One round trip; assumes `timestamps` is this same authority.
    fn start_transaction(
        &self,
        _timestamps: &dyn TimestampService,
    ) -> Result<(LockToken, i64), StartError> {
        match self
            .call(&Request::StartTransaction)
            .map_err(|e| StartError::Timestamp(e.timestamp()))?
        {
            Response::Started { token, start } => Ok((self.local(token), start)),
            other => Err(StartError::Timestamp(unexpected(&other).timestamp())),
        }
    }
}
