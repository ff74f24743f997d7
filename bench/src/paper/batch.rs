//! Batch workloads (the guest computes, or reads and writes its disk, and
//! exits): time to completion under `lockstep run` and under the FT pair,
//! the CPU each VMM process used per unit of work (from `wait4`, exact for
//! the whole process), and the logging bandwidth.

use std::time::Duration;

use anyhow::{Context, bail};

use lockstep_bench::pair;
use lockstep_bench::vm::Stats;

use super::Ctx;
use super::session::{Kind, pair_config, spawn_run};
use super::stats::Samples;

/// One batch workload of Table 1.
pub struct Batch {
    /// Key on the page (`compute`, `disk`).
    pub key: &'static str,
    pub workload: &'static str,
    pub append: String,
    /// Units of work one run does (runs, disk operations).
    pub units: f64,
}

const TIMEOUT: Duration = Duration::from_secs(600);

fn vm_args(b: &Batch) -> Vec<String> {
    vec![
        "--workload".into(),
        b.workload.into(),
        "--append".into(),
        b.append.clone(),
        "--mem".into(),
        "256".into(),
    ]
}

fn wall_ms(log: &str) -> anyhow::Result<f64> {
    Stats::parse(log)
        .map(|s| s.wall_ms as f64)
        .with_context(|| format!("no stats line in:\n{log}"))
}

/// Logged bytes from the primary's `log: N bytes in …` line.
pub fn logged_bytes(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.split("log: ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

fn check(status: i32, who: &str, log: &str) -> anyhow::Result<()> {
    if status != 0 {
        bail!("{who} exited with wait status {status:#x}:\n{log}");
    }
    Ok(())
}

/// Runs `b` once under `kind`; records `KEY/LABEL/ms`, `…/cpu/ROLE` (µs
/// per unit) and, for FT, `…/logmbit`.
pub fn measure(
    ctx: &Ctx,
    samples: &mut Samples,
    b: &Batch,
    kind: Kind,
    tag: &str,
) -> anyhow::Result<f64> {
    let dir = ctx.dir.path().join(tag);
    std::fs::create_dir_all(&dir)?;
    let label = kind.label();
    let key = b.key;
    match kind {
        Kind::Run => {
            let mut extra = vm_args(b);
            extra.extend([
                "--console".into(),
                dir.join("console").display().to_string(),
            ]);
            let mut v = spawn_run(ctx, &dir.join("disk.img"), &extra)?;
            let (status, cpu) = v.wait_exit_cpu(TIMEOUT)?;
            let log = v.log();
            check(status, "lockstep run", &log)?;
            let ms = wall_ms(&log)?;
            samples.push(format!("{key}/{label}/ms"), ms);
            samples.push(
                format!("{key}/{label}/cpu/run"),
                cpu.as_secs_f64() * 1e6 / b.units,
            );
            Ok(ms)
        }
        Kind::Ft => {
            let mut cfg = pair_config(ctx, &dir);
            cfg.primary_extra = vm_args(b);
            cfg.ready = None;
            let p = pair::start(&cfg)?;
            let (mut primary, mut backup) = (p.primary, p.backup);
            let (status, p_cpu) = primary.wait_exit_cpu(TIMEOUT)?;
            let plog = primary.log();
            check(status, "lockstep primary", &plog)?;
            let (bstatus, b_cpu) = backup.wait_exit_cpu(TIMEOUT)?;
            check(bstatus, "lockstep backup", &backup.log())?;
            let ms = wall_ms(&plog)?;
            samples.push(format!("{key}/{label}/ms"), ms);
            samples.push(
                format!("{key}/{label}/cpu/primary"),
                p_cpu.as_secs_f64() * 1e6 / b.units,
            );
            samples.push(
                format!("{key}/{label}/cpu/backup"),
                b_cpu.as_secs_f64() * 1e6 / b.units,
            );
            if let Some(bytes) = logged_bytes(&plog) {
                samples.push(
                    format!("{key}/{label}/logmbit"),
                    bytes * 8.0 / (ms.max(1.0) / 1e3) / 1e6,
                );
            }
            Ok(ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_parses() {
        assert_eq!(
            logged_bytes("a\n2026 INFO log: 123456 bytes in 3.4 s (0.290 Mbit/s)\n"),
            Some(123456.0)
        );
        assert_eq!(logged_bytes("no log"), None);
    }
}
