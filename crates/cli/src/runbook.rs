//! The seed runbook's commands. When the config names a management API and a process answers
//! there, commands go through it (live operation while the application writes); otherwise they
//! open the configured store directly. Commands only safe offline refuse a live owner.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ortelius_kvs::memory::MemoryKvs;
use ortelius_kvs::TableRef;
use ortelius_kvs::{KeyValueService, KvsError};
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_management::ManagementClient;
use ortelius_timelock::FastForward;
use ortelius_txn::{
    BackupLock, SweepConfig, Sweeper, SystemWallClock, TransactionConfig, TransactionManager,
};
use serde_json::{json, Value};

use crate::config::{AtlasConfig, KvsConfig};

/// Opens the configured store directly.
pub fn open_store(config: &AtlasConfig) -> Result<Arc<dyn KeyValueService>> {
    match &config.key_value_service {
        KvsConfig::Memory {} => Ok(Arc::new(MemoryKvs::new())),
        KvsConfig::Rocksdb { data_dir } => match RocksDbKvs::open(data_dir, &RocksDbConfig::default()) {
            Ok(kvs) => Ok(Arc::new(kvs)),
            Err(KvsError::StoreLocked { dir, .. }) => bail!(
                "the store at {} is open in a running process whose management API does not answer; configure management.address (and token) to reach it, or stop it",
                dir.display()
            ),
            Err(e) => Err(e.into()),
        },
    }
}

/// The management API of a live owner of the store, if the config names one and it answers.
pub fn live(config: &AtlasConfig) -> Option<ManagementClient> {
    let m = config.management.as_ref()?;
    let client = ManagementClient::new(&m.address, m.token.clone());
    client.is_live().then_some(client)
}

fn refuse_live(config: &AtlasConfig, what: &str) -> Result<()> {
    if let Some(client) = live(config) {
        bail!(
            "{what} is only safe offline (during a restore, on a store no process uses), but a running process owns this store (management API at {}); stop it first",
            client.address()
        );
    }
    Ok(())
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
    let ts = match live(config) {
        Some(client) => {
            let path = if immutable {
                "/v1/timestamp/immutable"
            } else {
                "/v1/timestamp/fresh"
            };
            client.call("POST", path, None)?["timestamp"]
                .as_i64()
                .context("the management API answered no timestamp")?
        }
        None => {
            let m = manager(config)?;
            if immutable {
                m.immutable_timestamp()?
            } else {
                m.fresh_timestamp()?
            }
        }
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
    refuse_live(config, "fast-forward of an embedded store")?;
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
    refuse_live(config, "clean-transactions")?;
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
    /// With `force`, releasing a lock that is not held is not an error (for cleanup scripts
    /// that always release).
    Release {
        force: bool,
    },
    Status,
}

fn describe_holder(h: &Value) -> String {
    format!(
        "{} (reason: {})",
        h["holder"].as_str().unwrap_or("?"),
        h["reason"].as_str().unwrap_or("?")
    )
}

pub fn backup_lock(config: &AtlasConfig, action: LockAction) -> Result<()> {
    if let Some(client) = live(config) {
        let holder = format!("ortelius-cli pid {}", std::process::id());
        match action {
            LockAction::Acquire { reason, lease } => {
                let body = json!({"holder": holder, "reason": reason, "lease_secs": lease.map(|l| l.as_secs())});
                let held = client.call("POST", "/v1/backup-lock/acquire", Some(&body))?;
                println!("backup lock acquired by {}", describe_holder(&held));
            }
            LockAction::Release { force } => {
                match client.call("POST", "/v1/backup-lock/release", None) {
                    Ok(released) => println!(
                        "backup lock released (was held by {})",
                        describe_holder(&released)
                    ),
                    Err(ortelius_management::ManagementError::Refused { status: 409, .. })
                        if force =>
                    {
                        println!("backup lock was not held; nothing to release")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            LockAction::Status => {
                let s = client.call("GET", "/v1/backup-lock/status", None)?;
                if s["held"].is_null() {
                    println!("not held");
                } else {
                    println!("held by {}", describe_holder(&s["held"]));
                }
                println!("deletions in flight: {}", s["deletions_in_flight"]);
            }
        }
        return Ok(());
    }
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
        LockAction::Release { force } => match lock.release() {
            Ok(released) => {
                println!(
                    "backup lock released (was held by {}, reason: {})",
                    released.holder, released.reason
                )
            }
            Err(ortelius_txn::BackupLockError::NotHeld) if force => {
                println!("backup lock was not held; nothing to release")
            }
            Err(e) => return Err(e.into()),
        },
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

/// A consistent copy of the store, taken live through the owner's API when there is one.
pub fn checkpoint(config: &AtlasConfig, dir: &Path) -> Result<()> {
    match live(config) {
        Some(client) => {
            let dir = std::path::absolute(dir)
                .with_context(|| format!("bad directory {}", dir.display()))?;
            client.call(
                "POST",
                "/v1/checkpoint",
                Some(&json!({"dir": dir.to_string_lossy()})),
            )?;
        }
        None => open_store(config)?.checkpoint(dir)?,
    }
    println!("checkpoint written to {}", dir.display());
    Ok(())
}

/// Sweeps one table or all of them.
pub fn sweep(config: &AtlasConfig, table: Option<&str>, dry_run: bool) -> Result<()> {
    let reports: Vec<Value> = match live(config) {
        Some(client) => {
            let answer = client.call(
                "POST",
                "/v1/sweep",
                Some(&json!({"table": table, "dry_run": dry_run})),
            )?;
            answer.as_array().cloned().unwrap_or_default()
        }
        None => {
            let m = manager(config)?;
            let lock = BackupLock::new(m.kvs().clone(), Arc::new(SystemWallClock))?;
            let sweeper = Sweeper::new(m, lock, SweepConfig::default())?;
            let reports = match table {
                Some(name) => vec![sweeper.sweep_table(&TableRef::parse(name)?, dry_run)?],
                None => sweeper.sweep_all(dry_run)?,
            };
            reports
                .iter()
                .map(|r| json!({"table": r.table.as_ref().map(TableRef::qualified_name), "versions_deleted": r.versions_deleted, "cells_examined": r.cells_examined, "paused_by_backup_lock": r.paused_by_backup_lock}))
                .collect()
        }
    };
    for r in reports {
        let verb = if dry_run { "would delete" } else { "deleted" };
        println!(
            "{}: examined {} cells, {verb} {} versions{}",
            r["table"].as_str().unwrap_or("?"),
            r["cells_examined"],
            r["versions_deleted"],
            if r["paused_by_backup_lock"].as_bool() == Some(true) {
                " (paused: the backup lock is held)"
            } else {
                ""
            }
        );
    }
    Ok(())
}

/// Starts the management API (and a background sweeper) over `m` if the config names an
/// address; the returned guards stop both when dropped.
fn start_management(
    config: &AtlasConfig,
    m: &TransactionManager,
) -> Result<
    Option<(
        ortelius_management::RunningServer,
        ortelius_txn::BackgroundSweeper,
    )>,
> {
    let Some(management) = config.management.as_ref() else {
        return Ok(None);
    };
    let backup_lock = BackupLock::new(m.kvs().clone(), Arc::new(SystemWallClock))?;
    let sweeper = Sweeper::new(m.clone(), backup_lock.clone(), SweepConfig::default())?;
    let background = sweeper.spawn_background(Duration::from_secs(60));
    let state = ortelius_management::ManagementState {
        manager: m.clone(),
        backup_lock,
        sweeper,
    };
    let server = ortelius_management::ManagementServer::start(
        &management.address,
        management.token.clone(),
        state,
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!("serving the management API on {}", server.address);
    Ok(Some((server, background)))
}

/// `workload bank`: transfers on the configured store, serving the management API meanwhile.
pub fn workload_bank(config: &AtlasConfig, workload: &crate::bank::Workload) -> Result<()> {
    let m = manager(config)?;
    let _serving = start_management(config, &m)?;
    let stop = std::sync::atomic::AtomicBool::new(false);
    let started = std::time::Instant::now();
    let committed = crate::bank::run(&m, workload, &stop, true)?;
    let secs = started.elapsed().as_secs_f64();
    let verdict = crate::bank::verify(&m.begin_read_only()?)?;
    println!(
        "{committed} transfers in {secs:.1}s ({:.0}/s); {} accounts hold {} in total (conserved)",
        committed as f64 / secs,
        verdict.accounts,
        verdict.total
    );
    Ok(())
}

/// `verify bank`: the invariant at a fresh timestamp or at `at` (offline).
pub fn verify_bank(config: &AtlasConfig, at: Option<i64>) -> Result<()> {
    refuse_live(config, "verify bank (it reads the store directly)")?;
    let m = manager(config)?;
    let txn = match at {
        Some(ts) => m.begin_read_only_at(ts)?,
        None => m.begin_read_only()?,
    };
    let v = crate::bank::verify(&txn)?;
    println!(
        "ok at timestamp {}: {} accounts hold {} in total; {} transfers recorded",
        txn.start_ts(),
        v.accounts,
        v.total,
        v.transfers
    );
    Ok(())
}

/// Runs the management API over the configured store until the process is killed.
pub fn serve(config: &AtlasConfig) -> Result<()> {
    if config.management.is_none() {
        bail!("serve needs management.address in the config (e.g. 127.0.0.1:7878)");
    }
    let m = manager(config)?;
    let _serving = start_management(config, &m)?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The backup source of a live owner: its management API.
struct LiveSource(ManagementClient);

impl ortelius_backup::BackupSource for LiveSource {
    fn acquire_lock(&self, reason: &str, lease: Duration) -> std::result::Result<(), String> {
        let body = json!({"holder": format!("ortelius backup (pid {})", std::process::id()), "reason": reason, "lease_secs": lease.as_secs()});
        self.0
            .call("POST", "/v1/backup-lock/acquire", Some(&body))
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn release_lock(&self) -> std::result::Result<(), String> {
        self.0
            .call("POST", "/v1/backup-lock/release", None)
            .map(drop)
            .map_err(|e| e.to_string())
    }
    fn fresh_timestamp(&self) -> std::result::Result<i64, String> {
        self.0
            .call("POST", "/v1/timestamp/fresh", None)
            .map_err(|e| e.to_string())?["timestamp"]
            .as_i64()
            .ok_or_else(|| "the management API answered no timestamp".to_owned())
    }
    fn sweep_timestamp(&self) -> std::result::Result<i64, String> {
        self.0
            .call("GET", "/v1/sweep/status", None)
            .map_err(|e| e.to_string())?["sweep_ts"]
            .as_i64()
            .ok_or_else(|| "the management API answered no sweep timestamp".to_owned())
    }
    fn checkpoint(&self, dir: &Path) -> std::result::Result<(), String> {
        let dir = std::path::absolute(dir).map_err(|e| e.to_string())?;
        self.0
            .call(
                "POST",
                "/v1/checkpoint",
                Some(&json!({"dir": dir.to_string_lossy()})),
            )
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// Progress of backup and restore steps: a bar per step on stderr (indicatif hides it when
/// stderr is not a terminal), paced to an optional rate limit in bytes per second.
struct Bars {
    current: std::sync::Mutex<Option<(String, indicatif::ProgressBar)>>,
    limit: Option<ortelius_backup::RateLimit>,
}

impl Bars {
    fn new(rate_limit: Option<u64>) -> Self {
        Self {
            current: std::sync::Mutex::new(None),
            limit: rate_limit.map(ortelius_backup::RateLimit::new),
        }
    }

    fn update(&self, step: &str, done: u64, total: u64) {
        self.draw(step, done, total);
        if let Some(limit) = &self.limit {
            limit.pace(step, done);
        }
    }

    fn draw(&self, step: &str, done: u64, total: u64) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        if current.as_ref().map(|(s, _)| s.as_str()) != Some(step) {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
            let bar = indicatif::ProgressBar::new(total);
            let style = indicatif::ProgressStyle::with_template(
                "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_message(step.to_owned());
            *current = Some((step.to_owned(), bar));
        }
        if let Some((_, bar)) = current.as_ref() {
            bar.set_length(total);
            bar.set_position(done);
        }
    }

    fn finish(&self) {
        if let Ok(mut current) = self.current.lock() {
            if let Some((_, bar)) = current.take() {
                bar.finish_and_clear();
            }
        }
    }
}

/// `backup --dir D`: the whole live runbook in one step.
pub fn backup(
    config: &AtlasConfig,
    dir: &Path,
    rate_limit: Option<u64>,
    compress: bool,
) -> Result<()> {
    // Ctrl-C stops the backup at its next step and releases the lock at once (instead of
    // leaving it to its lease).
    let cancel = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || flag.store(true, std::sync::atomic::Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let started = std::time::Instant::now();
    let bars = Bars::new(rate_limit);
    let progress = |step: &str, done: u64, total: u64| bars.update(step, done, total);
    let manifest = match live(config) {
        Some(client) => ortelius_backup::backup_cancellable(
            &LiveSource(client),
            dir,
            compress,
            &cancel,
            &progress,
        ),
        None => {
            let source =
                ortelius_backup::DirectSource::new(manager(config)?).map_err(anyhow::Error::msg)?;
            ortelius_backup::backup_cancellable(&source, dir, compress, &cancel, &progress)
        }
    };
    bars.finish();
    let manifest = manifest?;
    let bytes: u64 = manifest.files.iter().map(|f| f.1).sum();
    println!(
        "backup complete in {:.1?}: {} files, {:.1} MB; B = {}, F = {}, every version kept from {}",
        started.elapsed(),
        manifest.files.len(),
        bytes as f64 / 1e6,
        manifest.backup_ts,
        manifest.fast_forward_ts,
        manifest.oldest_complete_ts
    );
    Ok(())
}

/// `backup verify --dir D [--deep]`.
pub fn verify_backup(dir: &Path, deep: bool) -> Result<()> {
    if deep {
        let r = ortelius_backup::verify_deep(dir)?;
        println!(
            "backup {} is intact: {} files match their checksums; {} keys read back, {} transactions well-formed and before F = {}",
            dir.display(), r.manifest.files.len(), r.keys, r.transactions, r.manifest.fast_forward_ts
        );
    } else {
        let m = ortelius_backup::verify(dir)?;
        println!(
            "backup {} is intact: {} files match their checksums; B = {}, F = {}",
            dir.display(),
            m.files.len(),
            m.backup_ts,
            m.fast_forward_ts
        );
    }
    Ok(())
}

/// `restore --dir D`: into the configured store's directory, offline.
pub fn restore(
    config: &AtlasConfig,
    dir: &Path,
    force: bool,
    as_of: Option<i64>,
    rate_limit: Option<u64>,
) -> Result<()> {
    refuse_live(config, "restore")?;
    let KvsConfig::Rocksdb { data_dir } = &config.key_value_service else {
        bail!("restore needs keyValueService.type rocksdb (a memory store has nowhere to restore into)");
    };
    let started = std::time::Instant::now();
    let bars = Bars::new(rate_limit);
    let progress = |step: &str, done: u64, total: u64| bars.update(step, done, total);
    let report = ortelius_backup::restore_with_progress(dir, data_dir, force, as_of, &progress);
    bars.finish();
    let report = report?;
    println!(
        "restored {} into {} in {:.1?} as of {}: copied {:.1} MB, linked {:.1} MB, removed {} later transactions, fast-forwarded past {}, released the backup lock",
        dir.display(),
        data_dir.display(),
        started.elapsed(),
        report.as_of,
        report.bytes_copied as f64 / 1e6,
        report.bytes_linked as f64 / 1e6,
        report.transactions_removed,
        report.manifest.fast_forward_ts
    );
    Ok(())
}

/// Parses a rate like `512K`, `50M` or `1G` (per second, binary units) into bytes per second.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text
        .trim()
        .trim_end_matches("/s")
        .trim_end_matches(['B', 'b']);
    let (number, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate like 512K, 50M or 1G (per second)"))?;
    let scale: u64 = match unit {
        "" => 1,
        "K" | "k" => 1 << 10,
        "M" | "m" => 1 << 20,
        "G" | "g" => 1 << 30,
        _ => return Err(format!("{text:?} has an unknown unit; use K, M or G")),
    };
    match n.checked_mul(scale) {
        Some(0) | None => Err(format!("{text:?} must be a positive rate")),
        Some(rate) => Ok(rate),
    }
}
