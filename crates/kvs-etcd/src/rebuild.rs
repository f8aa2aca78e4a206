//! Restoring an etcd snapshot physically: the data directories of a new cluster, each built
//! by `etcdctl snapshot restore` with a new cluster token, so no member of the lost cluster
//! can ever join the new one (the configuration's `rebuild` block lists the members).
//!
//! The restore's own steps (clean-transactions, fast-forward, releasing the backup lock) must
//! run on the restored data before the new cluster serves anything, and the cluster cannot run
//! before its directories exist. So the snapshot is first restored into a private single
//! member (temporary directory, free loopback ports) where those steps run; then that member
//! is stopped cleanly, so its database file holds every step, and the file is restored into
//! each listed member's directory — in parallel, each into a staging directory beside it,
//! renamed into place once every one is complete. The operator then starts the members with
//! those directories; nothing needs to run against the new cluster afterwards.
//!
//! The snapshot's own SHA-256 was checked as the backup took it, and a restore checks the
//! backup's checksums of the same bytes before it loads them, so the private member is built
//! without checking that hash a third time (a snapshot taken before the backup checked it is
//! checked here).
//!
//! The snapshot holds the whole key space, so the store keeps the prefix it was backed up
//! with (the configured prefix must be that one) and other prefixes come back too.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex, MutexGuard};

use ortelius_kvs::snapshot::{
    mark_restore_in_progress, Loaded, RestoreTarget, SnapshotProgress, TargetState,
};
use ortelius_kvs::{KeyValueService, KvsError, KvsResult};

use crate::config::{EtcdConfig, RebuildConfig};
use crate::snapshot::{io_error, tool, TempMember, PREFIX_FILE, SNAPSHOT_FILE, STORE_KIND};

/// The data directories of a new cluster as a restore target.
pub struct EtcdRebuild {
    prefix: String,
    rebuild: RebuildConfig,
    /// Between `load` and `complete`: the private member holding the restored data, and the
    /// new cluster's token.
    staged: Mutex<Option<(TempMember, String)>>,
}

impl EtcdRebuild {
    /// A target for `config`, which must have a `rebuild` block.
    pub fn new(config: EtcdConfig) -> KvsResult<Self> {
        config.validate()?;
        let rebuild = config.rebuild.ok_or_else(|| KvsError::Storage {
            detail: "etcd rebuild: the configuration has no rebuild block".to_owned(),
        })?;
        Ok(Self {
            prefix: config.prefix,
            rebuild,
            staged: Mutex::new(None),
        })
    }

    /// The members whose directories this run writes: (name, peer URL, directory).
    fn local(&self) -> impl Iterator<Item = (&str, &str, &Path)> {
        self.rebuild.members.iter().filter_map(|m| {
            m.data_dir
                .as_deref()
                .map(|d| (m.name.as_str(), m.peer_url.as_str(), d))
        })
    }

    fn staged(&self) -> MutexGuard<'_, Option<(TempMember, String)>> {
        self.staged.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a member's directory is built before it is renamed into place.
fn staging(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".ortelius-restoring");
    PathBuf::from(name)
}

/// Where a directory being replaced (`--force`) is moved before it is removed.
fn replaced(dir: &Path) -> PathBuf {
    let mut name = dir.as_os_str().to_owned();
    name.push(".ortelius-replaced");
    PathBuf::from(name)
}

fn remove_if_present(dir: &Path) -> KvsResult<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(io_error("cannot remove", dir, e))
        }
        _ => Ok(()),
    }
}

fn holds_anything(dir: &Path) -> KvsResult<bool> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_some()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_error("cannot read", dir, e)),
    }
}

/// A cluster token from a snapshot id: the same backup gives the same token on every machine.
fn token_for(snapshot_id: &str) -> String {
    let id: String = snapshot_id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(48)
        .collect();
    format!("ortelius-restore-{id}")
}

impl RestoreTarget for EtcdRebuild {
    fn store_kind(&self) -> &'static str {
        STORE_KIND
    }

    fn describe(&self) -> String {
        let here: Vec<String> = self
            .local()
            .map(|(name, _, dir)| format!("{name} in {}", dir.display()))
            .collect();
        format!(
            "a new etcd cluster {} (data directories written here: {})",
            self.rebuild.initial_cluster(),
            here.join(", ")
        )
    }

    fn state(&self) -> KvsResult<TargetState> {
        for (_, _, dir) in self.local() {
            if holds_anything(dir)? {
                return Ok(TargetState::HasData);
            }
        }
        Ok(TargetState::Empty)
    }

    fn load(
        &self,
        dir: &Path,
        snapshot_id: &str,
        progress: SnapshotProgress<'_>,
    ) -> KvsResult<Loaded> {
        let prefix_file = dir.join(PREFIX_FILE);
        let prefix = std::fs::read_to_string(&prefix_file)
            .map_err(|e| io_error("cannot read", &prefix_file, e))?;
        if prefix.trim() != self.prefix {
            return Err(KvsError::Storage {
                detail: format!(
                    "the backup's store is under the etcd prefix {:?}, and a rebuilt cluster keeps the whole key space as it was; set prefix: {} in this configuration",
                    prefix.trim(),
                    prefix.trim()
                ),
            });
        }
        for (_, _, d) in self.local() {
            remove_if_present(&staging(d))?;
        }
        let snapshot = dir.join(SNAPSHOT_FILE);
        let size = std::fs::metadata(&snapshot)
            .map_err(|e| io_error("cannot read", &snapshot, e))?
            .len();
        progress(0, size);
        let member = TempMember::start(dir, true)?;
        mark_restore_in_progress(&*member.kvs, snapshot_id)?;
        let token = match &self.rebuild.cluster_token {
            Some(t) => t.clone(),
            None => token_for(snapshot_id),
        };
        progress(size, size);
        *self.staged() = Some((member, token));
        Ok(Loaded::default())
    }

    fn open_restoring(&self) -> KvsResult<Arc<dyn KeyValueService>> {
        match &*self.staged() {
            Some((member, _)) => Ok(member.kvs.clone()),
            None => Err(KvsError::Storage {
                detail: "nothing is staged for the new etcd cluster (the private member lives only while a restore runs); run the restore again".to_owned(),
            }),
        }
    }

    fn complete(&self) -> KvsResult<()> {
        let Some((mut member, token)) = self.staged().take() else {
            return Err(KvsError::Storage {
                detail: "nothing is staged for the new etcd cluster; run the restore again"
                    .to_owned(),
            });
        };
        let db = member.stop()?;
        let initial_cluster = self.rebuild.initial_cluster();
        let mut children: Vec<(&Path, Child)> = Vec::new();
        for (name, peer_url, dir) in self.local() {
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|e| io_error("cannot create", parent, e))?;
            }
            let child = tool("etcdctl")?
                .env("ETCDCTL_API", "3")
                .args(["snapshot", "restore"])
                .arg(&db)
                // A database file from a data directory carries no snapshot hash.
                .arg("--skip-hash-check")
                .args(["--name", name])
                .arg("--data-dir")
                .arg(staging(dir))
                .args(["--initial-cluster", &initial_cluster])
                .args(["--initial-advertise-peer-urls", peer_url])
                .args(["--initial-cluster-token", &token])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .map_err(|e| KvsError::Storage {
                    detail: format!("cannot run etcdctl: {e}"),
                })?;
            children.push((dir, child));
        }
        let mut failures = Vec::new();
        for (dir, child) in children {
            match child.wait_with_output() {
                Ok(out) if out.status.success() => {}
                Ok(out) => failures.push(format!(
                    "{}: {}",
                    dir.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )),
                Err(e) => failures.push(format!("{}: {e}", dir.display())),
            }
        }
        if !failures.is_empty() {
            return Err(KvsError::Storage {
                detail: format!(
                    "etcdctl snapshot restore failed (nothing was put in place): {}",
                    failures.join("; ")
                ),
            });
        }
        for (_, _, dir) in self.local() {
            if dir.exists() {
                remove_if_present(&replaced(dir))?;
                std::fs::rename(dir, replaced(dir))
                    .map_err(|e| io_error("cannot move aside", dir, e))?;
            }
            std::fs::rename(staging(dir), dir)
                .map_err(|e| io_error("cannot put in place", dir, e))?;
            remove_if_present(&replaced(dir))?;
            if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::File::open(parent)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| io_error("cannot sync", parent, e))?;
            }
        }
        Ok(())
    }
}
