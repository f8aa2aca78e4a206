//! High availability over etcd, without home-made consensus: the servers of a cluster elect a
//! leader with an etcd lease (`<prefix>/leader`, created only if absent), the high-water mark
//! (`<prefix>/hwm`) and the immutable-timestamp floor (`<prefix>/floor`) live in etcd, and
//! every write of them is a transaction that compares the leader key with this leader's own
//! creation revision (its epoch), so a deposed leader can write nothing.
//!
//! A leader serves only while its own monotonic clock says its lease holds: it renews every
//! third of the lease and counts validity from when the renewal was *sent*, which is never
//! later than etcd's own count. So by the time etcd lets another server take over, the old
//! leader has stopped — also after a pause (`SIGSTOP`) longer than the lease: on waking it
//! refuses every request. Jepsen found etcd's lock recipes unsafe when relied upon alone; here
//! the guarded writes keep the mark monotonic, and the clock check keeps a woken leader quiet.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};

use crate::authority::{Authority, Durable, TermStart};

/// How to reach etcd and take part in the election.
#[derive(Clone, Debug)]
pub struct HaConfig {
    pub endpoints: Vec<String>,
    /// Key prefix of this timelock cluster in etcd.
    pub prefix: String,
    /// The leader lease: a dead leader is replaced after at most about this long.
    pub lease: Duration,
}

impl HaConfig {
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            endpoints,
            prefix: "/ortelius/timelock".to_owned(),
            lease: Duration::from_secs(5),
        }
    }
}

struct Keys {
    leader: String,
    hwm: String,
    floor: String,
    cluster: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let p = prefix.trim_end_matches('/');
        Self {
            leader: format!("{p}/leader"),
            hwm: format!("{p}/hwm"),
            floor: format!("{p}/floor"),
            cluster: format!("{p}/cluster"),
        }
    }
}

fn decode_i64(bytes: &[u8]) -> i64 {
    <[u8; 8]>::try_from(bytes).map_or(0, i64::from_be_bytes)
}

/// The high-water mark and floor in etcd, written only while the leader key is still ours.
struct EtcdDurable {
    client: Client,
    runtime: tokio::runtime::Handle,
    keys: Arc<Keys>,
    epoch: i64,
    me: String,
    timeout: Duration,
}

impl EtcdDurable {
    fn guarded_put(&self, key: &str, value: i64) -> Result<(), String> {
        let mut client = self.client.clone();
        let txn = Txn::new()
            .when(vec![
                Compare::create_revision(self.keys.leader.clone(), CompareOp::Equal, self.epoch),
                Compare::value(self.keys.leader.clone(), CompareOp::Equal, self.me.clone()),
            ])
            .and_then(vec![TxnOp::put(key, value.to_be_bytes().to_vec(), None)]);
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(self.timeout, client.txn(txn)).await })
            .map_err(|_| "etcd did not answer in time".to_owned())?
            .map_err(|e| format!("etcd: {e}"))?;
        if response.succeeded() {
            Ok(())
        } else {
            Err("this server is no longer the timelock leader".to_owned())
        }
    }
}

impl Durable for EtcdDurable {
    fn raise(&self, hwm: i64) -> Result<(), String> {
        self.guarded_put(&self.keys.hwm, hwm)
    }

    fn record_floor(&self, floor: i64) -> Result<(), String> {
        self.guarded_put(&self.keys.floor, floor)
    }
}

/// Takes part in the election until dropped.
pub struct Leadership {
    cluster: String,
    leader: Arc<Mutex<Option<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Leadership {
    /// Connects to etcd (failing clearly if it cannot), reads or creates the cluster id, and
    /// starts campaigning in the background.
    pub fn start(config: &HaConfig, me: &str, authority: Arc<Authority>) -> Result<Self, String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("timelock-etcd")
            .build()
            .map_err(|e| format!("cannot start the etcd runtime: {e}"))?;
        let keys = Arc::new(Keys::new(&config.prefix));
        let timeout = config.lease.max(Duration::from_secs(2));
        let options = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout);
        let endpoints = config.endpoints.clone();
        let mut client = runtime
            .block_on(async {
                tokio::time::timeout(timeout * 2, Client::connect(endpoints, Some(options))).await
            })
            .map_err(|_| {
                format!(
                    "etcd at {} did not answer in time",
                    config.endpoints.join(",")
                )
            })?
            .map_err(|e| {
                format!(
                    "cannot connect to etcd at {}: {e}",
                    config.endpoints.join(",")
                )
            })?;
        let candidate = format!("{:016x}", {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write(me.as_bytes());
            h.finish()
        });
        let cluster = runtime
            .block_on(async {
                let txn = Txn::new()
                    .when(vec![Compare::create_revision(
                        keys.cluster.clone(),
                        CompareOp::Equal,
                        0,
                    )])
                    .and_then(vec![TxnOp::put(
                        keys.cluster.clone(),
                        candidate.clone(),
                        None,
                    )])
                    .or_else(vec![TxnOp::get(keys.cluster.clone(), None)]);
                tokio::time::timeout(timeout, client.txn(txn)).await
            })
            .map_err(|_| "etcd did not answer in time".to_owned())?
            .map_err(|e| format!("etcd: {e}"))
            .map(|r| {
                if r.succeeded() {
                    candidate.clone()
                } else {
                    r.op_responses()
                        .into_iter()
                        .find_map(|op| match op {
                            etcd_client::TxnOpResponse::Get(g) => g
                                .kvs()
                                .first()
                                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                            _ => None,
                        })
                        .unwrap_or(candidate.clone())
                }
            })?;
        let leader = Arc::new(Mutex::new(None));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let campaign = Campaign {
            client,
            runtime: runtime.handle().clone(),
            keys,
            me: me.to_owned(),
            lease: config.lease,
            authority,
            leader: leader.clone(),
            stop: stop.clone(),
        };
        std::thread::Builder::new()
            .name("timelock-campaign".to_owned())
            .spawn(move || campaign.run())
            .map_err(|e| format!("cannot start the campaign thread: {e}"))?;
        Ok(Self {
            cluster,
            leader,
            stop,
            runtime: Some(runtime),
        })
    }

    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// The current leader's address as this server last saw it.
    pub fn hint(&self) -> Arc<dyn Fn() -> Option<String> + Send + Sync> {
        let leader = self.leader.clone();
        Arc::new(move || leader.lock().ok().and_then(|l| l.clone()))
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

struct Campaign {
    client: Client,
    runtime: tokio::runtime::Handle,
    keys: Arc<Keys>,
    me: String,
    lease: Duration,
    authority: Arc<Authority>,
    leader: Arc<Mutex<Option<String>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

// The campaign runs on a plain thread and enters the runtime only for each etcd call: it takes
// the authority's lock, which connection threads hold while they wait for etcd, so it must
// never occupy one of the runtime's workers (whose I/O those connection threads need).
impl Campaign {
    fn stopped(&self) -> bool {
        self.stop.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn set_leader(&self, leader: Option<String>) {
        if let Ok(mut l) = self.leader.lock() {
            if *l != leader {
                tracing::info!(leader = ?leader, previous = ?*l, "timelock leader changed");
            }
            *l = leader;
        }
    }

    /// Runs one etcd call with the lease as its deadline.
    fn call<T, F>(&self, f: F) -> Result<T, String>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.runtime
            .block_on(async { tokio::time::timeout(self.lease, f).await })
            .map_err(|_| "etcd did not answer in time".to_owned())?
            .map_err(|e| format!("etcd: {e}"))
    }

    fn run(mut self) {
        while !self.stopped() {
            match self.campaign_once() {
                Ok(true) => {}
                // Lost, or someone else leads: look again shortly.
                Ok(false) | Err(_) => {
                    self.authority.end_term();
                    std::thread::sleep(self.lease / 5);
                }
            }
        }
        self.authority.end_term();
    }

    /// One attempt: if the leader key is free, take it and lead until the lease is lost.
    /// Returns whether this server led.
    fn campaign_once(&mut self) -> Result<bool, String> {
        let ttl = i64::try_from(self.lease.as_secs().max(1)).unwrap_or(5);
        let granted_at = Instant::now();
        let mut client = self.client.clone();
        let lease = self.call(client.lease_grant(ttl, None))?;
        let lease_id = lease.id();
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                self.keys.leader.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                self.keys.leader.clone(),
                self.me.clone(),
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else(vec![TxnOp::get(self.keys.leader.clone(), None)]);
        let response = self.call(client.txn(txn))?;
        if !response.succeeded() {
            let current = response.op_responses().into_iter().find_map(|op| match op {
                etcd_client::TxnOpResponse::Get(g) => g
                    .kvs()
                    .first()
                    .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()),
                _ => None,
            });
            self.set_leader(current);
            let _ = self.call(client.lease_revoke(lease_id));
            return Ok(false);
        }
        let epoch = response.header().map_or(0, |h| h.revision());
        let hwm = self.read_i64(&self.keys.hwm.clone())?;
        let floor = self.read_i64(&self.keys.floor.clone())?;
        let durable = Arc::new(EtcdDurable {
            client: self.client.clone(),
            runtime: self.runtime.clone(),
            keys: self.keys.clone(),
            epoch,
            me: self.me.clone(),
            timeout: self.lease,
        });
        let term = u64::try_from(epoch).unwrap_or(0);
        let began = self.authority.begin_term(TermStart {
            epoch: term,
            durable,
            hwm,
            floor,
            valid_until: granted_at + self.lease,
        });
        if began.is_err() {
            let _ = self.call(client.lease_revoke(lease_id));
            return Ok(false);
        }
        self.set_leader(Some(self.me.clone()));
        let (mut keeper, mut stream) = self.call(client.lease_keep_alive(lease_id))?;
        while !self.stopped() {
            std::thread::sleep(self.lease / 3);
            let sent_at = Instant::now();
            let renewed = self.runtime.block_on(async {
                tokio::time::timeout(self.lease / 3, async {
                    keeper.keep_alive().await?;
                    stream.message().await
                })
                .await
            });
            match renewed {
                Ok(Ok(Some(r))) if r.ttl() > 0 => self.authority.renew(term, sent_at + self.lease),
                _ => break,
            }
        }
        self.authority.end_term();
        self.set_leader(None);
        let _ = self.call(client.lease_revoke(lease_id));
        Ok(true)
    }

    fn read_i64(&self, key: &str) -> Result<i64, String> {
        let mut client = self.client.clone();
        let r = self.call(client.get(key, None))?;
        Ok(r.kvs().first().map_or(0, |kv| decode_i64(kv.value())))
    }
}
