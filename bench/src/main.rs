//! The lockstep benchmark harness: reproduces the paper's measurements on
//! this machine, always as ratios of two things measured side by side in
//! the same run (DEVELOPERS.md rule 5), with the host's KVM costs measured
//! beside them.
//!
//!   lockstep-bench redis    guest KV service vs stock redis-server
//!   lockstep-bench record   recording overhead, log bandwidth, replay speed
//!
//! Run it through `scripts/bench`, which builds everything first.

mod env;
mod netns;
mod record;
mod redis;
mod report;
mod vm;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "lockstep-bench", about = "lockstep's benchmark harness")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// redis-benchmark against the guest under `lockstep run` and against a
    /// stock redis-server (default and appendfsync always), side by side.
    Redis {
        /// Requests per redis-benchmark test.
        #[arg(long, default_value_t = 100_000)]
        requests: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 50)]
        clients: u32,
    },
    /// Recording overhead, log bandwidth and replay speed per workload.
    Record,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let machine = env::Machine::measure().context("measuring the host")?;
    print!("{}", machine.report());
    match cli.command {
        Cmd::Redis { requests, clients } => redis::compare(&machine, requests, clients),
        Cmd::Record => record::compare(),
    }
}
