//! Raw snapshots of an etcd store: the member's own snapshot stream (what `etcdctl snapshot
//! save` writes: the whole key space at one revision, with its SHA-256 appended), taken live.
//!
//! Restoring an etcd snapshot physically builds a new cluster (`etcdctl snapshot restore` into
//! each member's new data directory, with a new cluster token); the README shows those steps
//! for the manual runbook. The one-shot restore instead loads the snapshot into the configured
//! running, empty cluster: it starts a private single member from the snapshot (temporary
//! directory, free loopback ports), copies every key under the store's prefix across in
//! transactions, and stops it. The target carries the restore marker before any key arrives.
//! Deep verification uses the same private member to read the snapshot.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{Txn, TxnOp};
use ortelius_kvs::keycodec as keys;
use ortelius_kvs::snapshot::{
    mark_restore_in_progress, Loaded, RestoreTarget, SnapshotFormat, SnapshotInfo,
    SnapshotProgress, SnapshotSource, TargetState, RESTORE_MARKER_TABLE,
};
use ortelius_kvs::{Cell, KeyValueService, KvsError, KvsResult, TableRef, Value};
use sha2::{Digest, Sha256};

use crate::config::EtcdConfig;
use crate::{classify, groups, EtcdKvs};

/// The store kind recorded in manifests.
pub const STORE_KIND: &str = "etcd";
pub(crate) const SNAPSHOT_FILE: &str = "etcd.snapshot";
pub(crate) const PREFIX_FILE: &str = "prefix";
/// Present when the snapshot's own SHA-256 (appended by the member) was checked as it was
/// taken: a restore whose backup checksums prove the same bytes need not check it again.
pub(crate) const HASH_CHECKED_FILE: &str = "sha256-checked";
const SHA256_LEN: usize = 32;
/// Transactions a load into a running cluster keeps in flight.
const LOAD_IN_FLIGHT: usize = 16;

/// The SHA-256 of a snapshot stream's data, checked against the 32 bytes the member appends.
#[derive(Default)]
struct StreamHash {
    hasher: Sha256,
    /// The last bytes seen, which may be the appended hash.
    tail: Vec<u8>,
}

impl StreamHash {
    fn update(&mut self, bytes: &[u8]) {
        self.tail.extend_from_slice(bytes);
        if let Some(data) = self.tail.len().checked_sub(SHA256_LEN) {
            self.hasher.update(&self.tail[..data]);
            self.tail.drain(..data);
        }
    }

    fn check(self) -> KvsResult<()> {
        if self.tail.len() == SHA256_LEN && self.hasher.finalize().as_slice() == self.tail {
            Ok(())
        } else {
            Err(KvsError::Corruption {
                detail: "the etcd snapshot stream does not end with the SHA-256 of its data: it was cut short or damaged; take the backup again".to_owned(),
            })
        }
    }
}

pub(crate) fn io_error(what: &str, path: &Path, e: std::io::Error) -> KvsError {
    KvsError::Storage {
        detail: format!("{what} {}: {e}", path.display()),
    }
}

/// Takes live snapshots.
pub struct EtcdSnapshots {
    kvs: Arc<EtcdKvs>,
}

impl EtcdSnapshots {
    pub fn new(kvs: Arc<EtcdKvs>) -> Self {
        Self { kvs }
    }
}

impl SnapshotSource for EtcdSnapshots {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn take(&self, dir: &Path, progress: SnapshotProgress<'_>) -> KvsResult<SnapshotInfo> {
        if dir.exists() {
            return Err(KvsError::Storage {
                detail: format!(
                    "snapshot target {} already exists; choose a new directory",
                    dir.display()
                ),
            });
        }
        std::fs::create_dir_all(dir).map_err(|e| io_error("cannot create", dir, e))?;
        let path = dir.join(SNAPSHOT_FILE);
        let tmp = dir.join(format!("{SNAPSHOT_FILE}.part"));
        let mut file =
            std::fs::File::create(&tmp).map_err(|e| io_error("cannot write", &tmp, e))?;
        let kvs = &self.kvs;
        let mut client = kvs.client();
        let mut stream = kvs
            .block_on(client.snapshot())
            .map_err(|e| classify(kvs.describe(), "snapshot", false, &e))?;
        let mut written = 0u64;
        let mut hash = StreamHash::default();
        while let Some(chunk) = kvs
            .block_on(stream.message())
            .map_err(|e| classify(kvs.describe(), "snapshot", false, &e))?
        {
            hash.update(chunk.blob());
            file.write_all(chunk.blob())
                .map_err(|e| io_error("cannot write", &tmp, e))?;
            written += chunk.blob().len() as u64;
            progress(written, written + chunk.remaining_bytes());
        }
        hash.check()?;
        file.sync_all()
            .map_err(|e| io_error("cannot sync", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_error("cannot write", &path, e))?;
        for (name, contents) in [
            (PREFIX_FILE, kvs.config().prefix.as_str()),
            (
                HASH_CHECKED_FILE,
                "the snapshot's SHA-256 was checked as it was taken\n",
            ),
        ] {
            std::fs::write(dir.join(name), contents)
                .map_err(|e| io_error("cannot write", &dir.join(name), e))?;
        }
        Ok(SnapshotInfo::default())
    }
}

fn free_port() -> KvsResult<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| KvsError::Storage {
            detail: format!("cannot find a free port for a temporary etcd member: {e}"),
        })
}

pub(crate) fn tool(name: &str) -> KvsResult<Command> {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = format!("{dir}/{name}");
        if Path::new(&p).exists() {
            return Ok(Command::new(p));
        }
    }
    Err(KvsError::Unsupported {
        operation: "reading an etcd snapshot without etcd and etcdctl installed (Debian: etcd-server, etcd-client)",
        backend: STORE_KIND,
    })
}

/// A private single etcd member started from a snapshot, killed on drop.
pub(crate) struct TempMember {
    dir: tempfile::TempDir,
    child: Child,
    pub(crate) kvs: Arc<EtcdKvs>,
}

/// Starts of the temporary member tried, each on fresh ports: a port found free can be taken by
/// another process before the member binds it.
const START_ATTEMPTS: usize = 3;

/// What became of one start of the temporary member.
enum Started {
    Up(TempMember),
    /// Its ports were taken (the reason): the member exited unable to bind one, or another etcd
    /// answered on its client port.
    PortsTaken(String),
}

/// Kills a member that is not going to be used, and reaps it.
fn discard(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The end of what a member wrote to its log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(3)..].join("\n")
}

impl TempMember {
    /// Starts a member from the snapshot in `snapshot_dir`; `etcdctl` checks the snapshot's
    /// own hash unless `trust_hash` and the snapshot was checked when it was taken.
    pub(crate) fn start(snapshot_dir: &Path, trust_hash: bool) -> KvsResult<Self> {
        Self::start_on(snapshot_dir, trust_hash, &mut || {
            Ok((free_port()?, free_port()?))
        })
    }

    /// [`start`](Self::start) on the (peer, client) ports `ports` hands out, a pair per attempt.
    fn start_on(
        snapshot_dir: &Path,
        trust_hash: bool,
        ports: &mut dyn FnMut() -> KvsResult<(u16, u16)>,
    ) -> KvsResult<Self> {
        let mut why = String::new();
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(snapshot_dir, trust_hash, ports()?)? {
                Started::Up(member) => return Ok(member),
                Started::PortsTaken(reason) => why = reason,
            }
        }
        Err(KvsError::Unavailable {
            detail: format!(
                "a temporary etcd member for the snapshot found its loopback ports taken \
                 {START_ATTEMPTS} times (last: {why}); try again"
            ),
        })
    }

    fn try_start(
        snapshot_dir: &Path,
        trust_hash: bool,
        (peer, client_port): (u16, u16),
    ) -> KvsResult<Started> {
        let skip_hash_check = trust_hash && snapshot_dir.join(HASH_CHECKED_FILE).exists();
        let prefix = std::fs::read_to_string(snapshot_dir.join(PREFIX_FILE))
            .map_err(|e| io_error("cannot read", &snapshot_dir.join(PREFIX_FILE), e))?;
        let dir = tempfile::tempdir().map_err(|e| KvsError::Storage {
            detail: format!("cannot create a temporary directory: {e}"),
        })?;
        let peer_url = format!("http://127.0.0.1:{peer}");
        let client_url = format!("http://127.0.0.1:{client_port}");
        let data = dir.path().join("member");
        let out = tool("etcdctl")?
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot_dir.join(SNAPSHOT_FILE))
            .arg("--data-dir")
            .arg(&data)
            .args(["--name", "ortelius-restore"])
            .args(["--initial-cluster", &format!("ortelius-restore={peer_url}")])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster-token", "ortelius-restore"])
            .args(skip_hash_check.then_some("--skip-hash-check"))
            .output()
            .map_err(|e| KvsError::Storage {
                detail: format!("cannot run etcdctl: {e}"),
            })?;
        if !out.status.success() {
            return Err(KvsError::Corruption {
                detail: format!(
                    "etcdctl snapshot restore failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        let log = dir.path().join("etcd.log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| io_error("cannot create", &log, e))?;
        let mut child = tool("etcd")?
            .args(["--name", "ortelius-restore"])
            .arg("--data-dir")
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("ortelius-restore={peer_url}")])
            // Alone, it has no peer to wait for: short timeouts let it elect itself at once.
            .args(["--heartbeat-interval", "10", "--election-timeout", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .map_err(|e| KvsError::Storage {
                detail: format!("cannot start a temporary etcd member: {e}"),
            })?;
        let config = EtcdConfig::new(vec![client_url], prefix.trim());
        match wait_serving(&mut child, &config, &log, &peer_url) {
            Ok(Ok(kvs)) => Ok(Started::Up(TempMember { dir, child, kvs })),
            Ok(Err(why)) => {
                discard(&mut child);
                Ok(Started::PortsTaken(why))
            }
            Err(e) => {
                discard(&mut child);
                Err(e)
            }
        }
    }

    /// Stops the member cleanly (SIGTERM: it commits its database before it exits) and
    /// returns its database file, which then holds every write it acknowledged.
    pub(crate) fn stop(&mut self) -> KvsResult<std::path::PathBuf> {
        let stopped = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .output()
            .map_err(|e| KvsError::Storage {
                detail: format!("cannot stop the temporary etcd member: {e}"),
            })?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if stopped.status.success() && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Ok(None) | Err(_) => {
                    return Err(KvsError::Storage {
                        detail: "the temporary etcd member did not stop within 60 s".to_owned(),
                    })
                }
            }
        }
        Ok(self
            .dir
            .path()
            .join("member")
            .join("member")
            .join("snap")
            .join("db"))
    }
}

impl Drop for TempMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the member just started serves on its client URL. `Ok(Err(why))` when its
/// ports were taken: it exited unable to bind one, or the etcd answering there is not it (its
/// peer URL is not among that cluster's members).
fn wait_serving(
    child: &mut Child,
    config: &EtcdConfig,
    log: &Path,
    peer_url: &str,
) -> KvsResult<Result<Arc<EtcdKvs>, String>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let exited = child.try_wait().map_err(|e| KvsError::Storage {
            detail: format!("cannot watch the temporary etcd member: {e}"),
        })?;
        if let Some(status) = exited {
            let said = log_tail(log);
            if said.contains("address already in use") {
                return Ok(Err(said));
            }
            return Err(KvsError::Storage {
                detail: format!(
                    "a temporary etcd member from the snapshot exited ({status}) before it \
                     served; it said: {said}"
                ),
            });
        }
        match EtcdKvs::open(config) {
            Ok(kvs) => {
                return if kvs.peer_urls()?.iter().any(|u| u == peer_url) {
                    Ok(Ok(Arc::new(kvs)))
                } else {
                    Ok(Err(format!(
                        "another etcd answers on {}",
                        config.describe()
                    )))
                };
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => {
                return Err(KvsError::Storage {
                    detail: format!(
                        "a temporary etcd member from the snapshot did not start within 60 s: \
                         {e}; it said: {}",
                        log_tail(log)
                    ),
                })
            }
        }
    }
}

/// The configured etcd cluster (its prefix) as a restore target.
pub struct EtcdTarget {
    config: EtcdConfig,
}

impl EtcdTarget {
    pub fn new(config: EtcdConfig) -> KvsResult<Self> {
        config.validate()?;
        Ok(Self { config })
    }
}

/// The whole key space of a store: its prefix followed by 0x00 up to 0x02.
fn store_range(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut start = prefix.to_vec();
    start.push(0x00);
    let mut end = prefix.to_vec();
    end.push(0x02);
    (start, end)
}

impl RestoreTarget for EtcdTarget {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn describe(&self) -> String {
        self.config.describe()
    }

    fn state(&self) -> KvsResult<TargetState> {
        let kvs = EtcdKvs::open(&self.config)?;
        let tables = kvs.list_tables()?;
        let (start, end) = store_range(kvs.config().prefix.as_bytes());
        let (any, _, _) = kvs.range(start, end, 1, true, None)?;
        Ok(if tables.iter().any(|t| t.name() == RESTORE_MARKER_TABLE) {
            TargetState::UnfinishedRestore
        } else if any.is_empty() {
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
        let source = TempMember::start(dir, false)?;
        let target = EtcdKvs::open(&self.config)?;
        let (target_start, target_end) = store_range(target.config().prefix.as_bytes());
        // Empty the target, then mark it before any restored key arrives. The marker's table
        // id is taken above every id in the snapshot, so no restored table collides with it.
        let mut client = target.client();
        target
            .block_on(client.delete(
                target_start,
                Some(etcd_client::DeleteOptions::new().with_range(target_end)),
            ))
            .map_err(|e| classify(target.describe(), "empty the target", true, &e))?;
        let next_id_key = keys::NEXT_TABLE_ID_KEY;
        let (next, _, _) = source.kvs.range(
            source.kvs.key(next_id_key),
            {
                let mut e = source.kvs.key(next_id_key);
                e.push(0);
                e
            },
            1,
            false,
            None,
        )?;
        if let Some(kv) = next.first() {
            target
                .block_on(client.put(target.key(next_id_key), kv.value().to_vec(), None))
                .map_err(|e| classify(target.describe(), "restore", true, &e))?;
        }
        mark_restore_in_progress(&target, &dir.display().to_string())?;
        let (start, end) = store_range(source.kvs.config().prefix.as_bytes());
        let all = source.kvs.range_all(start, end, false)?;
        let total = all.len() as u64;
        let mut done = 0u64;
        let pairs: Vec<(Vec<u8>, Vec<u8>)> = all
            .iter()
            .filter_map(|kv| {
                let inner = source.kvs.inner(kv.key()).ok()?;
                (inner != next_id_key).then(|| (target.key(inner), kv.value().to_vec()))
            })
            .collect();
        let all_groups = groups(
            &pairs,
            target.config().max_txn_ops,
            target.config().max_request_bytes,
            |(k, v)| k.len() + v.len(),
        );
        // Several transactions in flight, so the members batch them into fewer Raft rounds
        // and disk syncs. Every key is new and written once, so their order does not matter.
        for wave in all_groups.chunks(LOAD_IN_FLIGHT) {
            target.block_on(async {
                let mut in_flight = tokio::task::JoinSet::new();
                for group in wave {
                    let ops: Vec<TxnOp> = group
                        .iter()
                        .map(|(k, v)| TxnOp::put(k.clone(), v.clone(), None))
                        .collect();
                    let mut client = target.client();
                    in_flight.spawn(async move { client.txn(Txn::new().and_then(ops)).await });
                }
                while let Some(result) = in_flight.join_next().await {
                    match result {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(classify(target.describe(), "restore", true, &e)),
                        Err(e) => {
                            return Err(KvsError::Storage {
                                detail: format!("a restore request did not finish: {e}"),
                            })
                        }
                    }
                }
                Ok(())
            })?;
            done += wave.iter().map(|g| g.len() as u64).sum::<u64>();
            progress(done, total);
        }
        progress(total, total);
        Ok(Loaded::default())
    }

    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>> {
        Ok(Arc::new(EtcdKvs::open(&self.config)?))
    }
}

/// Reads etcd snapshots: `etcdctl snapshot status` checks the appended hash, and a private
/// member started from the snapshot reads its tables.
pub struct EtcdFormat;

impl SnapshotFormat for EtcdFormat {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn verify(&self, dir: &Path) -> KvsResult<u64> {
        let out = tool("etcdctl")?
            .env("ETCDCTL_API", "3")
            .args(["snapshot", "status", "--write-out=json"])
            .arg(dir.join(SNAPSHOT_FILE))
            .output()
            .map_err(|e| KvsError::Storage {
                detail: format!("cannot run etcdctl: {e}"),
            })?;
        if !out.status.success() {
            return Err(KvsError::Corruption {
                detail: format!(
                    "etcdctl snapshot status: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        // Reading every key also proves the snapshot loads.
        let member = TempMember::start(dir, false)?;
        let (start, end) = store_range(member.kvs.config().prefix.as_bytes());
        Ok(member.kvs.range_all(start, end, true)?.len() as u64)
    }

    fn scan_table(
        &self,
        dir: &Path,
        table: &TableRef,
        visit: &mut dyn FnMut(Cell, Value) -> KvsResult<()>,
    ) -> KvsResult<()> {
        let member = TempMember::start(dir, false)?;
        let kvs = &member.kvs;
        let id = kvs
            .list_tables()?
            .contains(table)
            .then(|| kvs.table_id(table))
            .transpose()?
            .ok_or_else(|| KvsError::TableNotFound {
                table: table.clone(),
            })?;
        for kv in kvs.range_all(
            kvs.key(&keys::table_start(id)),
            kvs.key(&keys::table_end(id)),
            false,
        )? {
            let d = keys::decode(kvs.inner(kv.key())?)?;
            visit(Cell::new(d.row, d.column)?, Value::new(kv.value(), d.ts))?;
        }
        Ok(())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use ortelius_kvs::MAX_READ_TS;

    fn stream(data: &[u8]) -> Vec<u8> {
        let mut s = data.to_vec();
        s.extend_from_slice(&Sha256::digest(data));
        s
    }

    fn check(stream: &[u8], chunk: usize) -> KvsResult<()> {
        let mut hash = StreamHash::default();
        for c in stream.chunks(chunk) {
            hash.update(c);
        }
        hash.check()
    }

    /// A restore's private member never settles for an etcd it did not start: handed the
    /// client port of a running etcd, then a peer port another process holds, it starts again
    /// on fresh ports and serves the snapshot, not the running store.
    #[test]
    fn a_temporary_member_starts_again_when_its_ports_are_taken() {
        let cluster = ortelius_test_servers::EtcdCluster::start(1, &[]);
        let kvs = Arc::new(EtcdKvs::open(&EtcdConfig::new(cluster.endpoints(), "/ports")).unwrap());
        let t = TableRef::new("ns", "t").unwrap();
        kvs.create_table(&t, b"").unwrap();
        let cell = Cell::new("r", "c").unwrap();
        kvs.put(&t, &[(cell.clone(), b"in the snapshot".to_vec())], 1)
            .unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("snapshot");
        EtcdSnapshots::new(kvs.clone())
            .take(&dir, &|_, _| {})
            .unwrap();
        kvs.put(&t, &[(cell.clone(), b"after it".to_vec())], 2)
            .unwrap();
        let live_client: u16 = cluster
            .endpoint(0)
            .rsplit(':')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let held_peer = held.local_addr().unwrap().port();
        let free = ortelius_test_servers::free_port;
        let mut handed =
            vec![(free(), live_client), (held_peer, free()), (free(), free())].into_iter();
        let mut member =
            TempMember::start_on(&dir, false, &mut || Ok(handed.next().unwrap())).unwrap();
        assert_eq!(handed.len(), 0, "three starts");
        assert_eq!(
            member.kvs.get(&t, &[(cell.clone(), MAX_READ_TS)]).unwrap()[&cell].contents,
            b"in the snapshot"
        );
        member.stop().unwrap();
        let mut taken = vec![(free(), live_client); START_ATTEMPTS].into_iter();
        let err = TempMember::start_on(&dir, false, &mut || Ok(taken.next().unwrap()))
            .err()
            .unwrap();
        assert!(
            matches!(&err, KvsError::Unavailable { detail } if detail.contains("ports taken")),
            "{err}"
        );
    }

    #[test]
    fn a_snapshot_stream_is_checked_against_its_appended_sha256_however_it_is_split() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let good = stream(&data);
        for chunk in [1, 7, 31, 32, 33, 4096, good.len()] {
            check(&good, chunk).unwrap();
        }
        let mut damaged = good.clone();
        damaged[5000] ^= 1;
        assert!(matches!(
            check(&damaged, 100),
            Err(KvsError::Corruption { .. })
        ));
        assert!(check(&good[..good.len() - 1], 100).is_err(), "cut short");
        assert!(check(&good[..20], 100).is_err(), "shorter than a hash");
        check(&stream(b""), 5).unwrap();
    }
}
