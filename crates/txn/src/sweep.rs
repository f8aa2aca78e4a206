//! Sweep: removes versions no reader can need.
//!
//! Driver: a background scan over `get_candidate_cells_for_sweeping`, page by page, with the
//! next page's start persisted in `_sweep_progress` after every page so a restart resumes.
//! (AtlasDB's targeted sweep queues writes at commit instead; a scan needs no extra write on the
//! commit path, which our write benchmarks are sensitive to, and sweeps data written before
//! sweep existed. See the issue note.)
//!
//! The sweep timestamp is `min(immutable, unreadable)` for every strategy: no running write
//! transaction started below it, and no reader that began less than `read_timeout` ago — such
//! as the runbook's backup timestamp B, fetched before the backup lock — reads below it.
//!
//! Per cell, among versions below the sweep timestamp: writers still undecided are rolled back
//! (they cannot be running: their start is below the immutable timestamp); aborted versions are
//! deleted; committed ones are deleted except the newest one committed before the sweep
//! timestamp (the *keeper*) and any committed at or after it. Conservative tables get a sentinel
//! (ts -1) before committed versions are deleted, so a too-old reader fails instead of reading
//! nothing; thorough tables also delete a keeper that is a tombstone, and sentinels. Every
//! deletion batch runs under a backup-lock permit: while the lock is held, sweep stops.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ortelius_kvs::{
    CandidateCellsRequest, Cell, CheckAndSetRequest, KvsError, TableRef, Timestamp, ATOMIC_TS,
    SWEEP_SENTINEL_TS,
};

use crate::backup_lock::{BackupLock, BackupLockError};
use crate::error::{TxnError, TxnResult};
use crate::manager::TransactionManager;
use crate::metadata::SweepStrategy;
use crate::txn_table::TxnStatus;

/// The system table of sweep progress (next start cell per table).
pub const SWEEP_PROGRESS_TABLE: &str = "_sweep_progress";

/// Sweep settings.
#[derive(Clone, Debug)]
pub struct SweepConfig {
    /// Cells per page (and per deletion batch).
    pub batch_size: usize,
    /// Lease of each deletion batch's backup-lock registration.
    pub deletion_lease: Duration,
    /// Pause between pages (pacing, for the background sweeper).
    pub pause_between_pages: Duration,
    /// Stop a table after this many pages (the rest is left for the next run); `None` = all.
    pub max_pages_per_run: Option<usize>,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            batch_size: 1000,
            deletion_lease: Duration::from_secs(60),
            pause_between_pages: Duration::ZERO,
            max_pages_per_run: None,
        }
    }
}

/// What one sweep of a table did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub table: Option<TableRef>,
    pub sweep_ts: Timestamp,
    pub cells_examined: u64,
    pub versions_deleted: u64,
    pub sentinels_added: u64,
    pub writers_rolled_back: u64,
    /// Stopped because the backup lock is held; progress is kept.
    pub paused_by_backup_lock: bool,
    /// Reached the end of the table (progress reset for the next pass).
    pub complete: bool,
    pub dry_run: bool,
}

/// Sweeps tables of one transaction manager's store.
#[derive(Clone)]
pub struct Sweeper {
    manager: TransactionManager,
    backup_lock: BackupLock,
    progress: TableRef,
    config: SweepConfig,
}

fn encode_cell(cell: &Cell) -> Vec<u8> {
    let mut out = (cell.row().len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(cell.row());
    out.extend_from_slice(cell.column());
    out
}

fn decode_cell(bytes: &[u8]) -> Option<Cell> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    Cell::new(
        bytes.get(4..4 + len)?.to_vec(),
        bytes.get(4 + len..)?.to_vec(),
    )
    .ok()
}

impl Sweeper {
    pub fn new(
        manager: TransactionManager,
        backup_lock: BackupLock,
        config: SweepConfig,
    ) -> TxnResult<Self> {
        let progress = TableRef::system(SWEEP_PROGRESS_TABLE)?;
        if !manager.kvs().list_tables()?.contains(&progress) {
            manager.kvs().create_table(&progress, b"")?;
        }
        Ok(Self {
            manager,
            backup_lock,
            progress,
            config,
        })
    }

    /// `min(immutable, unreadable)`.
    pub fn sweep_timestamp(&self) -> TxnResult<Timestamp> {
        Ok(self
            .manager
            .immutable_timestamp()?
            .min(self.manager.unreadable_timestamp()?))
    }

    /// Sweeps one table at the current sweep timestamp.
    pub fn sweep_table(&self, table: &TableRef, dry_run: bool) -> TxnResult<SweepReport> {
        let sweep_ts = self.sweep_timestamp()?;
        let report = self.sweep_table_at(table, sweep_ts, dry_run)?;
        // The background sweeper passes every table each minute: only passes that did something
        // (or were paused) are worth an info line.
        if report.versions_deleted > 0 || report.paused_by_backup_lock {
            tracing::info!(
                %table,
                sweep_ts,
                cells_examined = report.cells_examined,
                versions_deleted = report.versions_deleted,
                paused_by_backup_lock = report.paused_by_backup_lock,
                dry_run,
                "swept"
            );
        } else {
            tracing::debug!(%table, sweep_ts, cells_examined = report.cells_examined, "swept; nothing to delete");
        }
        if !dry_run {
            self.manager.metrics().sweep(
                report.cells_examined,
                report.versions_deleted,
                report.paused_by_backup_lock,
            );
        }
        Ok(report)
    }

    /// Sweeps every transactional table whose strategy is not `Nothing`.
    pub fn sweep_all(&self, dry_run: bool) -> TxnResult<Vec<SweepReport>> {
        let mut reports = Vec::new();
        for table in self.manager.kvs().list_tables()? {
            if table.namespace().is_empty() {
                continue; // system tables are never swept
            }
            let report = self.sweep_table(&table, dry_run)?;
            let paused = report.paused_by_backup_lock;
            reports.push(report);
            if paused {
                break;
            }
        }
        Ok(reports)
    }

    /// Where the next sweep of `table` starts (`None`: at the beginning).
    pub fn progress(&self, table: &TableRef) -> TxnResult<Option<Cell>> {
        Ok(self.read_progress(table)?.1)
    }

    fn progress_cell(table: &TableRef) -> TxnResult<Cell> {
        Ok(Cell::new(table.qualified_name(), "next")?)
    }

    fn read_progress(&self, table: &TableRef) -> TxnResult<(Option<Vec<u8>>, Option<Cell>)> {
        let cell = Self::progress_cell(table)?;
        let raw = self
            .manager
            .kvs()
            .get(&self.progress, &[(cell.clone(), ATOMIC_TS + 1)])?
            .remove(&cell)
            .map(|v| v.contents);
        let next = raw
            .as_deref()
            .filter(|b| !b.is_empty())
            .and_then(decode_cell);
        Ok((raw, next))
    }

    fn save_progress(&self, table: &TableRef, next: Option<&Cell>) -> TxnResult<()> {
        let cell = Self::progress_cell(table)?;
        let value = next.map(encode_cell).unwrap_or_default();
        loop {
            let (expected, _) = self.read_progress(table)?;
            let request = CheckAndSetRequest {
                cell: cell.clone(),
                expected,
                new_value: value.clone(),
            };
            match self.manager.kvs().check_and_set(&self.progress, &request) {
                Ok(()) => return Ok(()),
                Err(KvsError::CheckAndSetFailed { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Sweeps one table below an explicit sweep timestamp. The caller guarantees no reader or
    /// running writer needs a version below `sweep_ts` (use [`sweep_table`](Self::sweep_table)
    /// unless you know why not).
    pub fn sweep_table_at(
        &self,
        table: &TableRef,
        sweep_ts: Timestamp,
        dry_run: bool,
    ) -> TxnResult<SweepReport> {
        let mut report = SweepReport {
            table: Some(table.clone()),
            sweep_ts,
            dry_run,
            ..SweepReport::default()
        };
        if table.namespace().is_empty() {
            return Err(TxnError::SystemTable {
                table: table.clone(),
            });
        }
        let strategy = self.manager.table_metadata(table)?.sweep_strategy;
        if strategy == SweepStrategy::Nothing {
            report.complete = true;
            return Ok(report);
        }
        let thorough = strategy == SweepStrategy::Thorough;
        let mut start = if dry_run { None } else { self.progress(table)? };
        let mut pages = 0usize;
        loop {
            let request = CandidateCellsRequest {
                start: start.clone(),
                max_ts_exclusive: sweep_ts,
                batch_size: self.config.batch_size.max(1),
                include_sentinels: thorough,
            };
            let page = self
                .manager
                .kvs()
                .get_candidate_cells_for_sweeping(table, &request)?;
            report.cells_examined += page.cells.len() as u64;
            let plan = self.plan(table, &page.cells, sweep_ts, thorough, dry_run, &mut report)?;
            if !dry_run && !plan.deletes.is_empty() {
                let permit = match self.backup_lock.begin_deletion(self.config.deletion_lease) {
                    Ok(permit) => permit,
                    Err(BackupLockError::DeletionsPaused(_)) => {
                        report.paused_by_backup_lock = true;
                        return Ok(report);
                    }
                    Err(e) => return Err(TxnError::application(e)),
                };
                if !plan.sentinels.is_empty() {
                    self.manager
                        .kvs()
                        .add_garbage_collection_sentinel_values(table, &plan.sentinels)?;
                }
                self.manager.kvs().delete(table, &plan.deletes)?;
                permit.finish().map_err(TxnError::application)?;
            }
            report.versions_deleted += plan.deletes.len() as u64;
            report.sentinels_added += plan.sentinels.len() as u64;
            start = page.next_start;
            if !dry_run {
                self.save_progress(table, start.as_ref())?;
            }
            pages += 1;
            if start.is_none() {
                report.complete = true;
                return Ok(report);
            }
            if self
                .config
                .max_pages_per_run
                .is_some_and(|max| pages >= max)
            {
                return Ok(report);
            }
            if !self.config.pause_between_pages.is_zero() {
                std::thread::sleep(self.config.pause_between_pages);
            }
        }
    }

    /// Decides, for one page of candidates, which versions go and which cells need sentinels.
    fn plan(
        &self,
        table: &TableRef,
        cells: &[ortelius_kvs::CandidateCell],
        sweep_ts: Timestamp,
        thorough: bool,
        dry_run: bool,
        report: &mut SweepReport,
    ) -> TxnResult<Plan> {
        let txns = self.manager.transactions_table();
        let mut writers: Vec<Timestamp> = cells
            .iter()
            .flat_map(|c| c.timestamps.iter().copied())
            .filter(|ts| *ts != SWEEP_SENTINEL_TS)
            .collect();
        writers.sort_unstable();
        writers.dedup();
        let mut statuses = txns.load(&writers)?;
        let undecided: Vec<Timestamp> = writers
            .iter()
            .copied()
            .filter(|ts| !statuses.contains_key(ts))
            .collect();
        for ts in &undecided {
            // Below the immutable timestamp, so not running: decide it, aborted.
            if !dry_run {
                match txns.put_unless_exists(*ts, TxnStatus::Aborted) {
                    Ok(()) | Err(KvsError::KeyAlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
                report.writers_rolled_back += 1;
                statuses.extend(txns.load_uncached(&[*ts])?);
            } else {
                statuses.insert(*ts, TxnStatus::Aborted);
            }
        }
        let mut plan = Plan::default();
        for candidate in cells {
            let committed_before = |ts: &Timestamp| matches!(statuses.get(ts), Some(TxnStatus::Committed(c)) if *c < sweep_ts);
            let keeper = candidate
                .timestamps
                .iter()
                .rev()
                .copied()
                .find(|ts| committed_before(ts));
            let mut deletes: Vec<Timestamp> = Vec::new();
            let mut deletes_committed = false;
            for &ts in &candidate.timestamps {
                if ts == SWEEP_SENTINEL_TS {
                    continue;
                }
                match statuses.get(&ts) {
                    Some(TxnStatus::Aborted) | None => deletes.push(ts),
                    Some(TxnStatus::Committed(_)) if keeper.is_some_and(|k| ts < k) => {
                        deletes.push(ts);
                        deletes_committed = true;
                    }
                    Some(TxnStatus::Committed(_)) => {}
                }
            }
            if thorough {
                if let Some(k) = keeper {
                    let value = self
                        .manager
                        .kvs()
                        .get(table, &[(candidate.cell.clone(), k + 1)])?;
                    if value.get(&candidate.cell).is_some_and(|v| v.is_empty()) {
                        deletes.push(k);
                    }
                }
                if candidate.timestamps.first() == Some(&SWEEP_SENTINEL_TS) {
                    deletes.insert(0, SWEEP_SENTINEL_TS);
                }
            } else if deletes_committed {
                plan.sentinels.push(candidate.cell.clone());
            }
            deletes.sort_unstable();
            plan.deletes
                .extend(deletes.into_iter().map(|ts| (candidate.cell.clone(), ts)));
        }
        Ok(plan)
    }

    /// Runs `sweep_all` every `interval` on a background thread until the handle is dropped.
    pub fn spawn_background(&self, interval: Duration) -> BackgroundSweeper {
        let stop = Arc::new(AtomicBool::new(false));
        let sweeper = self.clone();
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("ortelius-sweeper".to_owned())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    // Errors are retried on the next round; a paused sweep resumes after release.
                    let _ = sweeper.sweep_all(false);
                    let mut slept = Duration::ZERO;
                    while slept < interval && !flag.load(Ordering::SeqCst) {
                        let step = Duration::from_millis(10).min(interval);
                        std::thread::sleep(step);
                        slept += step;
                    }
                }
            })
            .ok();
        BackgroundSweeper { stop, handle }
    }
}

#[derive(Default)]
struct Plan {
    deletes: Vec<(Cell, Timestamp)>,
    sentinels: Vec<Cell>,
}

/// A running background sweeper; dropping it stops it (after the current page).
pub struct BackgroundSweeper {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for BackgroundSweeper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
