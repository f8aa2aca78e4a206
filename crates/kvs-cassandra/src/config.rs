//! Configuration of the Cassandra backend.
//!
//! ```yaml
//! keyValueService:
//!   type: cassandra
//!   servers: [10.0.0.1:9042, 10.0.0.2:9042, 10.0.0.3:9042]
//!   keyspace: ortelius          # created if missing
//!   replicationFactor: 3
//!   consistency: QUORUM         # reads and writes; LWTs use SERIAL, deletes ALL
//!   connectTimeout: 10s
//!   requestTimeout: 30s
//!   user: app                   # optional, with passwordFile
//!   passwordFile: /etc/app/cassandra-password
//!   nodes:                      # for backups and restores: one entry per node
//!     - nodetool: [nodetool, -h, 10.0.0.1, -p, "7199"]
//!       dataDir: /var/lib/cassandra/data   # that node's data directory, as seen from here
//! ```

use std::path::PathBuf;
use std::time::Duration;

use ortelius_kvs::config::duration;
use ortelius_kvs::{KvsError, KvsResult};
use serde::Deserialize;

/// The consistency of reads and writes.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConsistencyLevel {
    One,
    Quorum,
    LocalQuorum,
    All,
}

/// How to reach one node for snapshots and restores.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeAccess {
    /// The command that runs nodetool against this node (its arguments follow).
    pub nodetool: Vec<String>,
    /// The node's data directory (`data_file_directories`), readable and writable from here.
    pub data_dir: PathBuf,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CassandraConfig {
    pub servers: Vec<String>,
    #[serde(default = "default_keyspace")]
    pub keyspace: String,
    #[serde(default = "default_rf")]
    pub replication_factor: u32,
    #[serde(default = "default_consistency")]
    pub consistency: ConsistencyLevel,
    #[serde(default = "default_connect", deserialize_with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default = "default_request", deserialize_with = "duration")]
    pub request_timeout: Duration,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub nodes: Vec<NodeAccess>,
}

fn default_keyspace() -> String {
    "ortelius".to_owned()
}
fn default_rf() -> u32 {
    3
}
fn default_consistency() -> ConsistencyLevel {
    ConsistencyLevel::Quorum
}
fn default_connect() -> Duration {
    Duration::from_secs(10)
}
fn default_request() -> Duration {
    Duration::from_secs(30)
}

impl CassandraConfig {
    /// A config for `servers` with the defaults.
    pub fn new(servers: Vec<String>, keyspace: &str, replication_factor: u32) -> Self {
        Self {
            servers,
            keyspace: keyspace.to_owned(),
            replication_factor,
            consistency: default_consistency(),
            connect_timeout: default_connect(),
            request_timeout: default_request(),
            user: None,
            password_file: None,
            nodes: Vec::new(),
        }
    }

    pub fn validate(&self) -> KvsResult<()> {
        let invalid = |detail: String| KvsError::Storage { detail };
        if self.servers.is_empty() {
            return Err(invalid(
                "cassandra servers is empty; list the nodes' CQL addresses (host:9042)".to_owned(),
            ));
        }
        let ok = self.keyspace.len() <= 48
            && self
                .keyspace
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase())
            && self
                .keyspace
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ok {
            return Err(invalid(format!(
                "cassandra keyspace {:?} is not a valid name: use 1 to 48 lowercase letters, digits and '_', starting with a letter",
                self.keyspace
            )));
        }
        if !(1..=10).contains(&self.replication_factor) {
            return Err(invalid(format!(
                "cassandra replicationFactor {} is out of range: use 1 to 10",
                self.replication_factor
            )));
        }
        if self.user.is_some() != self.password_file.is_some() {
            return Err(invalid(
                "cassandra user and passwordFile go together".to_owned(),
            ));
        }
        Ok(())
    }

    pub fn describe(&self) -> String {
        format!(
            "cassandra keyspace {} on {}",
            self.keyspace,
            self.servers.join(",")
        )
    }

    pub(crate) fn password(&self) -> KvsResult<Option<String>> {
        let Some(file) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| KvsError::Storage {
            detail: format!(
                "cannot read the cassandra password file {}: {e}",
                file.display()
            ),
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
    }
}
