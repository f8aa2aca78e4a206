//! `migrate --to other.yml [--at TS]`: copies every application table, as of one timestamp,
//! from the configured store (through its owner, live or not) into another store, through
//! transactions on the target. Each batch of rows commits together with the progress it makes,
//! so a re-run after a crash continues after the last committed batch, at the same timestamp.
//! Ends by comparing both sides row by row.

use anyhow::{bail, Context, Result};
use ortelius_backup::{ScanAnswer, ScanRequest, StoreOwner};
use ortelius_kvs::{Cell, RangeRequest, RowRange, TableRef, Timestamp};
use ortelius_txn::{TableMetadata, TransactionManager, TxnResult};
use serde::Serialize;

/// Where the target keeps the migration's timestamp (row `migration`) and its progress (one row
/// per table, named `namespace.name`, so never `migration`).
const PROGRESS_NAMESPACE: &str = "ortelius_migrate";
const PROGRESS_NAME: &str = "progress";

fn progress_table() -> Result<TableRef> {
    Ok(TableRef::new(PROGRESS_NAMESPACE, PROGRESS_NAME)?)
}

fn progress_cell(table: &str, what: &str) -> TxnResult<Cell> {
    Ok(Cell::new(table, what)?)
}

/// What one table's migration did.
#[derive(Debug, Serialize)]
pub struct TableReport {
    pub table: String,
    /// Rows copied by this run (less than `rows` when an earlier run had copied some).
    pub rows_copied: u64,
    /// Rows compared equal on both sides at the end.
    pub rows: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// The timestamp the source was read at.
    pub at: Timestamp,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    pub tables: Vec<TableReport>,
}

/// Settings of a migration.
pub struct Migration<'a> {
    pub source: &'a dyn StoreOwner,
    pub target: &'a TransactionManager,
    /// The target store, for messages.
    pub target_name: String,
    pub at: Option<Timestamp>,
    pub batch_rows: usize,
}

pub fn run(job: &Migration<'_>) -> Result<Report> {
    let (m, progress) = (job.target, progress_table()?);
    m.create_table(&progress, TableMetadata::default())?;
    let recorded_at =
        m.run_read_only(|txn| txn.get_one(&progress, &progress_cell("migration", "at")?))?;
    let resumed = recorded_at.is_some();
    let at = match recorded_at {
        Some(bytes) => {
            let recorded = i64::from_be_bytes(
                bytes
                    .as_slice()
                    .try_into()
                    .context("the target's migration timestamp is malformed")?,
            );
            if job.at.is_some_and(|at| at != recorded) {
                bail!(
                    "{} holds an interrupted migration as of timestamp {recorded}; run migrate again without --at (or with --at {recorded}) to finish it",
                    job.target_name
                );
            }
            recorded
        }
        None => {
            let foreign: Vec<TableRef> = m
                .kvs()
                .list_tables()?
                .into_iter()
                .filter(|t| !t.namespace().is_empty() && *t != progress)
                .collect();
            if let Some(t) = foreign.first() {
                bail!(
                    "{} already holds tables ({t} and {} more); migrate into an empty store",
                    job.target_name,
                    foreign.len() - 1
                );
            }
            let at = match job.at {
                Some(at) => at,
                None => job.source.fresh_timestamp()?,
            };
            m.run(|txn| {
                txn.put(
                    &progress,
                    &progress_cell("migration", "at")?,
                    at.to_be_bytes(),
                )
            })?;
            at
        }
    };
    if resumed {
        eprintln!("resuming the migration as of timestamp {at}");
    }
    let mut tables = job.source.tables()?;
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    let mut reports = Vec::with_capacity(tables.len());
    for info in &tables {
        let table = TableRef::parse(&info.name)?;
        m.create_table(&table, info.metadata)?;
        let copied = copy_table(job, &table, at)?;
        let rows = compare_table(job, &table, at)?;
        eprintln!("{}: {rows} rows, identical on both sides", info.name);
        reports.push(TableReport {
            table: info.name.clone(),
            rows_copied: copied,
            rows,
        });
    }
    Ok(Report {
        at,
        resumed,
        tables: reports,
    })
}

/// The row after `row` in key order.
fn after(row: &[u8]) -> Vec<u8> {
    let mut next = row.to_vec();
    next.push(0);
    next
}

/// The source's rows of table `name` from `start` on, at most one batch, as of `at`.
fn page(job: &Migration<'_>, name: &str, start: &[u8], at: Timestamp) -> Result<ScanAnswer> {
    Ok(job.source.scan(&ScanRequest {
        table: name.to_owned(),
        start: start.to_vec(),
        end: Vec::new(),
        reverse: false,
        limit: job.batch_rows,
        at: Some(at),
    })?)
}

/// Copies `table` from where the progress says, one batch per transaction.
fn copy_table(job: &Migration<'_>, table: &TableRef, at: Timestamp) -> Result<u64> {
    let (m, progress, name) = (job.target, progress_table()?, table.to_string());
    let (done, next) = m.run_read_only(|txn| {
        Ok((
            txn.get_one(&progress, &progress_cell(&name, "done")?)?,
            txn.get_one(&progress, &progress_cell(&name, "next")?)?,
        ))
    })?;
    if done.is_some() {
        return Ok(0);
    }
    let mut start = next.unwrap_or_default();
    let mut copied: u64 = 0;
    loop {
        let page = page(job, &name, &start, at)?;
        let next = page.rows.last().map(|(row, _)| after(row));
        m.run(|txn| {
            for (row, columns) in &page.rows {
                for (column, value) in columns {
                    txn.put(
                        table,
                        &Cell::new(row.as_slice(), column.as_slice())?,
                        value.clone(),
                    )?;
                }
            }
            match (&next, page.more) {
                (Some(next), true) => {
                    txn.put(&progress, &progress_cell(&name, "next")?, next.clone())
                }
                _ => txn.put(&progress, &progress_cell(&name, "done")?, b"1".to_vec()),
            }
        })
        .with_context(|| format!("cannot write a batch of {name} into {}", job.target_name))?;
        copied += page.rows.len() as u64;
        eprintln!("{name}: {copied} rows copied");
        match next {
            Some(next) if page.more => start = next,
            _ => return Ok(copied),
        }
    }
}

/// Compares `table` on both sides: the source at `at`, the target at a fresh timestamp.
fn compare_table(job: &Migration<'_>, table: &TableRef, at: Timestamp) -> Result<u64> {
    let name = table.to_string();
    let txn = job.target.begin_read_only()?;
    let mut target = txn.get_range(table, &RangeRequest::rows(RowRange::all()))?;
    let mut start = Vec::new();
    let mut rows: u64 = 0;
    loop {
        let page = page(job, &name, &start, at)?;
        for (row, columns) in &page.rows {
            let theirs = target.next().transpose()?;
            let same = theirs.as_ref().is_some_and(|t| {
                t.row == *row && t.columns.iter().eq(columns.iter().map(|(c, v)| (c, v)))
            });
            if !same {
                bail!(
                    "{name} differs after the migration at row {:?} (target has {:?}); run migrate again into an empty store",
                    String::from_utf8_lossy(row),
                    theirs.map(|t| String::from_utf8_lossy(&t.row).into_owned())
                );
            }
            rows += 1;
        }
        match page.rows.last() {
            Some((row, _)) if page.more => start = after(row),
            _ => break,
        }
    }
    if let Some(extra) = target.next().transpose()? {
        bail!(
            "{name} has a row in the target that the source lacks: {:?}",
            String::from_utf8_lossy(&extra.row)
        );
    }
    Ok(rows)
}
