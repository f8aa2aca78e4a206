//! Configuration: Ortelius's own `type: postgres` block, and AtlasDB's `type: relational`
//! block with a postgres connection (so an AtlasDB user's config works unchanged).
//!
//! ```yaml
//! keyValueService:
//!   type: postgres
//!   host: db.internal        # default 127.0.0.1
//!   port: 5432               # default 5432
//!   database: app
//!   user: app
//!   passwordFile: /etc/app/pg-password   # optional; the file holds the password
//!   schema: ortelius         # default ortelius; created if missing
//!   poolSize: 8              # connections per pool (two pools), default 8
//!   connectTimeout: 10s      # default 10s
//! ```

use std::path::PathBuf;
use std::time::Duration;

use ortelius_kvs::config::duration;
use ortelius_kvs::{KvsError, KvsResult};
use serde::Deserialize;

/// How to reach the PostgreSQL store.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PostgresConfig {
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub database: String,
    pub user: String,
    /// A file holding the password (trailing newline ignored). Never logged.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The password itself (AtlasDB configs carry it inline). Never logged.
    #[serde(default, skip)]
    pub password: Option<Secret>,
    #[serde(default = "default_schema")]
    pub schema: String,
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    #[serde(default = "default_connect_timeout", deserialize_with = "duration")]
    pub connect_timeout: Duration,
}

/// A password that never shows in `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

fn default_host() -> String {
    "127.0.0.1".to_owned()
}
fn default_port() -> u16 {
    5432
}
fn default_schema() -> String {
    "ortelius".to_owned()
}
fn default_pool_size() -> usize {
    8
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

/// AtlasDB's `type: relational` block (postgres only).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelationalConfig {
    pub ddl: RelationalDdl,
    pub connection: RelationalConnection,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelationalDdl {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RelationalConnection {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default = "default_host")]
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    pub db_name: String,
    pub db_login: String,
    #[serde(default)]
    pub db_password: Option<String>,
    #[serde(default)]
    pub max_connections: Option<usize>,
    #[serde(default)]
    pub connection_timeout_seconds: Option<u64>,
}

impl RelationalConfig {
    /// The equivalent Ortelius config (tables in the default schema).
    pub fn to_postgres(&self) -> KvsResult<PostgresConfig> {
        for (what, kind) in [
            ("ddl", &self.ddl.kind),
            ("connection", &self.connection.kind),
        ] {
            if kind != "postgres" {
                return Err(KvsError::Unsupported {
                    operation: if what == "ddl" {
                        "a relational store other than postgres (ddl.type)"
                    } else {
                        "a relational store other than postgres (connection.type)"
                    },
                    backend: "postgres",
                });
            }
        }
        let c = &self.connection;
        Ok(PostgresConfig {
            host: c.host.clone(),
            port: c.port,
            database: c.db_name.clone(),
            user: c.db_login.clone(),
            password_file: None,
            password: c.db_password.clone().map(Secret),
            schema: default_schema(),
            pool_size: c.max_connections.unwrap_or_else(default_pool_size),
            connect_timeout: c
                .connection_timeout_seconds
                .map_or_else(default_connect_timeout, Duration::from_secs),
        })
    }
}

impl PostgresConfig {
    /// Checks values that serde cannot: names PostgreSQL would mangle, sizes out of range.
    pub fn validate(&self) -> KvsResult<()> {
        let invalid = |detail: String| KvsError::Storage { detail };
        let ident_ok = self.schema.len() <= 48
            && self
                .schema
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
            && self
                .schema
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !ident_ok {
            return Err(invalid(format!(
                "postgres schema {:?} is not a valid name: use 1 to 48 lowercase letters, digits and '_', starting with a letter or '_'",
                self.schema
            )));
        }
        if self.pool_size == 0 || self.pool_size > 256 {
            return Err(invalid(format!(
                "postgres poolSize {} is out of range: use 1 to 256",
                self.pool_size
            )));
        }
        if self.host.is_empty() || self.database.is_empty() || self.user.is_empty() {
            return Err(invalid(
                "postgres host, database and user must not be empty".to_owned(),
            ));
        }
        Ok(())
    }

    /// Where the store is, for messages (never the password).
    pub fn describe(&self) -> String {
        format!(
            "postgres database {} on {}:{} (schema {}, user {})",
            self.database, self.host, self.port, self.schema, self.user
        )
    }

    /// How this store's connections show in `pg_stat_activity`: `ortelius/<schema>`.
    pub fn application_name(&self) -> String {
        format!("ortelius/{}", self.schema)
    }

    /// The password from the config or its file.
    pub(crate) fn resolve_password(&self) -> KvsResult<Option<String>> {
        if let Some(p) = &self.password {
            return Ok(Some(p.0.clone()));
        }
        let Some(file) = &self.password_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(file).map_err(|e| KvsError::Storage {
            detail: format!(
                "cannot read the postgres password file {}: {e}",
                file.display()
            ),
        })?;
        Ok(Some(text.trim_end_matches(['\n', '\r']).to_owned()))
    }

    /// The client configuration; `synchronous_commit` for every connection of the pool.
    pub(crate) fn client_config(&self, synchronous_commit: bool) -> KvsResult<postgres::Config> {
        let mut c = postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .connect_timeout(self.connect_timeout)
            .application_name(&self.application_name())
            .options(if synchronous_commit {
                "-c synchronous_commit=on"
            } else {
                "-c synchronous_commit=off"
            });
        if let Some(p) = self.resolve_password()? {
            c.password(p);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn durations_and_names_are_checked_and_passwords_stay_hidden() {
        let c: PostgresConfig = serde_json::from_str(
            r#"{"database": "d", "user": "u", "connectTimeout": "500ms", "schema": "app_1"}"#,
        )
        .unwrap();
        assert_eq!(c.connect_timeout, Duration::from_millis(500));
        c.validate().unwrap();
        assert!(serde_json::from_str::<PostgresConfig>(
            r#"{"database": "d", "user": "u", "connectTimeout": "forever"}"#
        )
        .is_err());
        let bad = PostgresConfig {
            schema: "Robert'); DROP".into(),
            ..c.clone()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a valid name"));
        let relational: RelationalConfig = serde_json::from_str(
            r#"{"ddl": {"type": "postgres"}, "connection": {"type": "postgres", "host": "h", "port": 5433, "dbName": "atlas", "dbLogin": "palantir", "dbPassword": "hunter2"}}"#,
        )
        .unwrap();
        let converted = relational.to_postgres().unwrap();
        assert_eq!(
            (converted.database.as_str(), converted.port),
            ("atlas", 5433)
        );
        assert!(!format!("{converted:?}").contains("hunter2"));
        assert!(!converted.describe().contains("hunter2"));
    }
}
