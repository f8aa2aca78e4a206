//! Counters an operator scrapes: commits, aborts and conflicts by table, commit latency,
//! timestamps handed out, sweep progress. Updated with relaxed atomics on the commit path (a
//! table's counters are found under a read lock once they exist); rendered in the Prometheus
//! text format by [`Metrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ortelius_kvs::TableRef;

/// Upper bounds (seconds) of the commit latency histogram's buckets.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

#[derive(Default)]
struct TableCounters {
    commits: AtomicU64,
    aborts: AtomicU64,
    conflicts: AtomicU64,
}

/// One process's transaction metrics (shared by every clone of its `TransactionManager`).
#[derive(Default)]
pub struct Metrics {
    tables: RwLock<BTreeMap<String, Arc<TableCounters>>>,
    /// Commits of transactions that wrote nothing (read-only or empty).
    read_only_commits: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
    timestamps: StripedCounter,
    swept_cells: AtomicU64,
    swept_versions: AtomicU64,
    sweeps_paused: AtomicU64,
}

/// How a commit ended, for counting.
pub(crate) enum Outcome {
    Committed,
    /// A write-write or serializable conflict on this table.
    Conflict(TableRef),
    Aborted,
}

impl Outcome {
    pub(crate) fn of(result: &crate::TxnResult<()>) -> Self {
        match result {
            Ok(()) => Self::Committed,
            Err(
                crate::TxnError::WriteWriteConflict { table, .. }
                | crate::TxnError::SerializableConflict { table, .. },
            ) => Self::Conflict(table.clone()),
            Err(_) => Self::Aborted,
        }
    }
}

/// Stripes of a counter that every transaction bumps (one timestamp each, even read-only).
const STRIPES: usize = 16;

/// One stripe on a cache line of its own.
#[derive(Default)]
#[repr(align(128))]
struct Stripe(AtomicU64);

/// A counter whose threads add to different cache lines (a thread's stripe is fixed when it
/// first counts), so counting does not move one line between cores on every call. Reading sums
/// the stripes.
#[derive(Default)]
struct StripedCounter([Stripe; STRIPES]);

impl StripedCounter {
    fn add(&self, n: u64) {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
        }
        let stripe = STRIPE.with(|s| *s);
        add(&self.0[stripe].0, n);
    }

    fn sum(&self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |sum, s| sum.wrapping_add(s.0.load(Ordering::Relaxed)))
    }
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Metrics {
    fn table(&self, table: &TableRef) -> Option<Arc<TableCounters>> {
        let name = table.to_string();
        if let Some(c) = self.tables.read().ok()?.get(&name) {
            return Some(c.clone());
        }
        let mut tables = self.tables.write().ok()?;
        Some(tables.entry(name).or_default().clone())
    }

    /// Counts a commit attempt of a transaction that wrote `tables`, which took `elapsed`.
    pub(crate) fn commit<'a>(
        &self,
        tables: impl Iterator<Item = &'a TableRef>,
        outcome: &Outcome,
        elapsed: Duration,
    ) {
        let mut wrote = false;
        for table in tables {
            wrote = true;
            let Some(c) = self.table(table) else { continue };
            match outcome {
                Outcome::Committed => add(&c.commits, 1),
                Outcome::Conflict(t) if t == table => add(&c.conflicts, 1),
                Outcome::Conflict(_) | Outcome::Aborted => add(&c.aborts, 1),
            }
        }
        if !wrote {
            if let Outcome::Committed = outcome {
                add(&self.read_only_commits, 1);
            }
            return;
        }
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                add(bucket, 1);
            }
        }
        add(&self.latency_count, 1);
        add(
            &self.latency_sum_micros,
            u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        );
    }

    pub(crate) fn timestamps(&self, n: u64) {
        self.timestamps.add(n);
    }

    pub(crate) fn sweep(&self, cells: u64, versions: u64, paused: bool) {
        add(&self.swept_cells, cells);
        add(&self.swept_versions, versions);
        if paused {
            add(&self.sweeps_paused, 1);
        }
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let tables: Vec<(String, Arc<TableCounters>)> = self
            .tables
            .read()
            .map(|t| t.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        for (name, help, pick) in [
            (
                "ortelius_commits_total",
                "Committed write transactions, by table written.",
                (|c: &TableCounters| &c.commits) as fn(&TableCounters) -> &AtomicU64,
            ),
            (
                "ortelius_aborts_total",
                "Write transactions that failed to commit for a reason other than a conflict on the table.",
                |c| &c.aborts,
            ),
            (
                "ortelius_conflicts_total",
                "Commits refused by a write-write or serializable conflict on the table.",
                |c| &c.conflicts,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (table, c) in &tables {
                let _ = writeln!(out, "{name}{{table=\"{table}\"}} {}", get(pick(c)));
            }
        }
        let _ = writeln!(
            out,
            "# HELP ortelius_read_only_commits_total Transactions that committed without writing.\n# TYPE ortelius_read_only_commits_total counter\nortelius_read_only_commits_total {}",
            get(&self.read_only_commits)
        );
        let _ = writeln!(
            out,
            "# HELP ortelius_commit_seconds Commit latency of write transactions.\n# TYPE ortelius_commit_seconds histogram"
        );
        for (bucket, bound) in self.latency_buckets.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(
                out,
                "ortelius_commit_seconds_bucket{{le=\"{bound}\"}} {}",
                get(bucket)
            );
        }
        let count = get(&self.latency_count);
        let _ = writeln!(
            out,
            "ortelius_commit_seconds_bucket{{le=\"+Inf\"}} {count}\nortelius_commit_seconds_sum {}\nortelius_commit_seconds_count {count}",
            get(&self.latency_sum_micros) as f64 / 1e6
        );
        for (name, help, value) in [
            (
                "ortelius_timestamps_total",
                "Timestamps this process took from its timestamp service.",
                self.timestamps.sum(),
            ),
            (
                "ortelius_sweep_cells_examined_total",
                "Cells sweep examined.",
                get(&self.swept_cells),
            ),
            (
                "ortelius_sweep_versions_deleted_total",
                "Old versions sweep deleted.",
                get(&self.swept_versions),
            ),
            (
                "ortelius_sweeps_paused_total",
                "Sweeps of a table that the backup lock paused.",
                get(&self.sweeps_paused),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn counts_render_in_the_prometheus_text_format() {
        let m = Metrics::default();
        let t = TableRef::new("bank", "accounts").unwrap();
        m.commit(
            [&t].into_iter(),
            &Outcome::Committed,
            Duration::from_millis(3),
        );
        m.commit(
            [&t].into_iter(),
            &Outcome::Conflict(t.clone()),
            Duration::ZERO,
        );
        m.commit(std::iter::empty(), &Outcome::Committed, Duration::ZERO);
        m.timestamps(2);
        let text = m.render();
        for line in [
            "ortelius_commits_total{table=\"bank.accounts\"} 1",
            "ortelius_conflicts_total{table=\"bank.accounts\"} 1",
            "ortelius_aborts_total{table=\"bank.accounts\"} 0",
            "ortelius_read_only_commits_total 1",
            "ortelius_commit_seconds_bucket{le=\"0.002\"} 1",
            "ortelius_commit_seconds_bucket{le=\"0.005\"} 2",
            "ortelius_commit_seconds_count 2",
            "ortelius_timestamps_total 2",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn counts_from_many_threads_all_reach_the_total() {
        let m = Metrics::default();
        std::thread::scope(|s| {
            for _ in 0..20 {
                s.spawn(|| (0..1000).for_each(|_| m.timestamps(1)));
            }
        });
        assert!(m.render().contains("ortelius_timestamps_total 20000\n"));
    }
}
