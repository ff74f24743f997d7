//! The logging link's raw round trip, and failovers.

use anyhow::Context;

use lockstep_bench::channel::{self, Hosts};
use lockstep_bench::pair::Host;

use super::Ctx;
use super::stats::Samples;

/// The logging link's raw TCP round trip (40-byte ping-pong, blocking and
/// spinning reads), unshaped, with no VM running.
pub fn link_rtt(ctx: &Ctx, samples: &mut Samples) -> anyhow::Result<String> {
    let hosts = Hosts {
        a: ctx.net.side("a"),
        b: ctx.net.side("b"),
        b_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 99, 0, 2)),
    };
    let n = if ctx.opts.quick { 5_000 } else { 20_000 };
    let block = channel::raw_round_trips(&hosts, 1_000, n, false).context("raw ping-pong")?;
    let spin = channel::raw_round_trips(&hosts, 1_000, n, true).context("spinning ping-pong")?;
    for (name, rt) in [("block", &block), ("spin", &spin)] {
        for (q, tag) in [(0.5, "p50"), (0.99, "p99"), (0.999, "p999")] {
            samples.push(format!("rtt/{name}/{tag}"), rt.us(q));
        }
    }
    Ok(format!(
        "p50 {:.0} µs blocking, {:.0} µs spinning",
        block.us(0.5),
        spin.us(0.5)
    ))
}

/// `opts.failovers` failovers under client load with this run's placement.
pub fn failovers(ctx: &Ctx, samples: &mut Samples, each: &dyn Fn(usize)) -> anyhow::Result<String> {
    let dir = ctx.dir.path().join("failovers");
    std::fs::create_dir_all(&dir)?;
    let placed = crate::ft::Placed {
        primary_cpus: ctx.place.vmm_cpus(Host::A),
        backup_cpus: ctx.place.vmm_cpus(Host::B),
        adopt: &*ctx.adopt,
    };
    let f = crate::ft::failovers(&dir, ctx.opts.failovers, Some(&placed), each)?;
    for v in &f.live_ms {
        samples.push("failover/live_ms", *v);
    }
    for v in &f.outage_ms {
        samples.push("failover/outage_ms", *v);
    }
    samples.push("failover/lost", f.lost as f64);
    samples.push("failover/runs", ctx.opts.failovers as f64);
    Ok(format!(
        "{} failovers, {} lost an acknowledged write",
        ctx.opts.failovers, f.lost
    ))
}
