//! The seed runbook's commands and the one-shot backup and restore. Live steps go through the
//! store's owner (see `store`): each command picks it once. Commands only safe offline refuse
//! a live owner.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ortelius_backup::{BackupOptions, OwnerError, RestoreOptions};
use ortelius_kvs::snapshot::TargetState;
use ortelius_timelock::{AllocatorOptions, FastForward, PersistentTimestampService};
use ortelius_txn::BackupLockHolder;
use serde_json::json;

use crate::config::AtlasConfig;
use crate::output::{self, Output};
use crate::progress::Bars;
use crate::store::{direct_owner, manager, owner, refuse_live, IfMissing};

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

pub fn fetch(
    config: &AtlasConfig,
    file: Option<&Path>,
    immutable: bool,
    out: Output,
) -> Result<()> {
    let owner = owner(config)?;
    let ts = if immutable {
        owner.immutable_timestamp()?
    } else {
        owner.fresh_timestamp()?
    };
    if let Some(file) = file {
        if let Some(parent) = file.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create directory {}", parent.display()))?;
        }
        std::fs::write(file, format!("{ts}\n"))
            .with_context(|| format!("cannot write timestamp file {}", file.display()))?;
    }
    out.emit(
        &json!({ "timestamp": ts, "kind": if immutable { "immutable" } else { "fresh" } }),
        || ts.to_string(),
    )
}

pub fn fast_forward(config: &AtlasConfig, target: i64, out: Output) -> Result<()> {
    refuse_live(config, "fast-forward of an embedded store")?;
    let (m, _) = manager(config, IfMissing::Refuse)?;
    match m.timestamps().fast_forward(target)? {
        FastForward::Advanced { from, to } => out
            .emit(&json!({ "advanced": true, "from": from, "to": to }), || {
                format!("fast-forwarded the timestamp service from {from} to {to}")
            }),
        FastForward::AlreadyBeyond { current } => out.emit(
            &json!({ "advanced": false, "current": current, "target": target }),
            || {
                format!(
                    "nothing to do: the timestamp service is already at {current}, past {target}"
                )
            },
        ),
    }
}

pub fn clean_transactions(config: &AtlasConfig, backup_ts: i64, out: Output) -> Result<()> {
    refuse_live(config, "clean-transactions")?;
    let (m, _) = manager(config, IfMissing::Refuse)?;
    let report = m.transactions_table().clean_from(backup_ts, |r| {
        eprintln!(
            "scanned {} transactions, {} to delete so far",
            r.scanned, r.deleted
        );
    })?;
    out.emit(
        &json!({ "scanned": report.scanned, "deleted": report.deleted, "from_timestamp": backup_ts }),
        || {
            format!(
                "scanned {} transactions; deleted {} committed at or after {backup_ts}",
                report.scanned, report.deleted
            )
        },
    )
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

fn describe_holder(h: &BackupLockHolder) -> String {
    format!("{} (reason: {})", h.holder, h.reason)
}

/// Who holds the lock, since when and until when, for people.
fn describe_hold(h: &BackupLockHolder, now: u64) -> String {
    format!(
        "{} since {}; lease {}",
        describe_holder(h),
        output::moment(h.acquired_at_ms, now),
        h.lease_expires_ms.map_or("never expires".to_owned(), |e| {
            format!("expires {}", output::moment(e, now))
        })
    )
}

pub fn backup_lock(config: &AtlasConfig, action: LockAction, out: Output) -> Result<()> {
    let owner = owner(config)?;
    match action {
        LockAction::Acquire { reason, lease } => {
            let holder = format!("ortelius-cli pid {}", std::process::id());
            let held = owner.acquire_backup_lock(&holder, &reason, lease)?;
            out.emit(&json!({ "acquired": held }), || {
                format!("backup lock acquired by {}", describe_holder(&held))
            })
        }
        LockAction::Release { force } => match owner.release_backup_lock(None) {
            Ok(released) => out.emit(&json!({ "released": released }), || {
                format!(
                    "backup lock released (was held by {})",
                    describe_holder(&released)
                )
            }),
            Err(OwnerError::LockNotHeld) if force => out.emit(&json!({ "released": null }), || {
                "backup lock was not held; nothing to release".to_owned()
            }),
            Err(e) => Err(e.into()),
        },
        LockAction::Status => {
            let status = owner.backup_lock_status()?;
            let now = output::now_ms();
            out.emit(&json!({ "status": status, "now_ms": now }), || {
                let state = match (&status.held, &status.expired) {
                    (Some(h), _) => format!("held by {}", describe_hold(h, now)),
                    (None, Some(h)) => format!(
                        "not held (the lease of {} ran out {})",
                        h.holder,
                        h.lease_expires_ms
                            .map_or("?".to_owned(), |e| output::moment(e, now))
                    ),
                    (None, None) => "not held".to_owned(),
                };
                format!(
                    "{state}\ndeletions in flight: {}",
                    status.deletions_in_flight
                )
            })
        }
    }
}

/// A raw snapshot of the store, taken live through the owner when there is one.
pub fn snapshot(config: &AtlasConfig, dir: &Path, node: Option<usize>, out: Output) -> Result<()> {
    let taken = owner(config)?.snapshot(dir, node)?;
    out.emit(&json!({ "dir": dir, "snapshot": taken }), || {
        format!("{} snapshot written to {}", taken.store_kind, dir.display())
    })
}

/// Loads a raw snapshot into the configured store (offline), leaving the rest of the restore
/// runbook to the operator.
pub fn load(config: &AtlasConfig, dir: &Path, force: bool, out: Output) -> Result<()> {
    refuse_live(config, "kvs load")?;
    let target = ortelius_backends::restore_target(&config.key_value_service)?;
    if target.state()? == TargetState::HasData && !force {
        bail!(
            "{} is not empty; load into an empty store, or pass --force to replace its contents",
            target.describe()
        );
    }
    // A raw directory has no identity to resume by: this id never matches an earlier load.
    let once = format!(
        "kvs load of {} by pid {}",
        dir.display(),
        std::process::id()
    );
    target.load(dir, &once, &|_, _| {})?;
    let kvs = target.open_restoring()?;
    // The snapshot carries the timestamp-allocator lease of the process it was taken from;
    // nothing runs on this store now, so release it for the runbook's next commands.
    let release = AllocatorOptions {
        take_over: true,
        ..AllocatorOptions::for_store(&*kvs)
    };
    match PersistentTimestampService::with_options(kvs.clone(), release) {
        // A store whose timestamps come from a timelock server has no lease to release.
        Ok(_) | Err(ortelius_timelock::TimestampError::OwnedByTimelock { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    ortelius_kvs::snapshot::finish_restore(&*kvs)?;
    target.complete()?;
    out.emit(&json!({ "loaded": dir, "into": target.describe() }), || {
        format!(
            "loaded {} into {}; now run timestamp clean-transactions, timestamp fast-forward and backup-lock --release",
            dir.display(),
            target.describe()
        )
    })
}

/// Sweeps one table or all of them. A sweep that the backup lock paused says so, with who
/// holds the lock and since when.
pub fn sweep(config: &AtlasConfig, table: Option<&str>, dry_run: bool, out: Output) -> Result<()> {
    let owner = owner(config)?;
    let reports = owner.sweep(table, dry_run)?;
    // A sweep that found nothing to delete never met the lock: ask it directly.
    let status = owner.backup_lock_status()?;
    let paused =
        if reports.iter().any(|r| r.paused_by_backup_lock) || (!dry_run && status.held.is_some()) {
            Some(status.held)
        } else {
            None
        };
    let now = output::now_ms();
    out.emit(&json!({ "tables": reports, "paused_by": paused }), || {
        let verb = if dry_run { "would delete" } else { "deleted" };
        let mut lines: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "{}: examined {} cells, {verb} {} versions{}",
                    r.table.as_deref().unwrap_or("?"),
                    r.cells_examined,
                    r.versions_deleted,
                    if r.paused_by_backup_lock { " (paused)" } else { "" }
                )
            })
            .collect();
        if let Some(holder) = &paused {
            lines.push(format!(
                "sweep is paused: the backup lock is held by {}; sweeping resumes once it is released",
                holder
                    .as_ref()
                    .map_or("a holder that has just released it".to_owned(), |h| describe_hold(h, now))
            ));
        }
        lines.join("\n")
    })
}

/// Starts the management API (and a background sweeper) over `owner` if the config names an
/// address; the returned guards stop both when dropped.
fn start_management(
    config: &AtlasConfig,
    owner: &ortelius_backup::DirectOwner,
) -> Result<
    Option<(
        ortelius_management::RunningServer,
        ortelius_txn::BackgroundSweeper,
    )>,
> {
    let Some(management) = config.management.as_ref() else {
        return Ok(None);
    };
    let background = owner.sweeper().spawn_background(Duration::from_secs(60));
    let server = ortelius_management::ManagementServer::start(
        &management.address,
        ortelius_management::Access {
            token: management.token.clone(),
            backup_roots: management.backup_roots.clone(),
        },
        Arc::new(owner.clone()),
    )
    .map_err(anyhow::Error::msg)?;
    eprintln!("serving the management API on {}", server.address);
    Ok(Some((server, background)))
}

/// `workload bank`: transfers on the configured store, serving the management API meanwhile.
pub fn workload_bank(
    config: &AtlasConfig,
    workload: &crate::bank::Workload,
    out: Output,
) -> Result<()> {
    let owner = direct_owner(config, IfMissing::Create)?;
    let _serving = start_management(config, &owner)?;
    let m = owner.manager();
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let committed = crate::bank::run(m, workload, &stop, true)?;
    let secs = started.elapsed().as_secs_f64();
    let verdict = crate::bank::verify(&m.begin_read_only()?)?;
    out.emit(
        &json!({
            "committed": committed,
            "seconds": secs,
            "accounts": verdict.accounts,
            "total": verdict.total,
        }),
        || {
            format!(
                "{committed} transfers in {secs:.1}s ({:.0}/s); {} accounts hold {} in total (conserved)",
                committed as f64 / secs,
                verdict.accounts,
                verdict.total
            )
        },
    )
}

/// `workload register`: the register workload, its history checked at the end.
pub fn workload_register(
    config: &AtlasConfig,
    workload: &crate::register::Workload,
    out: Output,
) -> Result<()> {
    let owner = direct_owner(config, IfMissing::Create)?;
    let _serving = start_management(config, &owner)?;
    let stop = AtomicBool::new(false);
    let history = crate::register::run(owner.manager(), workload, &stop)?;
    let report = crate::register::check(&history)
        .map_err(|violation| anyhow::anyhow!("snapshot isolation violated: {violation}"))?;
    out.emit(&report, || {
        format!(
            "{} transactions committed, {} aborted, {} with an unknown outcome; {} reads checked: snapshot isolation holds{}",
            report.committed,
            report.aborted,
            report.unknown,
            report.reads_checked,
            workload
                .history
                .as_ref()
                .map_or(String::new(), |p| format!("; history in {}", p.display()))
        )
    })
}

/// `migrate --to T`: every table into the target store, verified.
pub fn migrate(
    config: &AtlasConfig,
    target: &AtlasConfig,
    at: Option<i64>,
    batch_rows: usize,
    out: Output,
) -> Result<()> {
    if batch_rows == 0 || batch_rows > ortelius_backup::MAX_SCAN_ROWS {
        bail!(
            "--batch-rows must be in 1..={}",
            ortelius_backup::MAX_SCAN_ROWS
        );
    }
    if target.key_value_service == config.key_value_service {
        bail!("--to names the configured store itself; give the config of another store");
    }
    let source = owner(config)?;
    let (target_manager, _) = manager(target, IfMissing::Create)?;
    let started = Instant::now();
    let report = crate::migrate::run(&crate::migrate::Migration {
        source: &*source,
        target: &target_manager,
        target_name: target.key_value_service.describe(),
        at,
        batch_rows,
    })?;
    out.emit(&report, || {
        let copied: u64 = report.tables.iter().map(|t| t.rows_copied).sum();
        let rows: u64 = report.tables.iter().map(|t| t.rows).sum();
        format!(
            "migrated {} tables as of timestamp {} into {} in {:.1?}: {copied} rows copied{}, {rows} rows identical on both sides",
            report.tables.len(),
            report.at,
            target.key_value_service.describe(),
            started.elapsed(),
            if report.resumed { " (resumed)" } else { "" }
        )
    })
}

/// `verify history --file F`.
pub fn verify_history(file: &Path, out: Output) -> Result<()> {
    let history = crate::register::read_history(file)?;
    let report = crate::register::check(&history)
        .map_err(|violation| anyhow::anyhow!("snapshot isolation violated: {violation}"))?;
    out.emit(&report, || {
        format!(
            "{}: {} transactions ({} committed, {} aborted, {} unknown), {} reads checked: snapshot isolation holds",
            file.display(),
            history.len(),
            report.committed,
            report.aborted,
            report.unknown,
            report.reads_checked
        )
    })
}

/// `verify bank`: the invariant at a fresh timestamp or at `at` (offline).
pub fn verify_bank(config: &AtlasConfig, at: Option<i64>, out: Output) -> Result<()> {
    refuse_live(config, "verify bank (it reads the store directly)")?;
    let (m, _) = manager(config, IfMissing::Refuse)?;
    let txn = match at {
        Some(ts) => m.begin_read_only_at(ts)?,
        None => m.begin_read_only()?,
    };
    let v = crate::bank::verify(&txn)?;
    out.emit(
        &json!({
            "ok": true,
            "timestamp": txn.start_ts(),
            "accounts": v.accounts,
            "total": v.total,
            "transfers": v.transfers,
        }),
        || {
            format!(
                "ok at timestamp {}: {} accounts hold {} in total; {} transfers recorded",
                txn.start_ts(),
                v.accounts,
                v.total,
                v.transfers
            )
        },
    )
}

/// Runs the management API over the configured store until the process is killed.
pub fn serve(config: &AtlasConfig) -> Result<()> {
    if config.management.is_none() {
        bail!("serve needs management.address in the config (e.g. 127.0.0.1:7878)");
    }
    let owner = direct_owner(config, IfMissing::Create)?;
    let _serving = start_management(config, &owner)?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `backup --dir D`: the whole live runbook in one step.
pub fn backup(
    config: &AtlasConfig,
    dir: &Path,
    rate_limit: Option<u64>,
    compress: bool,
    incremental_from: Option<&Path>,
    encrypt: Option<ortelius_backup::BackupKey>,
    out: Output,
) -> Result<()> {
    // Ctrl-C stops the backup at its next step and releases the lock at once (instead of
    // leaving it to its lease).
    let cancel = Arc::new(AtomicBool::new(false));
    let flag = cancel.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("cannot install the Ctrl-C handler")?;
    let started = Instant::now();
    let owner = owner(config)?;
    let bars = Bars::new(rate_limit);
    let progress = |step: &str, done: u64, total: u64| bars.update(step, done, total);
    let report = ortelius_backup::backup_cancellable(
        &*owner,
        dir,
        BackupOptions {
            compress,
            incremental_from: incremental_from.map(Path::to_path_buf),
            encrypt,
        },
        &cancel,
        &progress,
    );
    bars.finish();
    let ortelius_backup::BackupReport {
        manifest,
        resumed_bytes,
    } = report?;
    let elapsed = started.elapsed();
    out.emit(
        &json!({
            "dir": dir,
            "store_kind": manifest.store_kind,
            "files": manifest.files.len(),
            "bytes": manifest.total_size(),
            "stored_bytes": manifest.stored_size(),
            "resumed_bytes": resumed_bytes,
            "parent": manifest.parent.as_ref().map(|p| &p.dir),
            "backup_ts": manifest.backup_ts,
            "fast_forward_ts": manifest.fast_forward_ts,
            "oldest_complete_ts": manifest.oldest_complete_ts,
            "seconds": elapsed.as_secs_f64(),
        }),
        || {
            format!(
                "backup of {} complete in {elapsed:.1?}: {} files, {:.1} MB{}{}; B = {}, F = {}, every version kept from {}",
                manifest.store_kind,
                manifest.files.len(),
                manifest.total_size() as f64 / 1e6,
                manifest.parent.as_ref().map_or(String::new(), |p| format!(
                    " ({:.1} MB stored here, the rest in {})",
                    manifest.stored_size() as f64 / 1e6,
                    p.dir
                )),
                if resumed_bytes > 0 {
                    format!(
                        "; resumed: {:.1} MB were already stored by the interrupted run",
                        resumed_bytes as f64 / 1e6
                    )
                } else {
                    String::new()
                },
                manifest.backup_ts,
                manifest.fast_forward_ts,
                manifest.oldest_complete_ts
            )
        },
    )
}

/// `backup verify --dir D [--deep]`.
pub fn verify_backup(
    dir: &Path,
    deep: bool,
    key: Option<ortelius_backup::BackupKey>,
    out: Output,
) -> Result<()> {
    let (m, deep) = if deep {
        let r = ortelius_backup::verify_deep_with(dir, key.as_ref())?;
        (r.manifest, Some((r.entries, r.transactions)))
    } else {
        let none = |_: &str, _: u64, _: u64| {};
        (
            ortelius_backup::verify_with(dir, key.as_ref(), &none)?,
            None,
        )
    };
    let mut report = json!({
        "dir": dir,
        "intact": true,
        "files": m.files.len(),
        "backup_ts": m.backup_ts,
        "fast_forward_ts": m.fast_forward_ts,
    });
    if let Some((entries, transactions)) = deep {
        report["entries"] = json!(entries);
        report["transactions"] = json!(transactions);
    }
    out.emit(&report, || {
        let checked = format!(
            "backup {} is intact: {} files match their checksums",
            dir.display(),
            m.files.len()
        );
        match deep {
            None => format!("{checked}; B = {}, F = {}", m.backup_ts, m.fast_forward_ts),
            Some((entries, Some(n))) => format!(
                "{checked}; {entries} entries read back, {n} transactions well-formed and before F = {}",
                m.fast_forward_ts
            ),
            Some((entries, None)) => format!(
                "{checked}; {entries} entries read back, the transactions table is not readable without a {} server (checked on restore)",
                m.store_kind
            ),
        }
    })
}

/// The choices of `restore`.
pub struct RestoreArgs {
    pub force: bool,
    pub as_of: Option<i64>,
    pub rate_limit: Option<u64>,
    pub key: Option<ortelius_backup::BackupKey>,
}

/// `restore --dir D`: into the configured store, offline.
pub fn restore(config: &AtlasConfig, dir: &Path, args: RestoreArgs, out: Output) -> Result<()> {
    let RestoreArgs {
        force,
        as_of,
        rate_limit,
        key,
    } = args;
    refuse_live(config, "restore")?;
    let target = ortelius_backends::restore_target(&config.key_value_service)?;
    let started = Instant::now();
    let bars = Bars::new(rate_limit);
    let progress = |step: &str, done: u64, total: u64| bars.update(step, done, total);
    let timestamps = crate::store::timelock(config)?
        .map(|c| Arc::new(c) as Arc<dyn ortelius_timelock::TimestampService>);
    let options = RestoreOptions {
        force,
        as_of,
        timestamps,
        key,
    };
    let report = ortelius_backup::restore_with(dir, &*target, &options, &progress);
    bars.finish();
    let report = report?;
    let elapsed = started.elapsed();
    out.emit(
        &json!({
            "dir": dir,
            "into": target.describe(),
            "as_of": report.as_of,
            "bytes_loaded": report.bytes_loaded,
            "resumed_bytes": report.resumed_bytes,
            "resumed_after_load": report.resumed_after_load,
            "transactions_removed": report.transactions_removed,
            "fast_forward_ts": report.manifest.fast_forward_ts,
            "seconds": elapsed.as_secs_f64(),
        }),
        || {
            let loaded = if report.resumed_after_load {
                "the interrupted run had loaded it".to_owned()
            } else if report.resumed_bytes > 0 {
                format!(
                    "loaded {:.1} MB ({:.1} MB of it kept from the interrupted run)",
                    report.bytes_loaded as f64 / 1e6,
                    report.resumed_bytes as f64 / 1e6
                )
            } else {
                format!("loaded {:.1} MB", report.bytes_loaded as f64 / 1e6)
            };
            format!(
                "restored {} into {} in {elapsed:.1?} as of {}: {loaded}, removed {} later transactions, fast-forwarded past {}, released the backup lock",
                dir.display(),
                target.describe(),
                report.as_of,
                report.transactions_removed,
                report.manifest.fast_forward_ts
            )
        },
    )
}

/// `timelock serve`: the shared timestamp and lock server, until killed.
pub fn timelock_serve(args: &crate::TimelockServeArgs) -> Result<()> {
    let read_token = |file: &Option<PathBuf>| -> Result<Option<String>> {
        file.as_ref()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|t| t.trim().to_owned())
                    .with_context(|| format!("cannot read token file {}", f.display()))
            })
            .transpose()
    };
    let ha = (!args.etcd.is_empty()).then(|| ortelius_timelock_server::ha::HaConfig {
        endpoints: args.etcd.clone(),
        prefix: args.etcd_prefix.clone(),
        lease: args.leader_lease,
    });
    let server = ortelius_timelock_server::start(ortelius_timelock_server::ServerConfig {
        listen: args.listen.clone(),
        advertise: args.advertise.clone(),
        data_dir: args.data_dir.clone(),
        token: read_token(&args.token_file)?,
        admin_token: read_token(&args.admin_token_file)?,
        lock_lease: ortelius_timelock::DEFAULT_LEASE,
        ha,
    })
    .map_err(anyhow::Error::msg)?;
    eprintln!(
        "serving timestamps and locks on {} (timelock cluster {}{})",
        server.address,
        server.cluster,
        if args.etcd.is_empty() {
            format!(", state in {}", args.data_dir.display())
        } else {
            format!(", leader elected through etcd at {}", args.etcd.join(","))
        }
    );
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
