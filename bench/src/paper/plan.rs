//! The paper run's steps, in order, with a progress bar and an ETA; a step
//! that fails is recorded on the page and the run goes on.

use std::process::Command;
use std::time::Instant;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use lockstep_bench::netns::Net;

use super::batch::{self, Batch};
use super::extras;
use super::loads;
use super::render::{self, Meta};
use super::session::{self, Kind, Session};
use super::stats::Samples;
use super::{Ctx, Options, Placement};
use crate::shaping::Shaped;

type Work<'a> = Box<dyn FnOnce(&Ctx, &mut Samples, &ProgressBar) -> anyhow::Result<String> + 'a>;

/// One step: what it is called, about how many seconds it takes (for the
/// ETA), and the work.
struct Step<'a> {
    name: String,
    weight: u64,
    work: Work<'a>,
}

/// The links the FT pair is measured on in Table 2 (Mbit/s, label).
pub const LINKS: [(u64, &str); 2] = [(1_000, "ft1g"), (10_000, "ft10g")];

/// The kv tests of Table 1: (redis-benchmark test, pipeline, key).
pub const KV_TESTS: [(&str, u32, &str); 4] = [
    ("set", 1, "kv/SET"),
    ("get", 1, "kv/GET"),
    ("set", 16, "kv/SET -P 16"),
    ("get", 16, "kv/GET -P 16"),
];

fn services(ctx: &Ctx, s: &mut Samples, kind: Kind, round: usize) -> anyhow::Result<String> {
    let sess = Session::start(ctx, kind, &format!("svc-{}-{round}", kind.label()))?;
    let label = kind.label();
    let mut out = Vec::new();
    for (test, pipeline, key) in KV_TESTS {
        let r = sess.measure(s, key, label, || loads::redis(ctx, test, pipeline))?;
        out.push(format!("{key} {r:.0}/s"));
    }
    for (key, put) in [("http/GET", false), ("http/PUT", true)] {
        let r = sess.measure(s, key, label, || loads::http(ctx, put))?;
        out.push(format!("{key} {r:.0}/s"));
    }
    if let Some(log) = sess.finish()?
        && let Some((p50, p99, p999)) = session::output_rule(&log)
    {
        s.push("rule/p50", p50);
        s.push("rule/p99", p99);
        s.push("rule/p999", p999);
        out.push(format!("output rule p50 {p50:.0} µs"));
    }
    Ok(out.join(", "))
}

fn network(ctx: &Ctx, s: &mut Samples, kind: Kind, round: usize) -> anyhow::Result<String> {
    let sess = Session::start(ctx, kind, &format!("net-{}-{round}", kind.label()))?;
    let mut out = Vec::new();
    let mut both = |s: &mut Samples, label: &str| -> anyhow::Result<()> {
        for (key, reverse) in [("net/rx", false), ("net/tx", true)] {
            let r = sess.measure(s, key, label, || loads::iperf(ctx, reverse))?;
            out.push(format!("{key} {label} {r:.0} Mbit/s"));
        }
        Ok(())
    };
    match kind {
        Kind::Run => both(s, "run")?,
        Kind::Ft => {
            for (mbit, label) in LINKS {
                let _shaped = Shaped::new(&ctx.net, mbit)?;
                both(s, label)?;
            }
        }
    }
    sess.finish()?;
    Ok(out.join(", "))
}

fn batches(o: &Options) -> [Batch; 2] {
    [
        Batch {
            key: "compute",
            workload: "compute",
            append: format!("iters={}", o.compute_iters),
            units: 1.0,
        },
        Batch {
            key: "disk",
            workload: "disk",
            append: format!("ops={} inflight=4", o.disk_ops),
            units: o.disk_ops as f64,
        },
    ]
}

fn steps<'a>(o: &Options) -> Vec<Step<'a>> {
    let mut v: Vec<Step<'a>> = Vec::new();
    let kv_secs = 6 + o.kv_requests / 2_500 + o.http_requests / 2_000;
    let net_secs = 6 + 2 * o.iperf_secs;
    for round in 0..o.reps {
        // Alternate which configuration goes first, so drift over the run
        // does not favour one of them.
        let order = if round % 2 == 0 {
            [Kind::Run, Kind::Ft]
        } else {
            [Kind::Ft, Kind::Run]
        };
        let r = round + 1;
        for kind in order {
            let ft = u64::from(kind == Kind::Ft);
            v.push(Step {
                name: format!("round {r}: kv and HTTP, {}", kind.label()),
                weight: kv_secs + ft * kv_secs / 2,
                work: Box::new(move |c, s, _| services(c, s, kind, round)),
            });
        }
        for kind in order {
            let ft = u64::from(kind == Kind::Ft);
            v.push(Step {
                name: format!("round {r}: iperf3, {}", kind.label()),
                weight: net_secs * (1 + ft),
                work: Box::new(move |c, s, _| network(c, s, kind, round)),
            });
        }
        for b in 0..2 {
            for kind in order {
                let weight = if b == 0 {
                    4 + o.compute_iters / 400
                } else {
                    4 + o.disk_ops / 8_000
                };
                v.push(Step {
                    name: format!("round {r}: {}, {}", batches(o)[b].key, kind.label()),
                    weight: weight + 3 * u64::from(kind == Kind::Ft),
                    work: Box::new(move |c, s, _| {
                        let b = &batches(&c.opts)[b];
                        let tag = format!("{}-{}-{round}", b.key, kind.label());
                        let ms = batch::measure(c, s, b, kind, &tag)?;
                        Ok(format!("{ms:.0} ms"))
                    }),
                });
            }
        }
    }
    v.push(Step {
        name: "the logging link's raw round trip".into(),
        weight: 8,
        work: Box::new(|c, s, _| extras::link_rtt(c, s)),
    });
    v.push(Step {
        name: format!("{} failovers", o.failovers),
        weight: 8 * o.failovers as u64,
        work: Box::new(|c, s, pb| extras::failovers(c, s, &|_| pb.inc(8))),
    });
    v
}

fn now_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The shared handoff probe's output, if it is on this machine.
fn handoff_probe() -> Option<String> {
    let p = lockstep_bench::vm::repo().join("../shared/probes/handoff/run");
    let out = Command::new(&p).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The whole run: probes, steps, the page and its plots.
pub fn run(opts: Options) -> anyhow::Result<()> {
    let started = Instant::now();
    let when = now_utc();
    let load_before = loadavg();
    eprintln!("measuring the host: kvm-host and handoff probes, lockstep's exit round trip");
    let machine = crate::env::Machine::measure().context("measuring the host")?;
    let handoff = handoff_probe();
    let place = Placement::new(opts.host_a.clone())?;
    let adopt_place = place.clone();
    let ctx = Ctx {
        net: Net::ft("bpap")?,
        adopt: Box::new(move |h, pid| adopt_place.adopt(h, pid)),
        place,
        dir: tempfile::Builder::new()
            .prefix("lockstep-paper-")
            .tempdir()?,
        opts,
    };
    eprintln!("placement: {}", ctx.place.describe());
    let steps = steps(&ctx.opts);
    let total: u64 = steps.iter().map(|s| s.weight).sum();
    let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] [{bar:30}] {percent:>3}% ETA {eta} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut samples = Samples::default();
    let mut failures = Vec::new();
    let n = steps.len();
    for (i, step) in steps.into_iter().enumerate() {
        let msg = format!("[{}/{n}] {}", i + 1, step.name);
        pb.set_message(msg.clone());
        let at = pb.position();
        let t0 = Instant::now();
        let result = (step.work)(&ctx, &mut samples, &pb);
        let line = match result {
            Ok(summary) => format!("{msg} ({:.0} s): {summary}", t0.elapsed().as_secs_f64()),
            Err(e) => {
                failures.push(format!("{}: {e:#}", step.name));
                format!("{msg}: FAILED: {e:#}")
            }
        };
        if pb.is_hidden() {
            eprintln!("{line}");
        } else {
            pb.println(line);
        }
        pb.set_position(at + step.weight);
    }
    pb.finish_and_clear();
    let meta = Meta {
        when,
        load_before,
        load_after: loadavg(),
        took_s: started.elapsed().as_secs_f64(),
        handoff,
    };
    let out = ctx.opts.out.clone();
    let page = render::page(&ctx, &machine, &meta, &samples, &failures)?;
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join("results.md"), page)?;
    super::plot::all(&out, &samples)?;
    eprintln!(
        "wrote {} and its plots in {:.0} s{}",
        out.join("results.md").display(),
        meta.took_s,
        if failures.is_empty() {
            String::new()
        } else {
            format!("; {} step(s) failed (listed on the page)", failures.len())
        }
    );
    Ok(())
}
