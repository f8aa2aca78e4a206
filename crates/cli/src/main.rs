//! The `ortelius` command-line tool.

mod args;
mod bank;
mod config;
mod console;
mod demo;
mod migrate;
mod output;
mod progress;
mod register;
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
    /// Print each result as one JSON object on stdout (and an error as {"error": ...} on
    /// stderr) instead of a line of text.
    #[arg(long, global = true)]
    json: bool,
    /// How log events are written to stderr; RUST_LOG filters them (default: info for serve,
    /// workload and timelock serve, warn for everything else).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    /// One JSON object per event.
    Json,
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
        /// The key file of an encrypted backup.
        #[arg(long)]
        encrypt_key_file: Option<PathBuf>,
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
    /// Copies every table, as of one timestamp, into another store (resumable; verified).
    Migrate {
        /// The config file of the target store (read with the same --config-root).
        #[arg(long)]
        to: PathBuf,
        /// Copy the state as of this earlier timestamp (default: a fresh one).
        #[arg(long)]
        at: Option<i64>,
        /// Rows per target transaction (and per read of the source), 1 to 10000.
        #[arg(long, default_value_t = 1000)]
        batch_rows: usize,
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
    /// The backup directory (new or empty; one holding an interrupted backup is resumed).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Store at most this much per second (e.g. 50M, 1G).
    #[arg(long, value_parser = args::parse_rate)]
    rate_limit: Option<u64>,
    /// Store the files zstd-compressed.
    #[arg(long)]
    compress: bool,
    /// Incremental: store only the files not already in this earlier backup (which must stay
    /// where it is; restore and verify read it).
    #[arg(long)]
    incremental_from: Option<PathBuf>,
    /// Encrypt every stored file with the key in this file (32 bytes, or 64 hex digits:
    /// `openssl rand -hex 32 > key`); verify and restore then need it too.
    #[arg(long)]
    encrypt_key_file: Option<PathBuf>,
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
        /// The key file of an encrypted backup.
        #[arg(long)]
        encrypt_key_file: Option<PathBuf>,
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
    /// Transactions of random reads and unique writes over a few keys, recorded as a history
    /// for outside checkers (and checked for snapshot isolation at the end).
    Register {
        #[arg(long, default_value_t = 10)]
        keys: u64,
        #[arg(long, default_value_t = 4)]
        threads: u64,
        #[arg(long, default_value = "30s", value_parser = args::parse_duration)]
        duration: Duration,
        /// Write the history here: JSON lines, one per transaction.
        #[arg(long)]
        history: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum VerifyCommand {
    /// Checks a history written by `workload register --history` for snapshot isolation.
    History {
        #[arg(long)]
        file: PathBuf,
    },
    /// Money conserved across all accounts, at a fresh timestamp or at --at.
    Bank {
        #[arg(long)]
        at: Option<i64>,
    },
}

/// Which rows a console read covers and how it shows them.
#[derive(clap::Args)]
struct ReadArgs {
    /// The table, as namespace.name (`kvs tables` lists them).
    #[arg(long)]
    table: String,
    /// Read the snapshot at this earlier timestamp (default: a fresh one).
    #[arg(long)]
    at: Option<i64>,
    /// How to show keys and values.
    #[arg(long, value_enum, default_value = "auto")]
    format: console::Format,
}

#[derive(Subcommand)]
enum KvsCommand {
    /// Lists the application's tables.
    Tables,
    /// Prints one row (or one cell of it), read through the transaction layer.
    Get {
        #[command(flatten)]
        read: ReadArgs,
        /// The row key: text, or bytes as hex:00ff.
        #[arg(long, value_parser = console::parse_key)]
        row: console::Key,
        /// Only this column (text or hex:..).
        #[arg(long, value_parser = console::parse_key)]
        column: Option<console::Key>,
    },
    /// Prints the rows of a range [start, end), read through the transaction layer.
    Scan {
        #[command(flatten)]
        read: ReadArgs,
        /// First row (text or hex:..); default: the table's first.
        #[arg(long, value_parser = console::parse_key, default_value = "")]
        start: console::Key,
        /// End row, not included; default: the table's end.
        #[arg(long, value_parser = console::parse_key, default_value = "")]
        end: console::Key,
        /// In descending row order.
        #[arg(long)]
        reverse: bool,
        /// At most this many rows (up to 10000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
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

/// The backup key in `file`, if one is given.
fn key(file: Option<&std::path::Path>) -> Result<Option<ortelius_backup::BackupKey>> {
    Ok(file
        .map(ortelius_backup::BackupKey::from_file)
        .transpose()?)
}

fn load_config(cli: &Cli) -> Result<config::AtlasConfig> {
    let file = cli
        .config
        .as_ref()
        .context("this command needs --config <file> naming the config file")?;
    Ok(config::load(file, cli.config_root.as_deref())?)
}

fn run(cli: &Cli) -> Result<()> {
    let out = output::Output { json: cli.json };
    match &cli.command {
        Command::Demo(args) => demo::run(args),
        Command::Timestamp(TimestampCommand::Fetch { file, immutable }) => {
            runbook::fetch(&load_config(cli)?, file.as_deref(), *immutable, out)
        }
        Command::Timestamp(TimestampCommand::FastForward { file, timestamp }) => {
            let target = runbook::timestamp_arg(file.as_ref(), *timestamp)?;
            runbook::fast_forward(&load_config(cli)?, target, out)
        }
        Command::Timestamp(TimestampCommand::CleanTransactions { file, timestamp }) => {
            let backup_ts = runbook::timestamp_arg(file.as_ref(), *timestamp)?;
            runbook::clean_transactions(&load_config(cli)?, backup_ts, out)
        }
        Command::Serve => runbook::serve(&load_config(cli)?),
        Command::Timelock(TimelockCommand::Serve(args)) => runbook::timelock_serve(args),
        Command::Backup(BackupArgs {
            action:
                Some(BackupAction::Verify {
                    dir,
                    deep,
                    encrypt_key_file,
                }),
            ..
        }) => runbook::verify_backup(dir, *deep, key(encrypt_key_file.as_deref())?, out),
        Command::Backup(BackupArgs {
            action: None,
            dir,
            rate_limit,
            compress,
            incremental_from,
            encrypt_key_file,
        }) => {
            let dir = dir.as_ref().context("backup needs --dir <new directory>")?;
            runbook::backup(
                &load_config(cli)?,
                dir,
                *rate_limit,
                *compress,
                incremental_from.as_deref(),
                key(encrypt_key_file.as_deref())?,
                out,
            )
        }
        Command::Restore {
            dir,
            force,
            as_of,
            rate_limit,
            encrypt_key_file,
        } => runbook::restore(
            &load_config(cli)?,
            dir,
            runbook::RestoreArgs {
                force: *force,
                as_of: *as_of,
                rate_limit: *rate_limit,
                key: key(encrypt_key_file.as_deref())?,
            },
            out,
        ),
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
            runbook::workload_bank(&load_config(cli)?, &workload, out)
        }
        Command::Workload(WorkloadCommand::Register {
            keys,
            threads,
            duration,
            history,
        }) => {
            let workload = register::Workload {
                keys: *keys,
                threads: *threads,
                duration: *duration,
                history: history.clone(),
            };
            runbook::workload_register(&load_config(cli)?, &workload, out)
        }
        Command::Verify(VerifyCommand::History { file }) => runbook::verify_history(file, out),
        Command::Verify(VerifyCommand::Bank { at }) => {
            runbook::verify_bank(&load_config(cli)?, *at, out)
        }
        Command::Kvs(KvsCommand::Snapshot { dir, node }) => {
            runbook::snapshot(&load_config(cli)?, dir, *node, out)
        }
        Command::Kvs(KvsCommand::Tables) => {
            console::tables(&*store::owner(&load_config(cli)?)?, out)
        }
        Command::Kvs(KvsCommand::Get { read, row, column }) => console::get(
            &*store::owner(&load_config(cli)?)?,
            console::Read {
                table: read.table.clone(),
                start: row.0.clone(),
                end: Vec::new(),
                column: column.as_ref().map(|c| c.0.clone()),
                reverse: false,
                limit: 1,
                at: read.at,
                format: read.format,
            },
            out,
        ),
        Command::Kvs(KvsCommand::Scan {
            read,
            start,
            end,
            reverse,
            limit,
        }) => console::scan(
            &*store::owner(&load_config(cli)?)?,
            console::Read {
                table: read.table.clone(),
                start: start.0.clone(),
                end: end.0.clone(),
                column: None,
                reverse: *reverse,
                limit: *limit,
                at: read.at,
                format: read.format,
            },
            out,
        ),
        Command::Kvs(KvsCommand::Load { dir, force }) => {
            runbook::load(&load_config(cli)?, dir, *force, out)
        }
        Command::Migrate { to, at, batch_rows } => {
            let target = config::load(to, cli.config_root.as_deref())?;
            runbook::migrate(&load_config(cli)?, &target, *at, *batch_rows, out)
        }
        Command::Sweep { table, dry_run, .. } => {
            runbook::sweep(&load_config(cli)?, table.as_deref(), *dry_run, out)
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
            runbook::backup_lock(&load_config(cli)?, action, out)
        }
    }
}

/// Sends log events to stderr in the chosen format, filtered by RUST_LOG.
fn init_logging(cli: &Cli) {
    let long_running = matches!(
        cli.command,
        Command::Serve | Command::Workload(_) | Command::Timelock(_)
    );
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if long_running { "info" } else { "warn" })
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) if cli.json => {
            eprintln!("{}", serde_json::json!({ "error": format!("{err:#}") }));
            std::process::ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
