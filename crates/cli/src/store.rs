//! From config to store: open the configured backend, build the transaction manager over it,
//! and pick the store's owner for a command — the live process through its management API
//! when one answers, else the store opened directly.

use std::sync::Arc;

use anyhow::{bail, Result};
use ortelius_backends::Backend;
use ortelius_backup::{DirectOwner, StoreOwner};
use ortelius_kvs::KvsError;
use ortelius_management::ManagementClient;
use ortelius_timelock_client::TimelockClient;
use ortelius_txn::{TransactionConfig, TransactionManager};

use crate::config::AtlasConfig;

/// Opens the configured store directly.
pub fn open_backend(config: &AtlasConfig) -> Result<Backend> {
    match ortelius_backends::open(&config.key_value_service) {
        Ok(backend) => Ok(backend),
        Err(KvsError::StoreLocked { dir, .. }) => bail!(
            "the store at {} is open in a running process whose management API does not answer; configure management.address (and token) to reach it, or stop it",
            dir.display()
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
pub fn manager(config: &AtlasConfig) -> Result<(TransactionManager, Backend)> {
    let backend = open_backend(config)?;
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
pub fn direct_owner(config: &AtlasConfig) -> Result<DirectOwner> {
    let (manager, backend) = manager(config)?;
    Ok(DirectOwner::new(
        manager,
        backend.snapshots,
        config.key_value_service.describe(),
    )?)
}

/// The management API of a live owner of the store, if the config names one and it answers.
pub fn live(config: &AtlasConfig) -> Option<ManagementClient> {
    let m = config.management.as_ref()?;
    let client = ManagementClient::new(&m.address, m.token.clone());
    client.is_live().then_some(client)
}

/// Whoever owns the store: the live process, or the store opened directly.
pub fn owner(config: &AtlasConfig) -> Result<Arc<dyn StoreOwner>> {
    Ok(match live(config) {
        Some(client) => Arc::new(client),
        None => Arc::new(direct_owner(config)?),
    })
}

/// Fails if a process owns the store (for commands only safe offline).
pub fn refuse_live(config: &AtlasConfig, what: &str) -> Result<()> {
    if let Some(client) = live(config) {
        bail!(
            "{what} is only safe offline (during a restore, on a store no process uses), but a running process owns this store (management API at {}); stop it first",
            client.address()
        );
    }
    Ok(())
}
