//! `ortelius demo`: needs no config. It creates an embedded store in a temporary directory and
//! runs the bank workload. Mid-run it performs the runbook's live backup steps, then restores
//! the backup into a second directory from scratch, verifies, and reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ortelius_kvs::KeyValueService;
use ortelius_kvs_rocksdb::{RocksDbConfig, RocksDbKvs};
use ortelius_txn::{BackupLock, SystemWallClock, TransactionConfig, TransactionManager};

use crate::bank;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keep the stores in this (new or empty) directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, default_value_t = 100)]
    accounts: u64,
    #[arg(long, default_value_t = 4)]
    threads: u64,
    /// How long the workload runs; the backup happens a third of the way in.
    #[arg(long, default_value = "6s", value_parser = crate::runbook::parse_duration)]
    duration: Duration,
}

fn open(dir: &Path) -> Result<(TransactionManager, Arc<dyn KeyValueService>)> {
    let kvs: Arc<dyn KeyValueService> = Arc::new(RocksDbKvs::open(dir, &RocksDbConfig::default())?);
    Ok((
        TransactionManager::embedded(kvs.clone(), TransactionConfig::default())?,
        kvs,
    ))
}

fn copy_dir(from: &Path, to: &Path) -> Result<u64> {
    std::fs::create_dir_all(to).with_context(|| format!("cannot create {}", to.display()))?;
    let mut bytes = 0;
    for entry in
        std::fs::read_dir(from).with_context(|| format!("cannot read {}", from.display()))?
    {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            bytes += copy_dir(&entry.path(), &target)?;
        } else {
            bytes += std::fs::copy(entry.path(), &target)
                .with_context(|| format!("cannot copy {}", entry.path().display()))?;
        }
    }
    Ok(bytes)
}

pub fn run(args: &DemoArgs) -> Result<()> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| temp.path().to_path_buf());
    let (live_dir, backup_dir, restored_dir, acks) = (
        base.join("live"),
        base.join("backup"),
        base.join("restored"),
        base.join("acknowledged-transfers"),
    );
    let (m, kvs) = open(&live_dir)?;
    let lock = BackupLock::new(kvs.clone(), Arc::new(SystemWallClock))?;
    let workload = bank::Workload {
        accounts: args.accounts,
        threads: args.threads,
        duration: args.duration,
        ack_file: Some(acks.clone()),
    };
    bank::init(&m, args.accounts)?;
    let stop = AtomicBool::new(false);
    println!(
        "Ortelius demo: bank workload ({} accounts, {} threads, {:?}) on {}",
        args.accounts,
        args.threads,
        args.duration,
        live_dir.display()
    );
    let started = Instant::now();
    let (committed, backup) = std::thread::scope(|s| -> Result<_> {
        let worker = s.spawn(|| bank::run(&m, &workload, &stop, false));
        std::thread::sleep(args.duration / 3);
        // The runbook's live backup steps, while the workload keeps writing.
        let backup_started = Instant::now();
        let backup = (|| -> Result<_> {
            lock.acquire(
                "ortelius demo",
                "live backup",
                None,
                Duration::from_secs(60),
            )?;
            let acked_before_b = bank::read_acks(&acks).unwrap_or_default();
            let backup_ts = m.fresh_timestamp()?;
            kvs.checkpoint(&backup_dir.join("store"))?;
            let fast_forward_ts = m.fresh_timestamp()?;
            lock.release()?;
            Ok((
                acked_before_b,
                backup_ts,
                fast_forward_ts,
                backup_started.elapsed(),
            ))
        })();
        if backup.is_err() {
            stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
        let committed = worker
            .join()
            .map_err(|_| anyhow::anyhow!("the workload thread panicked"))??;
        Ok((committed, backup?))
    })?;
    let elapsed = started.elapsed();
    let (acked_before_b, backup_ts, fast_forward_ts, backup_time) = backup;
    let live = bank::verify(&m.begin_read_only()?)?;
    drop((m, kvs, lock));

    // Restore from total loss: copy the backup into an empty directory, then the restore steps.
    let restore_started = Instant::now();
    let bytes = copy_dir(&backup_dir.join("store"), &restored_dir)?;
    let (r, rkvs) = open(&restored_dir)?;
    let cleaned = r.transactions_table().clean_from(backup_ts, |_| {})?;
    r.timestamps().fast_forward(fast_forward_ts)?;
    BackupLock::new(rkvs, Arc::new(SystemWallClock))?.release()?;
    let restore_time = restore_started.elapsed();
    let txn = r.begin_read_only()?;
    let restored = bank::verify(&txn)?;
    let present = bank::transfers_present(&txn, &acked_before_b)?;
    let late = bank::transfers_committed_from(&r, &txn, backup_ts)?;
    ensure!(
        present == acked_before_b.len(),
        "{} transfers acknowledged before B are missing",
        acked_before_b.len() - present
    );
    ensure!(
        late == 0,
        "{late} transfers committed at or after B are visible after the restore"
    );
    ensure!(
        txn.start_ts() > fast_forward_ts,
        "the restored timestamp service did not move past F"
    );

    println!("  workload: {committed} transfers in {:.1?} ({:.0}/s); live invariant holds ({} accounts, total {})",
        elapsed, committed as f64 / elapsed.as_secs_f64(), live.accounts, live.total);
    println!("  backup (live, mid-run): lock -> B = {backup_ts} -> checkpoint -> F = {fast_forward_ts} -> release in {backup_time:.1?}");
    println!("  restore from scratch: copied {:.1} MB, cleaned {} later commits, fast-forwarded, released the lock in {restore_time:.1?}",
        bytes as f64 / 1e6, cleaned.deleted);
    println!("  restored store: invariant holds ({} accounts, total {}); all {} transfers acknowledged before B present; none committed at or after B visible; new timestamps start above F",
        restored.accounts, restored.total, acked_before_b.len());
    Ok(())
}
