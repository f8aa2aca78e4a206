//! `ortelius demo`: needs no config. It creates an embedded store in a temporary directory and
//! runs the bank workload. Mid-run it takes a one-shot live backup (the runbook's steps), then
//! restores it into a second directory from scratch, verifies, and reports.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use ortelius_backends::{Backend, StoreConfig};
use ortelius_backup::DirectOwner;
use ortelius_txn::{TransactionConfig, TransactionManager};

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
    #[arg(long, default_value = "6s", value_parser = crate::args::parse_duration)]
    duration: Duration,
}

fn store(dir: &Path) -> StoreConfig {
    StoreConfig::Rocksdb {
        data_dir: dir.to_path_buf(),
    }
}

fn open(dir: &Path) -> Result<(TransactionManager, Backend)> {
    let backend = ortelius_backends::open(&store(dir))?;
    Ok((
        TransactionManager::embedded(backend.kvs.clone(), TransactionConfig::default())?,
        backend,
    ))
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
    let (m, backend) = open(&live_dir)?;
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
        // The one-shot backup (the runbook's live steps) while the workload keeps writing.
        let backup_started = Instant::now();
        let backup = (|| -> Result<_> {
            let acked_before = bank::read_acks(&acks).unwrap_or_default();
            let owner = DirectOwner::new(
                m.clone(),
                backend.snapshots.clone(),
                store(&live_dir).describe(),
            )?;
            let manifest = ortelius_backup::backup(&owner, &backup_dir)?;
            Ok((acked_before, manifest, backup_started.elapsed()))
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
    let (acked_before_b, manifest, backup_time) = backup;
    let (backup_ts, fast_forward_ts) = (manifest.backup_ts, manifest.fast_forward_ts);
    let live = bank::verify(&m.begin_read_only()?)?;
    drop((m, backend));

    // Restore from total loss into an empty directory.
    let restore_started = Instant::now();
    let target = ortelius_backends::restore_target(&store(&restored_dir))?;
    let report = ortelius_backup::restore(&backup_dir, &*target)?;
    let restore_time = restore_started.elapsed();
    let (r, _) = open(&restored_dir)?;
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
    println!("  one-shot backup (live, mid-run): lock -> B = {backup_ts} -> checkpoint -> F = {fast_forward_ts} -> release -> checksums -> manifest in {backup_time:.1?}");
    println!("  restore from scratch: verified {} files, loaded {:.1} MB, cleaned {} later commits, fast-forwarded, released the lock in {restore_time:.1?}",
        manifest.files.len(), report.bytes_loaded as f64 / 1e6, report.transactions_removed);
    println!("  restored store: invariant holds ({} accounts, total {}); all {} transfers acknowledged before B present; none committed at or after B visible; new timestamps start above F",
        restored.accounts, restored.total, acked_before_b.len());
    Ok(())
}
