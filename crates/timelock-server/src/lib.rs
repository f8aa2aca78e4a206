//! The shared timestamp and lock server (`ortelius timelock serve`): one authority for every
//! process that shares a networked store.
//!
//! - **One server** keeps its high-water mark in a local file, fsynced before any timestamp
//!   above it is handed out; a restart resumes above it (new epoch, locks gone, immutable
//!   timestamp held back for one lock lease).
//! - **Three servers over etcd** (`ha`): the leader is elected with an etcd lease; the mark
//!   lives in etcd and every write of it is a transaction guarded by the leader key; a leader
//!   serves only while its own clock says its lease holds, so a paused leader that wakes up
//!   hands out nothing. Followers answer "not leader" with the leader's address.
//!
//! Wire protocol: `ortelius_timelock::wire`. Clients: `ortelius-timelock-client`.

mod authority;
mod conn;
mod file_store;
pub mod ha;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use authority::{Authority, HWM_BUFFER, MAX_PER_REQUEST};
use conn::Shared;

/// Who leads now, as this server knows it (for "not leader" answers).
type LeaderHint = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// How the server runs.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where clients connect (e.g. `127.0.0.1:7900`; port 0 picks one).
    pub listen: String,
    /// What clients are told to connect to (defaults to the bound address).
    pub advertise: Option<String>,
    /// The single server's state file lives here.
    pub data_dir: PathBuf,
    /// Clients must present this token, if set.
    pub token: Option<String>,
    /// Fast-forward needs this token; without it, fast-forward is refused.
    pub admin_token: Option<String>,
    /// How long a lock lasts without a refresh.
    pub lock_lease: Duration,
    /// High availability over etcd instead of the local file.
    pub ha: Option<ha::HaConfig>,
}

/// A running server; dropping it stops serving (the process normally just runs until killed).
pub struct RunningServer {
    pub address: SocketAddr,
    pub cluster: String,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    _ha: Option<ha::Leadership>,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn new_cluster_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    format!("{:016x}", h.finish())
}

/// Starts serving.
pub fn start(config: ServerConfig) -> Result<RunningServer, String> {
    let listener = TcpListener::bind(&config.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the listening address: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("cannot configure the listener: {e}"))?;
    let advertise = config
        .advertise
        .clone()
        .unwrap_or_else(|| address.to_string());
    let authority = Arc::new(Authority::new(config.lock_lease));
    let stop = Arc::new(AtomicBool::new(false));
    let (cluster, leader_hint, leadership): (String, LeaderHint, Option<ha::Leadership>) =
        match &config.ha {
            None => {
                let (store, state) = file_store::FileStore::open(&config.data_dir, new_cluster_id)?;
                authority
                    .begin_term(authority::TermStart {
                        epoch: state.epoch,
                        durable: Arc::new(store),
                        hwm: state.hwm,
                        floor: state.floor,
                        // One server leads forever.
                        valid_until: Instant::now() + Duration::from_secs(100 * 365 * 24 * 3600),
                    })
                    .map_err(|r| r.message)?;
                (state.cluster, Arc::new(|| None), None)
            }
            Some(ha_config) => {
                let leadership = ha::Leadership::start(ha_config, &advertise, authority.clone())?;
                let hint = leadership.hint();
                (leadership.cluster().to_owned(), hint, Some(leadership))
            }
        };
    let shared = Arc::new(Shared {
        authority: authority.clone(),
        token: config.token.clone(),
        admin_token: config.admin_token.clone(),
        cluster: cluster.clone(),
        leader_hint,
    });
    let mut threads = Vec::new();
    {
        let (stop, shared) = (stop.clone(), shared.clone());
        threads.push(
            std::thread::Builder::new()
                .name("timelock-accept".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        match listener.accept() {
                            Ok((stream, _)) => {
                                let _ = stream.set_nonblocking(false);
                                let shared = shared.clone();
                                let _ = std::thread::Builder::new()
                                    .name("timelock-conn".to_owned())
                                    .spawn(move || conn::serve(stream, shared));
                            }
                            Err(_) => std::thread::sleep(Duration::from_millis(5)),
                        }
                    }
                })
                .map_err(|e| format!("cannot start the accept thread: {e}"))?,
        );
    }
    {
        let (stop, authority) = (stop.clone(), authority.clone());
        threads.push(
            std::thread::Builder::new()
                .name("timelock-floor".to_owned())
                .spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        std::thread::sleep(Duration::from_millis(500));
                        authority.record_floor();
                    }
                })
                .map_err(|e| format!("cannot start the floor thread: {e}"))?,
        );
    }
    Ok(RunningServer {
        address,
        cluster,
        stop,
        threads,
        _ha: leadership,
    })
}
