//! The logging link shaped to a rate (`tc tbf` on both ends of the veth,
//! inside the hosts' namespaces): the paper's 1 and 10 Gbit/s links.

use std::process::Command;

use anyhow::{Context, bail};
use lockstep_bench::netns::Net;

/// The logging link shaped to a rate in both directions while it lives;
/// unshaped on drop (also when a measurement failed).
pub struct Shaped<'a> {
    net: &'a Net,
}

/// The logging link's two ends: (namespace, device).
fn link_ends(net: &Net) -> [(String, String); 2] {
    let n = &net.name;
    [
        (net.ns("a"), format!("{n}-ab")),
        (net.ns("b"), format!("{n}-ba")),
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
    pub fn new(net: &'a Net, mbit: u64) -> anyhow::Result<Shaped<'a>> {
        let s = Shaped { net };
        let tbf = tbf_args(mbit);
        for (ns, dev) in link_ends(net) {
            let mut args = vec!["qdisc", "replace", "dev", &dev, "root", "tbf"];
            args.extend(tbf.iter().map(String::as_str));
            tc(&ns, &args)?;
        }
        Ok(s)
    }
}

impl Drop for Shaped<'_> {
    fn drop(&mut self) {
        for (ns, dev) in link_ends(self.net) {
            let _ = tc(&ns, &["qdisc", "del", "dev", &dev, "root"]);
        }
    }
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
