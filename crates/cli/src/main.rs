//! The `ortelius` command-line tool.

mod demo;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "ortelius",
    version,
    about = "Transactions and live backups over key-value stores"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Creates an embedded RocksDB store in a temporary directory, writes, reads and reports.
    Demo(demo::DemoArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
