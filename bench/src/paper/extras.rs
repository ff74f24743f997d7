//! The logging link's shaping (`tc tbf` inside the hosts' namespaces), its
//! raw round trip, and failovers.

use std::process::Command;

use anyhow::{Context, bail};

use lockstep_bench::channel::{self, Hosts};
use lockstep_bench::pair::Host;

use super::Ctx;
use super::stats::Samples;

/// The logging link shaped to a rate in both directions while it lives;
/// unshaped on drop (also when a measurement failed).
pub struct Shaped<'a> {
    ctx: &'a Ctx,
}

/// The logging link's two ends: (namespace, device).
fn link_ends(ctx: &Ctx) -> [(String, String); 2] {
    let n = &ctx.net.name;
    [
        (ctx.net.ns("a"), format!("{n}-ab")),
        (ctx.net.ns("b"), format!("{n}-ba")),
    ]
}

fn tc(ns: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "tc"])
        .args(args)
        .output()
        .context("running tc (iproute2)")?;
    if !out.status.success() {
        bail!(
            "tc {args:?} in {ns}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// `tc tbf` parameters for `mbit`: a bucket of 2 ms at the rate (at least
/// 256 KiB, so a TSO burst of 64 KiB always fits) and 2 ms of queue.
pub fn tbf_args(mbit: u64) -> Vec<String> {
    let burst_bytes = (mbit.saturating_mul(1_000_000) / 8 / 500).max(256 * 1024);
    vec![
        "rate".into(),
        format!("{mbit}mbit"),
        "burst".into(),
        burst_bytes.to_string(),
        "latency".into(),
        "2ms".into(),
    ]
}

impl<'a> Shaped<'a> {
    pub fn new(ctx: &'a Ctx, mbit: u64) -> anyhow::Result<Shaped<'a>> {
        let s = Shaped { ctx };
        let tbf = tbf_args(mbit);
        for (ns, dev) in link_ends(ctx) {
            let mut args = vec!["qdisc", "replace", "dev", &dev, "root", "tbf"];
            args.extend(tbf.iter().map(String::as_str));
            tc(&ns, &args)?;
        }
        Ok(s)
    }
}

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        for (ns, dev) in link_ends(self.ctx) {
            let _ = tc(&ns, &["qdisc", "del", "dev", &dev, "root"]);
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_hold_two_milliseconds_at_the_rate() {
        assert_eq!(tbf_args(1000)[3], (256 * 1024).to_string());
        assert_eq!(tbf_args(10_000)[3], "2500000");
        assert_eq!(tbf_args(10_000)[1], "10000mbit");
    }
}
