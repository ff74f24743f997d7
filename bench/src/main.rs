//! The lockstep benchmark harness: reproduces the paper's measurements on
//! this machine, always as ratios of two things measured side by side in
//! the same run (DEVELOPERS.md rule 5), with the host's KVM costs measured
//! beside them.
//!
//!   lockstep-bench redis    guest KV service vs stock redis-server
//!   lockstep-bench record   recording overhead, log bandwidth, replay speed
//!   lockstep-bench channel  logging channel vs raw TCP on the logging link
//!   lockstep-bench paper    the paper's tables: docs/results.md and plots
//!   lockstep-bench regress  the verdict of scripts/bench-compare
//!
//! Run it through `scripts/bench`, which builds everything first.

mod app;
mod env;
mod faults;
mod ft;
mod join;
mod link;
mod link_crypto;
mod paper;
mod record;
mod redis;
mod regress;
mod report;
mod shaping;

use anyhow::Context;
use clap::{Parser, Subcommand};
use lockstep_bench::kvclient;

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
    /// Stock redis-server native, in `lockstep run` and in the FT pair.
    App(app::AppArgs),
    /// Recording overhead, log bandwidth and replay speed per workload.
    Record,
    /// The FT pair against one VM: throughput, output-rule latency,
    /// logging bandwidth, failover times.
    Ft {
        #[arg(long, default_value_t = 50_000)]
        requests: u64,
        #[arg(long, default_value_t = 5)]
        failovers: usize,
    },
    /// Restoring redundancy: a spare joins a running primary by live clone,
    /// per guest size, idle and under load; then a failover to protected
    /// again (docs/join.md).
    Join {
        /// Guest sizes in MiB (the guest ABI's limit is 3072).
        #[arg(long, value_delimiter = ',', default_value = "256,1024,3072")]
        sizes: Vec<u64>,
    },
    /// The fault tests' scenarios as a soak (randomized fault kind and
    /// timing), with a summary per fault kind.
    Faults {
        #[arg(long, default_value_t = 200)]
        trials: usize,
        /// Rerun a soak exactly (its summary prints the seed).
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The output lease's trade-off: failover time for several lease
    /// lengths against the ack gaps outputs ride through.
    Lease {
        /// Failovers per lease length.
        #[arg(long, default_value_t = 5)]
        failovers: usize,
    },
    /// The logging channel (SenderEngine → ReceiverEngine) against raw TCP
    /// on the logging link between two namespaces (a veth), side by side:
    /// stream throughput and round trips.
    Channel {
        /// MiB streamed per run (whole NetRx entries).
        #[arg(long, default_value_t = 256)]
        mib: u64,
    },
    /// The logging channel authenticated and encrypted against --insecure
    /// on the same logging link, interleaved: throughput, CPU per MiB,
    /// round trips.
    ChannelCrypto {
        /// MiB streamed per run.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Shape the logging link to this rate in Mbit/s (`tc tbf`, both
        /// ways), e.g. 1000 for the paper's 1 Gbit/s link; unshaped if
        /// absent.
        #[arg(long)]
        link_mbit: Option<u64>,
    },
    /// A client for failover runs: SETs unique keys for a while and records
    /// every acknowledged one (and the longest pause between acks).
    KvWriter {
        #[arg(long, default_value = "10.77.0.2:6379")]
        addr: String,
        #[arg(long, default_value_t = 4)]
        connections: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Where to write the acknowledged keys.
        #[arg(long)]
        acked: std::path::PathBuf,
    },
    /// The paper's tables (1 and 2, and the extra rows) from one command,
    /// on a fair emulation of two hosts: writes docs/results.md and SVG
    /// plots beside it.
    Paper {
        /// Short runs that check the whole command end to end.
        #[arg(long)]
        quick: bool,
        /// Rounds per figure (default: 5, quick: 2).
        #[arg(long)]
        reps: Option<usize>,
        /// Host A's CPUs (the primary, or the single VM); the backup and the
        /// clients get the others.
        #[arg(long, value_delimiter = ',', default_value = "0")]
        host_a: Vec<usize>,
        /// Where results.md and the plots go.
        #[arg(long, default_value = "docs")]
        out: std::path::PathBuf,
        /// A sentence for the page about the run's conditions.
        #[arg(long)]
        conditions: Option<String>,
    },
    /// The verdict of `scripts/bench-compare`: criterion results of
    /// interleaved runs of two builds (one CRITERION_HOME per run under
    /// each directory); fails if a hot path got slower than the threshold
    /// beyond the measured noise.
    Regress {
        #[arg(long)]
        base: std::path::PathBuf,
        #[arg(long)]
        head: std::path::PathBuf,
        /// Allowed slowdown beyond the noise, in percent.
        #[arg(long, default_value_t = 25.0)]
        threshold_pct: f64,
    },
    /// Reads every acknowledged key back; exit status 1 if any is lost.
    KvCheck {
        #[arg(long, default_value = "10.77.0.2:6379")]
        addr: String,
        #[arg(long)]
        acked: std::path::PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Cmd::KvWriter {
            addr,
            connections,
            seconds,
            acked,
        } => {
            let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let timer = stop.clone();
            let seconds = *seconds;
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_secs_f64(seconds));
                timer.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let r = kvclient::write(addr, *connections, stop);
            kvclient::save(acked, &r.acked)?;
            println!(
                "acknowledged writes: {}; errors: {}; longest pause between acknowledgements: {:.0} ms (from {:.2} s)",
                r.acked.len(),
                r.errors.len(),
                r.longest_gap.as_secs_f64() * 1e3,
                r.gap_at.as_secs_f64()
            );
            for e in r.errors.iter().take(5) {
                println!("  error: {e}");
            }
            return Ok(());
        }
        Cmd::Regress {
            base,
            head,
            threshold_pct,
        } => return regress::run(base, head, *threshold_pct),
        Cmd::Paper {
            quick,
            reps,
            host_a,
            out,
            conditions,
        } => {
            let mut opts = paper::Options::new(*quick, *reps, host_a.clone(), out.clone());
            opts.conditions = conditions.clone();
            return paper::run(opts);
        }
        Cmd::KvCheck { addr, acked } => {
            let keys = kvclient::load(acked)?;
            let lost = kvclient::check(addr, &keys)?;
            println!("acknowledged writes lost: {} of {}", lost.len(), keys.len());
            for k in lost.iter().take(5) {
                println!("  lost: {k}");
            }
            std::process::exit(if lost.is_empty() { 0 } else { 1 });
        }
        _ => {}
    }
    let machine = env::Machine::measure().context("measuring the host")?;
    print!("{}", machine.report());
    match cli.command {
        Cmd::Redis { requests, clients } => redis::compare(&machine, requests, clients),
        Cmd::App(a) => app::compare(&a),
        Cmd::Record => record::compare(),
        Cmd::Ft {
            requests,
            failovers,
        } => ft::compare(requests, failovers),
        Cmd::Channel { mib } => link::compare(mib),
        Cmd::Lease { failovers } => ft::lease_tradeoff(failovers),
        Cmd::Join { sizes } => join::compare(&sizes),
        Cmd::Faults { trials, seed } => faults::soak(trials, seed),
        Cmd::ChannelCrypto { mib, link_mbit } => link_crypto::compare(mib, link_mbit),
        Cmd::KvWriter { .. } | Cmd::KvCheck { .. } | Cmd::Regress { .. } | Cmd::Paper { .. } => {
            Ok(())
        }
    }
}
