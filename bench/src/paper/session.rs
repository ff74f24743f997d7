//! One booted configuration — a single VM (`lockstep run`) on host A, or
//! the FT pair (primary on A, backup on B) — and measured windows of load
//! on it: the load's rate, the CPU each VMM process and thread spent per
//! unit of work, and (FT) the logging bandwidth.

use std::time::{Duration, Instant};

use anyhow::Context;

use lockstep_bench::pair::{self, Host, PairConfig};
use lockstep_bench::vm::{self, Vmm};

use super::Ctx;
use super::cpu::{self, Snapshot};
use super::stats::Samples;

/// Which configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Run,
    Ft,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Ft => "ft",
        }
    }
}

/// A booted configuration: its VMM processes by role.
pub struct Session<'a> {
    ctx: &'a Ctx,
    pub kind: Kind,
    procs: Vec<(&'static str, Vmm)>,
}

/// `lockstep run` on host A (`extra`: workload options), placed.
pub fn spawn_run(ctx: &Ctx, disk: &std::path::Path, extra: &[String]) -> anyhow::Result<Vmm> {
    let mut c = ctx.net.cmd("a", &vm::lockstep_bin().display().to_string());
    c.args(["run", "--tap", &ctx.net.tap()])
        .args(["--cpus", &ctx.place.vmm_cpus(Host::A)])
        .arg("--disk")
        .arg(disk)
        .args(extra);
    let mut v = Vmm::spawn(c)?;
    v.wait_for(pair::STARTED, Duration::from_secs(30))?;
    ctx.place.adopt(Host::A, v.pid())?;
    Ok(v)
}

/// The pair's configuration on `dir` with this run's placement.
pub fn pair_config<'a>(ctx: &'a Ctx, dir: &'a std::path::Path) -> PairConfig<'a> {
    let mut cfg = PairConfig::new(&ctx.net, dir);
    cfg.primary_cpus = ctx.place.vmm_cpus(Host::A);
    cfg.backup_cpus = ctx.place.vmm_cpus(Host::B);
    cfg.adopt = &*ctx.adopt;
    cfg
}

impl<'a> Session<'a> {
    /// Boots `kind` with the kv guest (fresh disk under `tag`) and waits
    /// until it serves.
    pub fn start(ctx: &'a Ctx, kind: Kind, tag: &str) -> anyhow::Result<Session<'a>> {
        let dir = ctx.dir.path().join(tag);
        std::fs::create_dir_all(&dir)?;
        let procs = match kind {
            Kind::Run => {
                let mut v = spawn_run(ctx, &dir.join("disk.img"), &[])?;
                v.wait_for("kv: serving", Duration::from_secs(30))?;
                vec![("run", v)]
            }
            Kind::Ft => {
                let p = pair::start(&pair_config(ctx, &dir))?;
                vec![("primary", p.primary), ("backup", p.backup)]
            }
        };
        Ok(Session { ctx, kind, procs })
    }

    fn snapshots(&self) -> Vec<Snapshot> {
        self.procs
            .iter()
            .map(|(_, v)| cpu::snapshot(v.pid()))
            .collect()
    }

    /// Runs `load` (returning its rate and the units of work it did) and
    /// records under `key/label/…`: `rate`, `cpu/ROLE` and
    /// `thread/ROLE/NAME` (CPU-µs per unit), and for FT `logmbit`.
    pub fn measure(
        &self,
        samples: &mut Samples,
        key: &str,
        label: &str,
        load: impl FnOnce() -> anyhow::Result<(f64, f64)>,
    ) -> anyhow::Result<f64> {
        let ft = self.kind == Kind::Ft;
        let log0 = if ft {
            pair::log_bytes(&self.ctx.net)
        } else {
            0
        };
        let before = self.snapshots();
        let t0 = Instant::now();
        let (rate, units) = load().with_context(|| format!("{key} ({label})"))?;
        let secs = t0.elapsed().as_secs_f64();
        let after = self.snapshots();
        let log1 = if ft {
            pair::log_bytes(&self.ctx.net)
        } else {
            0
        };
        samples.push(format!("{key}/{label}/rate"), rate);
        for (((role, _), a), b) in self.procs.iter().zip(&after).zip(&before) {
            let d = a.since(b);
            samples.push(format!("{key}/{label}/cpu/{role}"), d.total_us() / units);
            for (thread, us) in &d.threads {
                samples.push(format!("{key}/{label}/thread/{role}/{thread}"), us / units);
            }
        }
        if ft {
            let mbit = log1.saturating_sub(log0) as f64 * 8.0 / secs.max(1e-3) / 1e6;
            samples.push(format!("{key}/{label}/logmbit"), mbit);
        }
        Ok(rate)
    }

    /// Stops every VMM; returns the primary's log (FT) for its output-rule
    /// line.
    pub fn finish(self) -> anyhow::Result<Option<String>> {
        let mut primary_log = None;
        for (role, v) in self.procs {
            let log = v.stop_log()?;
            if role == "primary" {
                primary_log = Some(log);
            }
        }
        Ok(primary_log)
    }
}

/// (p50, p99, p99.9) µs from the primary's `output rule:` line.
pub fn output_rule(log: &str) -> Option<(f64, f64, f64)> {
    let line = log.lines().find(|l| l.contains("output rule:"))?;
    let after = |tag: &str| -> Option<f64> {
        line.split(tag)
            .nth(1)?
            .split_whitespace()
            .next()?
            .trim_end_matches(',')
            .parse()
            .ok()
    };
    Some((after("p50 ")?, after("p99 ")?, after("p99.9 ")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_output_rule_line_parses() {
        let log = "x\n2026 INFO output rule: 215284 outputs held; added latency p50 185 µs, p99 1490 µs, p99.9 3200 µs, max 9000 µs\n";
        assert_eq!(output_rule(log), Some((185.0, 1490.0, 3200.0)));
        assert_eq!(output_rule("nothing"), None);
    }
}
