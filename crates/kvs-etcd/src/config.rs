//! Configuration of the etcd backend.
//!
//! ```yaml
//! keyValueService:
//!   type: etcd
//!   endpoints: [http://10.0.0.1:2379, http://10.0.0.2:2379, http://10.0.0.3:2379]
//!   prefix: /ortelius          # every key of this store lives under it
//!   connectTimeout: 5s
//!   requestTimeout: 10s
//!   user: app                  # optional, with passwordFile
//!   passwordFile: /etc/app/etcd-password
//!   maxTxnOps: 128             # the server's --max-txn-ops
//!   maxRequestBytes: 1048576   # stay under the server's --max-request-bytes (1.5 MiB)
//!   maintenance:               # optional: this process compacts and defragments
//!     interval: 1m
//!     keepRevisions: 100000
//!     defragmentAboveBytes: 268435456
//!   rebuild:                   # optional, for restore and `kvs load` only (see `rebuild`)
//!     clusterToken: ortelius-restore-2   # required when a member's directory is written elsewhere
//!     members:
//!       - {name: m1, peerUrl: http://10.0.0.1:2380, dataDir: /var/lib/etcd/m1}
//!       - {name: m2, peerUrl: http://10.0.0.2:2380}   # its directory is written on its machine
//!       - {name: m3, peerUrl: http://10.0.0.3:2380}
//! ```

use std::path::PathBuf;
use std::time::Duration;

use ortelius_kvs::config::duration;
use ortelius_kvs::{KvsError, KvsResult};
use serde::Deserialize;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    #[serde(default = "default_connect", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_request", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default = "default_ops")]
    pub max_txn_ops: usize,
    #[serde(default = "default_bytes")]
    pub max_request_bytes: usize,
    /// Compaction and defragmentation run by the process that opens the store.
    #[serde(default)]
    pub maintenance: Option<MaintenanceConfig>,
    /// A restore (or `kvs load`) builds the data directories of a new cluster from the
    /// snapshot instead of loading it into the running cluster at `endpoints`.
    #[serde(default)]
    pub rebuild: Option<RebuildConfig>,
}

/// The new cluster a restore builds (see [`crate::rebuild`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RebuildConfig {
    /// Every member of the new cluster.
    pub members: Vec<RebuildMember>,
    /// The new cluster's token. Default: one derived from the backup, the same on every
    /// machine restoring the same backup, and never the token of a cluster not built by a
    /// restore. Required when some member's directory is written elsewhere by another run.
    #[serde(default)]
    pub cluster_token: Option<String>,
}

/// One member of the rebuilt cluster.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RebuildMember {
    /// Its `--name`.
    pub name: String,
    /// Its `--initial-advertise-peer-urls`.
    pub peer_url: String,
    /// Where this machine writes its data directory (which must not exist, or be empty);
    /// absent: the member's directory is written by a run on its own machine.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
}

/// How often to compact and defragment, and how much history to keep (see `maintenance`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MaintenanceConfig {
    #[serde(
        default = "default_maintenance_interval",
        deserialize_with = "duration"
    )]
    pub interval: Duration,
    /// Revisions of history kept behind the current one (a range scan reads at the revision
    /// of its first page, so keep more than a long scan's worth of writes).
    #[serde(default = "default_keep_revisions")]
    pub keep_revisions: i64,
    /// A member whose database file is larger than this is defragmented.
    #[serde(default = "default_defragment_above")]
    pub defragment_above_bytes: i64,
}

impl Default for MaintenanceConfig {
    fn default() -> Self {
        Self {
            interval: default_maintenance_interval(),
            keep_revisions: default_keep_revisions(),
            defragment_above_bytes: default_defragment_above(),
        }
    }
}

fn default_maintenance_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_keep_revisions() -> i64 {
    100_000
}
fn default_defragment_above() -> i64 {
    256 << 20
}

fn default_prefix() -> String {
    "/ortelius".to_owned()
}
fn default_connect() -> Duration {
    Duration::from_secs(5)
}
fn default_request() -> Duration {
    Duration::from_secs(10)
}
fn default_ops() -> usize {
    128
}
fn default_bytes() -> usize {
    1 << 20
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>, prefix: &str) -> Self {
        Self {
            endpoints,
            prefix: prefix.to_owned(),
            connect_timeout: default_connect(),
            request_timeout: default_request(),
            user: None,
            password_file: None,
            max_txn_ops: default_ops(),
            max_request_bytes: default_bytes(),
            maintenance: None,
            rebuild: None,
        }
    }

    pub fn validate(&self) -> KvsResult<()> {
        let invalid = |detail: String| KvsError::Storage { detail };
        if self.endpoints.is_empty() {
            return Err(invalid(
                "etcd endpoints is empty; list the members' client URLs".to_owned(),
            ));
        }
        if !self.prefix.starts_with('/') || self.prefix.len() < 2 || self.prefix.ends_with('/') {
            return Err(invalid(format!(
                "etcd prefix {:?} must start with '/', be more than '/' and not end with '/'",
                self.prefix
            )));
        }
        if !(8..=10_000).contains(&self.max_txn_ops) {
            return Err(invalid("etcd maxTxnOps must be in 8..=10000".to_owned()));
        }
        if !(64 << 10..=64 << 20).contains(&self.max_request_bytes) {
            return Err(invalid(
                "etcd maxRequestBytes must be between 64 KiB and 64 MiB".to_owned(),
            ));
        }
        if let Some(m) = &self.maintenance {
            if !(100..=100_000_000).contains(&m.keep_revisions) {
                return Err(invalid(
                    "etcd maintenance.keepRevisions must be in 100..=100000000".to_owned(),
                ));
            }
            if m.defragment_above_bytes < 1 << 20 {
                return Err(invalid(
                    "etcd maintenance.defragmentAboveBytes must be at least 1 MiB (1048576)"
                        .to_owned(),
                ));
            }
        }
        if let Some(r) = &self.rebuild {
            r.validate()?;
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(invalid("etcd user and passwordFile go together".to_owned()));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!("etcd {} (prefix {})", self.endpoints.join(","), self.prefix)
    }

    pub(crate) fn password(&self) -> KvsResult<Option<String>> {
        let Some(file) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| KvsError::Storage {
            detail: format!("cannot read the etcd password file {}: {e}", file.display()),
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}

impl RebuildConfig {
    fn validate(&self) -> KvsResult<()> {
        let invalid = |detail: String| Err(KvsError::Storage { detail });
        if self.members.is_empty() {
            return invalid(
                "etcd rebuild.members is empty; list every member of the new cluster (name, peerUrl, dataDir)".to_owned(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        let mut dirs = std::collections::BTreeSet::new();
        for m in &self.members {
            if m.name.is_empty() || m.name.contains(['=', ',', ' ']) {
                return invalid(format!(
                    "etcd rebuild member name {:?} must be non-empty, without '=', ',' or spaces",
                    m.name
                ));
            }
            if !names.insert(&m.name) {
                return invalid(format!("etcd rebuild member {:?} is listed twice", m.name));
            }
            let url = m.peer_url.as_str();
            if !(url.starts_with("http://") || url.starts_with("https://")) || url.contains(',') {
                return invalid(format!(
                    "etcd rebuild member {}: peerUrl {url:?} must be one http:// or https:// URL",
                    m.name
                ));
            }
            if let Some(dir) = &m.data_dir {
                if dir.as_os_str().is_empty() || !dirs.insert(dir) {
                    return invalid(format!(
                        "etcd rebuild member {}: dataDir {} is empty or another member's",
                        m.name,
                        dir.display()
                    ));
                }
            }
        }
        if dirs.is_empty() {
            return invalid(
                "etcd rebuild: no member has a dataDir, so this run would write nothing; give the dataDir of each member whose directory this machine holds".to_owned(),
            );
        }
        if dirs.len() < self.members.len() && self.cluster_token.is_none() {
            return invalid(
                "etcd rebuild: some members' directories are written elsewhere, so every run must use the same new token; set rebuild.clusterToken".to_owned(),
            );
        }
        if self.cluster_token.as_deref().is_some_and(str::is_empty) {
            return invalid("etcd rebuild.clusterToken is empty".to_owned());
        }
        Ok(())
    }

    /// `--initial-cluster`: every member's name and peer URL.
    pub fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn with_rebuild(yaml: &str) -> KvsResult<()> {
        let config: EtcdConfig = serde_json::from_value(serde_json::json!({
            "endpoints": ["http://127.0.0.1:2379"],
            "rebuild": serde_json::from_str::<serde_json::Value>(yaml).unwrap(),
        }))
        .unwrap();
        config.validate()
    }

    fn refused(yaml: &str, expected: &str) {
        let err = with_rebuild(yaml).unwrap_err().to_string();
        assert!(err.contains(expected), "{err}");
    }

    #[test]
    fn a_rebuild_block_is_checked_and_names_what_to_fix() {
        with_rebuild(
            r#"{"members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d/m1"},
                            {"name": "m2", "peerUrl": "http://b:2380", "dataDir": "/d/m2"}]}"#,
        )
        .unwrap();
        with_rebuild(
            r#"{"clusterToken": "t2", "members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d"},
                            {"name": "m2", "peerUrl": "http://b:2380"}]}"#,
        )
        .unwrap();
        refused(r#"{"members": []}"#, "list every member");
        refused(
            r#"{"members": [{"name": "m1", "peerUrl": "http://a:2380"}]}"#,
            "no member has a dataDir",
        );
        refused(
            r#"{"members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d"},
                            {"name": "m2", "peerUrl": "http://b:2380"}]}"#,
            "set rebuild.clusterToken",
        );
        refused(
            r#"{"members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d"},
                            {"name": "m1", "peerUrl": "http://b:2380", "dataDir": "/e"}]}"#,
            "listed twice",
        );
        refused(
            r#"{"members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d"},
                            {"name": "m2", "peerUrl": "http://b:2380", "dataDir": "/d"}]}"#,
            "another member's",
        );
        refused(
            r#"{"members": [{"name": "m=1", "peerUrl": "http://a:2380", "dataDir": "/d"}]}"#,
            "without '='",
        );
        refused(
            r#"{"members": [{"name": "m1", "peerUrl": "a:2380", "dataDir": "/d"}]}"#,
            "http:// or https://",
        );
        refused(
            r#"{"clusterToken": "", "members": [{"name": "m1", "peerUrl": "http://a:2380", "dataDir": "/d"}]}"#,
            "clusterToken is empty",
        );
    }
}
