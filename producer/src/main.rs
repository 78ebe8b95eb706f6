//! `producer`: the researcher's command line. `producer expand SWEEP.toml`
//! validates a sweep file and lists the jobs it expands to (id, config
//! hash, grid point), or prints them as JSON job specs with `--json`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use common::sweep::Sweep;

#[derive(Parser)]
#[command(
    name = "producer",
    version,
    about = "Plans and tracks fine-tuning sweeps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a sweep file and list the jobs it expands to.
    Expand {
        /// The sweep file (TOML).
        sweep: PathBuf,
        /// Print one JSON object per job (id, axes, config hash, full spec).
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Expand { sweep, json } => {
            let s = Sweep::load(&sweep)?;
            for j in &s.jobs {
                if json {
                    println!("{}", serde_json::to_string(j).context("serialising a job")?);
                } else {
                    let axes: Vec<String> =
                        j.axes.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    println!("{}  {}  {}", j.id, j.config_hash, axes.join(" "));
                }
            }
            eprintln!("{}: {} job(s)", s.name, s.jobs.len());
            Ok(())
        }
    }
}
