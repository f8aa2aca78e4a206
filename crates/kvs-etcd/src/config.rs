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
