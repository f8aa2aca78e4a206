//! The seed runbook's commands, run directly against the configured store (offline: no other
//! process may have it open). Live operation through a running process's management API is
//! not built yet; when the store is owned by a live process these commands say so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::{KeyValueService, KvsError};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_timelock::FastForward;
use ortelius_txn::{BackupLock, SystemWallClock, TransactionConfig, TransactionManager};

use crate::config::{AtlasConfig, KvsConfig};

/// Opens the configured store directly.
pub fn open_store(config: &AtlasConfig) -> Result<Arc<dyn KeyValueService>> {
    match &config.key_value_service {
        KvsConfig::Memory {} => Ok(Arc::new(MemoryKvs::new())),
        KvsConfig::Rocksdb { data_dir } => match RocksDbKvs::open(data_dir, &RocksDbConfig::default()) {
            Ok(kvs) => Ok(Arc::new(kvs)),
            Err(KvsError::StoreLocked { dir, .. }) => bail!(
                "the store at {} is open in a running process; stop it first (live operation through its management API is not available in this version)",
                dir.display()
            ),
            Err(e) => Err(e.into()),
        },
    }
}

fn manager(config: &AtlasConfig) -> Result<TransactionManager> {
    Ok(TransactionManager::embedded(
        open_store(config)?,
        TransactionConfig::default(),
    )?)
}

/// Reads a timestamp file: one non-negative integer on one line.
pub fn read_timestamp_file(file: &Path) -> Result<i64> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read timestamp file {}", file.display()))?;
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    match lines.as_slice() {
        [] => bail!(
            "timestamp file {} is empty; it should hold one timestamp",
            file.display()
        ),
        [line] => {
            let ts: i64 = line.parse().with_context(|| {
                format!("timestamp file {} holds {line:?}, which is not a timestamp (a whole number up to {})", file.display(), i64::MAX)
            })?;
            if ts < 0 {
                bail!(
                    "timestamp file {} holds a negative timestamp {ts}",
                    file.display()
                );
            }
            Ok(ts)
        }
        _ => bail!(
            "timestamp file {} has {} lines; it should hold exactly one timestamp",
            file.display(),
            lines.len()
        ),
    }
}

/// The timestamp given as `--file` or `--timestamp`.
pub fn timestamp_arg(file: Option<&PathBuf>, timestamp: Option<i64>) -> Result<i64> {
    match (file, timestamp) {
        (Some(f), None) => read_timestamp_file(f),
        (None, Some(ts)) if ts >= 0 => Ok(ts),
        (None, Some(ts)) => bail!("--timestamp {ts} is negative"),
        _ => bail!("give exactly one of --file and --timestamp"),
    }
}

pub fn fetch(config: &AtlasConfig, file: Option<&Path>, immutable: bool) -> Result<()> {
    let m = manager(config)?;
    let ts = if immutable {
        m.immutable_timestamp()?
    } else {
        m.fresh_timestamp()?
    };
    if let Some(file) = file {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        std::fs::write(file, format!("{ts}\n"))
            .with_context(|| format!("cannot write timestamp file {}", file.display()))?;
    }
    println!("{ts}");
    Ok(())
}

pub fn fast_forward(config: &AtlasConfig, target: i64) -> Result<()> {
    let m = manager(config)?;
    match m.timestamps().fast_forward(target)? {
        FastForward::Advanced { from, to } => {
            println!("fast-forwarded the timestamp service from {from} to {to}")
        }
        FastForward::AlreadyBeyond { current } => {
            println!("nothing to do: the timestamp service is already at {current}, past {target}")
        }
    }
    Ok(())
}

pub fn clean_transactions(config: &AtlasConfig, backup_ts: i64) -> Result<()> {
    let m = manager(config)?;
    let report = m.transactions_table().clean_from(backup_ts, |r| {
        eprintln!(
            "scanned {} transactions, {} to delete so far",
            r.scanned, r.deleted
        );
    })?;
    println!(
        "scanned {} transactions; deleted {} committed at or after {backup_ts}",
        report.scanned, report.deleted
    );
    Ok(())
}

pub enum LockAction {
    Acquire {
        reason: String,
        lease: Option<Duration>,
    },
    Release,
    Status,
}

pub fn backup_lock(config: &AtlasConfig, action: LockAction) -> Result<()> {
    let lock = BackupLock::new(open_store(config)?, Arc::new(SystemWallClock))?;
    match action {
        LockAction::Acquire { reason, lease } => {
            let holder = format!("ortelius-cli pid {}", std::process::id());
            let held = lock.acquire(&holder, &reason, lease, Duration::from_secs(120))?;
            println!(
                "backup lock acquired by {} (reason: {})",
                held.holder, held.reason
            );
        }
        LockAction::Release => {
            let released = lock.release()?;
            println!(
                "backup lock released (was held by {}, reason: {})",
                released.holder, released.reason
            );
        }
        LockAction::Status => {
            let status = lock.status()?;
            match (&status.held, &status.expired) {
                (Some(h), _) => println!(
                    "held by {} (reason: {}) since {} ms after the epoch; lease expires {}",
                    h.holder,
                    h.reason,
                    h.acquired_at_ms,
                    h.lease_expires_ms
                        .map_or("never".to_owned(), |e| format!("at {e} ms"))
                ),
                (None, Some(h)) => println!("not held (the lease of {} expired)", h.holder),
                (None, None) => println!("not held"),
            }
            println!("deletions in flight: {}", status.deletions_in_flight);
        }
    }
    Ok(())
}

/// Parses durations like `90s`, `15m`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m or 2h"))?;
    let secs = match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{text:?} has an unknown unit; use s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}
