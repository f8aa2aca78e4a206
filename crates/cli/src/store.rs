//! From config to store: open the configured backend, build the transaction manager over it,
//! and pick the store's owner for a command — the live process through its management API
//! when one answers, else the store opened directly.

use std::sync::Arc;

use anyhow::{bail, Result};
use ortelius_backends::Backend;
use ortelius_backup::{DirectOwner, StoreOwner};
use ortelius_kvs::KvsError;
use ortelius_management::api::Health;
use ortelius_management::{ManagementClient, ManagementError};
use ortelius_timelock_client::TimelockClient;
use ortelius_txn::{TransactionConfig, TransactionManager};

use crate::config::AtlasConfig;

/// Whether a command may create the store when it does not exist.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IfMissing {
    /// `workload`, `serve` and a migration's target: the commands that start a store.
    Create,
    /// Every other command: a missing store is a mistyped config, not a store to create.
    Refuse,
}

/// Opens the configured store directly.
pub fn open_backend(config: &AtlasConfig, if_missing: IfMissing) -> Result<Backend> {
    let opened = match if_missing {
        IfMissing::Create => ortelius_backends::open(&config.key_value_service),
        IfMissing::Refuse => ortelius_backends::open_existing(&config.key_value_service),
    };
    match opened {
        Ok(backend) => Ok(backend),
        Err(KvsError::StoreLocked { dir, .. }) => match live(config)? {
            Some((client, health)) => bail!(
                "the store at {} is owned by {} (management API at {}); stop that process first, or run commands that go through its management API",
                dir.display(),
                health.pid.map_or("a running process".to_owned(), |pid| format!("process {pid}")),
                client.address()
            ),
            None if config.management.is_some() => bail!(
                "the store at {} is open in a running process whose management API does not answer at the configured management.address; stop that process, or fix the address",
                dir.display()
            ),
            None => bail!(
                "the store at {} is open in another process; stop it, or configure management.address (and token) to reach its management API",
                dir.display()
            ),
        },
        Err(e @ KvsError::StoreMissing { .. }) => bail!(
            "{e}; only workload, serve, demo, restore, kvs load and migrate (its target) create a store"
        ),
        Err(e) => Err(e.into()),
    }
}

/// The configured timelock servers, if any.
pub fn timelock(config: &AtlasConfig) -> Result<Option<TimelockClient>> {
    config
        .timelock
        .as_ref()
        .map(|t| TimelockClient::new(t.clone()))
        .transpose()
        .map_err(Into::into)
}

/// A transaction manager over the configured store: with the shared timelock server when one
/// is configured (the store is attached to it), else with the store's own timestamp and lock
/// services (this process owns the store).
pub fn manager(
    config: &AtlasConfig,
    if_missing: IfMissing,
) -> Result<(TransactionManager, Backend)> {
    let backend = open_backend(config, if_missing)?;
    let manager = match timelock(config)? {
        None => TransactionManager::embedded(backend.kvs.clone(), TransactionConfig::default())?,
        Some(client) => {
            client.attach(backend.kvs.clone())?;
            TransactionManager::new(
                backend.kvs.clone(),
                Arc::new(client.clone()),
                Arc::new(client),
                TransactionConfig::default(),
            )?
        }
    };
    Ok((manager, backend))
}

/// The store opened directly as its owner.
pub fn direct_owner(config: &AtlasConfig, if_missing: IfMissing) -> Result<DirectOwner> {
    let (manager, backend) = manager(config, if_missing)?;
    Ok(DirectOwner::new(
        manager,
        backend.snapshots,
        config.key_value_service.describe(),
    )?)
}

/// The management API of a live owner of the store and its health answer, if the config
/// names one and it answers. A refused token is an error, not "nobody answers".
pub fn live(config: &AtlasConfig) -> Result<Option<(ManagementClient, Health)>> {
    let Some(m) = config.management.as_ref() else {
        return Ok(None);
    };
    let client = ManagementClient::new(&m.address, m.token.clone());
    match client.health() {
        Ok(health) => Ok(Some((client, health))),
        Err(ManagementError::Refused { status: 401, .. }) => bail!(
            "the management API at {} refused the token: set management.token in the config to the token the running process was started with",
            m.address
        ),
        Err(_) => Ok(None),
    }
}

/// Whoever owns the store: the live process, or the existing store opened directly.
pub fn owner(config: &AtlasConfig) -> Result<Arc<dyn StoreOwner>> {
    Ok(match live(config)? {
        Some((client, _)) => Arc::new(client),
        None => Arc::new(direct_owner(config, IfMissing::Refuse)?),
    })
}

/// Fails if a process owns the store (for commands only safe offline).
pub fn refuse_live(config: &AtlasConfig, what: &str) -> Result<()> {
    if let Some((client, _)) = live(config)? {
        bail!(
            "{what} is only safe offline (during a restore, on a store no process uses), but a running process owns this store (management API at {}); stop it first",
            client.address()
        );
    }
    Ok(())
}
