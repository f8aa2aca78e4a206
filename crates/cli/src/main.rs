//! The `ortelius` command-line tool.

mod args;
mod bank;
mod config;
mod demo;
mod progress;
mod runbook;
mod store;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{ArgGroup, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ortelius",
    version,
    about = "Transactions and live backups over key-value stores"
)]
struct Cli {
    /// The YAML config file (AtlasDB's shape).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// JSON pointer to the atlas block in the config (default /atlasdb, then /atlas).
    #[arg(long, global = true)]
    config_root: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates an embedded RocksDB store in a temporary directory, writes, reads and reports.
    Demo(demo::DemoArgs),
    /// Timestamp service operations.
    #[command(subcommand)]
    Timestamp(TimestampCommand),
    /// Runs the management API over the configured store (and a background sweeper).
    Serve,
    /// The shared timestamp and lock server.
    #[command(subcommand)]
    Timelock(TimelockCommand),
    /// Takes a live, consistent backup into a new directory (`backup verify` checks one).
    Backup(BackupArgs),
    /// Restores a backup into the configured store's directory (offline).
    Restore {
        #[arg(long)]
        dir: PathBuf,
        /// Replace a non-empty target directory.
        #[arg(long)]
        force: bool,
        /// Restore the state as of this earlier timestamp (within the backup's complete range).
        #[arg(long)]
        as_of: Option<i64>,
        /// Read at most this much per second while verifying and copying (e.g. 50M, 1G).
        #[arg(long, value_parser = args::parse_rate)]
        rate_limit: Option<u64>,
    },
    /// Runs a workload against the configured store (serving the management API meanwhile).
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// Checks a workload's invariant.
    #[command(subcommand)]
    Verify(VerifyCommand),
    /// Store operations.
    #[command(subcommand)]
    Kvs(KvsCommand),
    /// Sweeps old versions of one table or all tables.
    #[command(group(ArgGroup::new("which").required(true).args(["table", "all"])))]
    Sweep {
        /// A table as namespace.name.
        #[arg(long)]
        table: Option<String>,
        #[arg(long)]
        all: bool,
        /// Report what would be deleted without deleting.
        #[arg(long)]
        dry_run: bool,
    },
    /// Acquire, release or inspect the backup lock.
    #[command(group(ArgGroup::new("action").required(true).args(["acquire", "release", "status"])))]
    BackupLock {
        #[arg(long)]
        acquire: bool,
        #[arg(long)]
        release: bool,
        #[arg(long)]
        status: bool,
        /// With --release: succeed even if the lock is not held.
        #[arg(long)]
        force: bool,
        /// Why the lock is taken (shown in --status).
        #[arg(long, requires = "acquire", default_value = "backup")]
        reason: String,
        /// Let deletions resume after this long even if nobody releases (e.g. 2h).
        #[arg(long, value_parser = args::parse_duration)]
        lease: Option<Duration>,
    },
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BackupArgs {
    #[command(subcommand)]
    action: Option<BackupAction>,
    /// The backup directory (new or empty).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Read at most this much per second while checksumming (e.g. 50M, 1G).
    #[arg(long, value_parser = args::parse_rate)]
    rate_limit: Option<u64>,
    /// Store the files zstd-compressed.
    #[arg(long)]
    compress: bool,
}

#[derive(Subcommand)]
enum BackupAction {
    /// Checks that a backup is complete and every file matches its checksum.
    Verify {
        #[arg(long)]
        dir: PathBuf,
        /// Also open the backup read-only and check the store and its transactions table.
        #[arg(long)]
        deep: bool,
    },
}

#[derive(Subcommand)]
enum WorkloadCommand {
    /// Concurrent transfers between accounts, with live throughput on stderr.
    Bank {
        #[arg(long, default_value_t = 100)]
        accounts: u64,
        #[arg(long, default_value_t = 4)]
        threads: u64,
        /// How long to run (e.g. 30s, 5m).
        #[arg(long, default_value = "30s", value_parser = args::parse_duration)]
        duration: Duration,
        /// Append each acknowledged transfer's id to this file (synced) after its commit.
        #[arg(long)]
        ack_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Money conserved across all accounts, at a fresh timestamp or at --at.
    Bank {
        #[arg(long)]
        at: Option<i64>,
    },
}

#[derive(Subcommand)]
enum KvsCommand {
    /// Writes a raw snapshot of the store into a new directory, live if a process owns the
    /// store (RocksDB: a checkpoint, which is what to use instead of tar on live files).
    #[command(alias = "checkpoint")]
    Snapshot {
        #[arg(long)]
        dir: PathBuf,
        /// Cassandra: snapshot only this node (1-based, as listed in keyValueService.nodes),
        /// into <dir>/node<N>; run it for each node, as the seed runbook does.
        #[arg(long)]
        node: Option<usize>,
    },
    /// Loads a raw snapshot into the configured (empty) store, offline: the runbook's "restore
    /// your underlying store" step. Follow it with clean-transactions, fast-forward and
    /// backup-lock --release (or use `ortelius restore`, which does everything).
    Load {
        #[arg(long)]
        dir: PathBuf,
        /// Replace a store that holds data.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
enum TimelockCommand {
    /// Serves timestamps and locks to every process sharing a store, until killed.
    Serve(TimelockServeArgs),
}

#[derive(clap::Args)]
pub struct TimelockServeArgs {
    /// Where clients connect.
    #[arg(long, default_value = "127.0.0.1:7900")]
    pub listen: String,
    /// The address clients are told to use for this server (default: the listening address).
    #[arg(long)]
    pub advertise: Option<String>,
    /// A single server keeps its durable state here.
    #[arg(long, default_value = "timelock-data")]
    pub data_dir: PathBuf,
    /// A file holding the token clients must present.
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A file holding the admin token (needed to fast-forward during restores).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// etcd endpoints for a highly available cluster of servers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pub etcd: Vec<String>,
    /// The key prefix of this timelock cluster in etcd.
    #[arg(long, default_value = "/ortelius/timelock")]
    pub etcd_prefix: String,
    /// How long a dead leader keeps its place before another server takes over (e.g. 5s).
    #[arg(long, default_value = "5s", value_parser = args::parse_duration)]
    pub leader_lease: Duration,
}

#[derive(Subcommand)]
enum TimestampCommand {
    /// Prints a fresh timestamp (or the immutable one); with --file also writes it there.
    Fetch {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, short)]
        immutable: bool,
    },
    /// Makes every later timestamp greater than the given one (restore step; offline only).
    #[command(group(ArgGroup::new("source").required(true).args(["file", "timestamp"])))]
    FastForward {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, allow_negative_numbers = true)]
        timestamp: Option<i64>,
    },
    /// Deletes every transactions-table entry committed at or after the given timestamp,
    /// scanning the whole table (restore step; offline only).
    #[command(group(ArgGroup::new("source").required(true).args(["file", "timestamp"])))]
    CleanTransactions {
        #[arg(long)]
        file: Option<PathBuf>,
        #[arg(long, allow_negative_numbers = true)]
        timestamp: Option<i64>,
    },
}

fn load_config(cli: &Cli) -> Result<config::AtlasConfig> {
    let file = cli
        .config
        .as_ref()
        .context("this command needs --config <file> naming the config file")?;
    Ok(config::load(file, cli.config_root.as_deref())?)
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Timestamp(TimestampCommand::Fetch { file, immutable }) => {
            runbook::fetch(&load_config(cli)?, file.as_deref(), *immutable)
        }
        Command::Timestamp(TimestampCommand::FastForward { file, timestamp }) => {
            let target = runbook::timestamp_arg(file.as_ref(), *timestamp)?;
            runbook::fast_forward(&load_config(cli)?, target)
        }
        Command::Timestamp(TimestampCommand::CleanTransactions { file, timestamp }) => {
            let backup_ts = runbook::timestamp_arg(file.as_ref(), *timestamp)?;
            runbook::clean_transactions(&load_config(cli)?, backup_ts)
        }
        Command::Serve => runbook::serve(&load_config(cli)?),
        Command::Timelock(TimelockCommand::Serve(args)) => runbook::timelock_serve(args),
        Command::Backup(BackupArgs {
            action: Some(BackupAction::Verify { dir, deep }),
            ..
        }) => runbook::verify_backup(dir, *deep),
        Command::Backup(BackupArgs {
            action: None,
            dir,
            rate_limit,
            compress,
        }) => {
            let dir = dir.as_ref().context("backup needs --dir <new directory>")?;
            runbook::backup(&load_config(cli)?, dir, *rate_limit, *compress)
        }
        Command::Restore {
            dir,
            force,
            as_of,
            rate_limit,
        } => runbook::restore(&load_config(cli)?, dir, *force, *as_of, *rate_limit),
        Command::Workload(WorkloadCommand::Bank {
            accounts,
            threads,
            duration,
            ack_file,
        }) => {
            let workload = bank::Workload {
                accounts: *accounts,
                threads: *threads,
                duration: *duration,
                ack_file: ack_file.clone(),
            };
            runbook::workload_bank(&load_config(cli)?, &workload)
        }
        Command::Verify(VerifyCommand::Bank { at }) => {
            runbook::verify_bank(&load_config(cli)?, *at)
        }
        Command::Kvs(KvsCommand::Snapshot { dir, node }) => {
            runbook::snapshot(&load_config(cli)?, dir, *node)
        }
        Command::Kvs(KvsCommand::Load { dir, force }) => {
            runbook::load(&load_config(cli)?, dir, *force)
        }
        Command::Sweep { table, dry_run, .. } => {
            runbook::sweep(&load_config(cli)?, table.as_deref(), *dry_run)
        }
        Command::BackupLock {
            acquire,
            release,
            reason,
            lease,
            force,
            ..
        } => {
            if *force && !*release {
                anyhow::bail!("--force only goes with --release");
            }
            if lease.is_some() && !*acquire {
                anyhow::bail!("--lease only goes with --acquire");
            }
            let action = if *acquire {
                runbook::LockAction::Acquire {
                    reason: reason.clone(),
                    lease: *lease,
                }
            } else if *release {
                runbook::LockAction::Release { force: *force }
            } else {
                runbook::LockAction::Status
            };
            runbook::backup_lock(&load_config(cli)?, action)
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
