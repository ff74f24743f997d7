//! `lockstep-bench paper`: the paper's tables from one command, on a fair
//! emulation of two hosts, written to `docs/results.md` with SVG plots.
//!
//! * Table 1 analogue: compute, disk, kv (redis-benchmark SET/GET with and
//!   without `-P 16`) and HTTP (`ab`), each under `lockstep run` and under
//!   the FT pair: FT performance as a fraction of non-FT, the logging
//!   bandwidth, and the CPU per unit of work of each VMM process.
//! * Table 2 analogue: `iperf3` receive and transmit throughput of the
//!   guest, non-FT and FT with the logging link shaped to 1 and 10 Gbit/s.
//! * Output-rule latency beside the link's round trip; failover times.
//!
//! Every figure is measured in `reps` rounds; within a round the two
//! configurations of each workload run back to back, the order alternating
//! between rounds; the page shows medians with their spread.

mod batch;
mod cpu;
mod extras;
mod loads;
mod place;
mod plan;
mod plot;
mod render;
mod session;
mod stats;

use std::path::PathBuf;

use lockstep_bench::netns::Net;
use lockstep_bench::pair::Host;

pub use place::Placement;

/// What to run, and how much of it.
#[derive(Clone, Debug)]
pub struct Options {
    pub quick: bool,
    pub reps: usize,
    pub kv_requests: u64,
    pub http_requests: u64,
    pub iperf_secs: u64,
    pub compute_iters: u64,
    pub disk_ops: u64,
    pub failovers: usize,
    /// Host A's CPUs.
    pub host_a: Vec<usize>,
    /// Where results.md and the plots go.
    pub out: PathBuf,
    /// What the page should say about the conditions of the run (e.g.
    /// "other builds ran on the machine").
    pub conditions: Option<String>,
}

impl Options {
    /// The full run (about 15 minutes on a 2-core machine) or the
    /// quick one that checks the whole command end to end (a few minutes;
    /// its numbers are not for the page).
    pub fn new(quick: bool, reps: Option<usize>, host_a: Vec<usize>, out: PathBuf) -> Options {
        let full = !quick;
        Options {
            quick,
            reps: reps.unwrap_or(if full { 5 } else { 2 }),
            kv_requests: if full { 100_000 } else { 10_000 },
            http_requests: if full { 40_000 } else { 4_000 },
            iperf_secs: if full { 10 } else { 2 },
            compute_iters: if full { 1500 } else { 300 },
            disk_ops: if full { 20_000 } else { 4_000 },
            failovers: if full { 10 } else { 2 },
            host_a,
            out,
            conditions: None,
        }
    }
}

/// What every step shares: the hosts, the placement, scratch space.
/// Dropping it removes the namespaces (`Net`) and the cgroups.
pub struct Ctx {
    pub opts: Options,
    pub net: Net,
    pub place: Placement,
    /// `place.adopt` as the pair helper takes it.
    pub adopt: Box<dyn Fn(Host, u32) -> anyhow::Result<()>>,
    pub dir: tempfile::TempDir,
}

impl Drop for Ctx {
    fn drop(&mut self) {
        self.place.remove();
    }
}

/// `lockstep-bench paper`.
pub fn run(opts: Options) -> anyhow::Result<()> {
    plan::run(opts)
}
