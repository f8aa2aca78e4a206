//! Configuration in AtlasDB's shape: a YAML file whose "atlas block" is selected by a JSON
//! pointer (`--config-root`, default `/atlasdb`, falling back to `/atlas`). Keys outside the
//! block are ignored (it may live inside a larger service config); inside it, unknown keys and
//! wrong types are errors that name the key and the file.
//!
//! ```yaml
//! atlasdb:
//!   keyValueService:
//!     type: rocksdb          # or: memory
//!     dataDir: /var/lib/myapp/ortelius
//!   management:              # optional: where a live process serves the management API
//!     address: 127.0.0.1:7878
//!     token: s3cret          # optional bearer token
//!   timelock:                # optional: the shared timestamp and lock servers
//!     servers: [10.0.0.1:7900, 10.0.0.2:7900, 10.0.0.3:7900]
//!     token: t0ken           # optional
//!     adminToken: adm1n      # only for fast-forward (restores)
//! ```

use std::path::{Path, PathBuf};

use ortelius_backends::StoreConfig;
use serde::Deserialize;

/// The default pointer, and the fallback tried when the default selects nothing.
pub const DEFAULT_ROOT: &str = "/atlasdb";
const FALLBACK_ROOT: &str = "/atlas";

/// The atlas block.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AtlasConfig {
    pub key_value_service: StoreConfig,
    #[serde(default)]
    pub management: Option<ManagementConfig>,
    /// A shared timelock server: every process using the store then takes its timestamps and
    /// locks from it.
    #[serde(default)]
    pub timelock: Option<ortelius_timelock_client::TimelockConfig>,
}

/// Where a live process serves the management API.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ManagementConfig {
    pub address: String,
    /// Required when the address is not loopback.
    #[serde(default)]
    pub token: Option<String>,
    /// Where callers from other machines may have snapshots written (absolute directories).
    #[serde(default)]
    pub backup_roots: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}: {source}", file.display())]
    Unreadable {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid YAML: {detail}", file.display())]
    Garbled { file: PathBuf, detail: String },
    #[error("config root {pointer} selects nothing in {}{tried}; pass --config-root with a JSON pointer to the atlas block (e.g. /atlasdb or /myservice/atlasdb)", file.display())]
    NoSuchRoot {
        file: PathBuf,
        pointer: String,
        tried: String,
    },
    #[error("invalid config in {} at {pointer}: {detail}", file.display())]
    Invalid {
        file: PathBuf,
        pointer: String,
        detail: String,
    },
}

/// Loads the atlas block at `root` (`None`: `/atlasdb`, then `/atlas`) from `file`.
pub fn load(file: &Path, root: Option<&str>) -> Result<AtlasConfig, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Unreadable {
        file: file.to_owned(),
        source,
    })?;
    parse(&text, file, root)
}

/// Parses config text; `file` is only for messages.
pub fn parse(text: &str, file: &Path, root: Option<&str>) -> Result<AtlasConfig, ConfigError> {
    let document: serde_json::Value =
        yaml_serde::from_str(text).map_err(|e| ConfigError::Garbled {
            file: file.to_owned(),
            detail: e.to_string(),
        })?;
    let candidates: Vec<&str> = match root {
        Some(pointer) => vec![pointer],
        None => vec![DEFAULT_ROOT, FALLBACK_ROOT],
    };
    let Some((pointer, block)) = candidates.iter().find_map(|p| {
        document
            .pointer(p)
            .filter(|v| !v.is_null())
            .map(|v| (*p, v))
    }) else {
        let tried = if root.is_none() {
            format!(" (also tried {FALLBACK_ROOT})")
        } else {
            String::new()
        };
        return Err(ConfigError::NoSuchRoot {
            file: file.to_owned(),
            pointer: candidates[0].to_owned(),
            tried,
        });
    };
    serde_json::from_value(block.clone()).map_err(|e| ConfigError::Invalid {
        file: file.to_owned(),
        pointer: pointer.to_owned(),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse_str(text: &str, root: Option<&str>) -> Result<AtlasConfig, ConfigError> {
        parse(text, Path::new("service.yml"), root)
    }

    #[test]
    fn reads_the_default_block_and_ignores_keys_outside_it() {
        let c = parse_str(
            "server: {port: 8080, anything: [1, 2]}\natlasdb:\n  keyValueService: {type: rocksdb, dataDir: /data}\n  management: {address: '127.0.0.1:7878', token: t}\n",
            None,
        )
        .unwrap();
        assert_eq!(
            c.key_value_service,
            StoreConfig::Rocksdb {
                data_dir: PathBuf::from("/data")
            }
        );
        assert_eq!(
            c.management,
            Some(ManagementConfig {
                address: "127.0.0.1:7878".into(),
                token: Some("t".into()),
                backup_roots: Vec::new(),
            })
        );
    }

    #[test]
    fn falls_back_to_atlas_and_follows_an_explicit_pointer() {
        let fallback = parse_str("atlas:\n  keyValueService: {type: memory}\n", None).unwrap();
        assert_eq!(fallback.key_value_service, StoreConfig::Memory {});
        let nested = parse_str(
            "svc:\n  stores:\n    - keyValueService: {type: memory}\n",
            Some("/svc/stores/0"),
        )
        .unwrap();
        assert_eq!(nested.management, None);
    }

    #[test]
    fn bad_configs_name_the_problem_and_the_file() {
        let err = parse_str(
            "atlasdb:\n  keyValueService: {type: rocksdb, dataDirr: /x}\n",
            None,
        )
        .unwrap_err();
        assert!(
            err.to_string().contains("dataDirr") && err.to_string().contains("service.yml"),
            "{err}"
        );
        let err = parse_str(
            "atlasdb:\n  keyValueService: {type: rocksdb, dataDir: /x}\n  extra: 1\n",
            None,
        )
        .unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
        let err = parse_str("atlasdb:\n  keyValueService: {type: dynamo}\n", None).unwrap_err();
        assert!(
            err.to_string().contains("dynamo") && err.to_string().contains("rocksdb"),
            "{err}"
        );
        let err = parse_str(
            "atlasdb:\n  keyValueService: {type: rocksdb, dataDir: [1]}\n",
            None,
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { .. }), "{err}");
        let err = parse_str("atlasdb: [unclosed\n", None).unwrap_err();
        assert!(matches!(err, ConfigError::Garbled { .. }), "{err}");
        let err = parse_str("other: {}\n", None).unwrap_err();
        assert!(
            err.to_string().contains("/atlasdb") && err.to_string().contains("/atlas"),
            "{err}"
        );
        let err = parse_str("atlasdb: {}\n", Some("/nope")).unwrap_err();
        assert!(
            matches!(err, ConfigError::NoSuchRoot { .. })
                && err.to_string().contains("--config-root"),
            "{err}"
        );
        let err = load(Path::new("/definitely/missing.yml"), None).unwrap_err();
        assert!(err.to_string().contains("/definitely/missing.yml"), "{err}");
    }
}
