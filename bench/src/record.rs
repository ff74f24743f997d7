//! Record/replay costs per workload (issue 9): the recording's overhead as
//! a ratio to `lockstep run`, the log bandwidth beside the paper's Table 1,
//! and how fast a replay runs compared with the recording it replays.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use lockstep_bench::netns::{GUEST_IP, Net};
use lockstep_bench::vm::{self, Stats, Vmm};

use crate::redis::run_benchmark;
use crate::report::{Table, median, ratio};

/// Runs a batch workload to its end; returns the VMM's statistics.
fn batch(
    mode: &str,
    dir: &Path,
    workload: &str,
    append: &str,
    log: Option<&Path>,
    extra: &[&str],
) -> anyhow::Result<Stats> {
    let mut cmd = Command::new(vm::lockstep_bin());
    cmd.args([
        mode,
        "--mem",
        "256",
        "--workload",
        workload,
        "--append",
        append,
        "--disk",
    ])
    .arg(dir.join(format!("{workload}.img")))
    .arg("--console")
    .arg(dir.join("console"))
    .args(extra);
    if let Some(log) = log {
        cmd.arg("--log").arg(log);
    }
    let out = cmd.output().context("running lockstep")?;
    let text = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("lockstep {mode} {workload} failed:\n{text}");
    }
    Stats::parse(&text).context("no stats line")
}

/// Replays `log`; returns its wall time.
fn replay(log: &Path, extra: &[&str]) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = Command::new(vm::lockstep_bin())
        .arg("replay")
        .arg("--log")
        .arg(log)
        .args(extra)
        .output()?;
    if !out.status.success() {
        bail!("replay failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(started.elapsed())
}

fn mbit(bytes: u64, ms: f64) -> f64 {
    bytes as f64 * 8.0 / (ms.max(1.0) / 1000.0) / 1e6
}

/// A kv guest under `mode` with a redis-benchmark load (or idle for
/// `idle_ms`); returns (SET+GET requests per second, stats, log bytes).
fn kv(
    mode: &str,
    dir: &Path,
    log: Option<&Path>,
    idle_ms: Option<u64>,
) -> anyhow::Result<(f64, Stats)> {
    let net = Net::single("brec")?;
    let mut cmd = net.cmd("h", &vm::lockstep_bin().display().to_string());
    let disk = format!(
        "kv-{mode}{}.img",
        if idle_ms.is_some() { "-idle" } else { "" }
    );
    cmd.args([mode, "--tap", &net.tap(), "--disk"])
        .arg(dir.join(disk));
    if let Some(log) = log {
        cmd.arg("--log").arg(log);
    }
    let mut vmm = Vmm::spawn(cmd)?;
    vmm.wait_for("kv: serving RESP", Duration::from_secs(30))?;
    let rps = match idle_ms {
        Some(ms) => {
            std::thread::sleep(Duration::from_millis(ms));
            0.0
        }
        None => {
            let rows = run_benchmark(
                net.cmd("c", "redis-benchmark"),
                GUEST_IP,
                6379,
                50_000,
                50,
                1,
            )?;
            rows.iter().map(|r| r.rps).sum::<f64>() / rows.len() as f64
        }
    };
    Ok((rps, vmm.stop()?))
}

pub fn compare() -> anyhow::Result<()> {
    println!("## Record and replay (one host, log to a file)\n");
    let dir = tempfile::tempdir()?;
    let log = dir.path().join("log");
    let mut table = Table::new(&[
        "workload",
        "lockstep run",
        "lockstep record",
        "record ÷ run",
        "log Mbit/s",
        "paper (Table 1)",
        "replay speed ÷ recording",
    ]);
    let copy = dir.path().join("copy.img");
    let copy_arg = copy.display().to_string();
    for (workload, append, backup_reads, paper) in [
        ("compute", "iters=1500", false, "kernel compile: 3.0 Mbit/s"),
        (
            "disk",
            "ops=20000 inflight=4",
            false,
            "Oracle Swingbench: 12 Mbit/s",
        ),
        (
            "disk",
            "ops=20000 inflight=4",
            true,
            "(backup executes reads)",
        ),
    ] {
        let (mut runs, mut recs, mut bws, mut speeds) = (vec![], vec![], vec![], vec![]);
        let rec_extra: &[&str] = if backup_reads {
            &["--backup-reads"]
        } else {
            &[]
        };
        let rep_extra: Vec<&str> = if backup_reads {
            vec!["--backup-reads", "--disk", &copy_arg]
        } else {
            vec![]
        };
        for _ in 0..3 {
            let run = batch("run", dir.path(), workload, append, None, &[])?;
            std::fs::copy(dir.path().join(format!("{workload}.img")), &copy)?;
            let rec = batch(
                "record",
                dir.path(),
                workload,
                append,
                Some(&log),
                rec_extra,
            )?;
            let bytes = std::fs::metadata(&log)?.len();
            let rep = replay(&log, &rep_extra)?;
            runs.push(run.wall_ms as f64);
            recs.push(rec.wall_ms as f64);
            bws.push(mbit(bytes, rec.wall_ms as f64));
            speeds.push(rec.wall_ms as f64 / rep.as_millis().max(1) as f64);
        }
        let (run, rec) = (median(runs), median(recs));
        table.row(vec![
            format!(
                "{workload} ({append}{})",
                if backup_reads { ", --backup-reads" } else { "" }
            ),
            format!("{run:.0} ms"),
            format!("{rec:.0} ms"),
            format!("{} (time)", ratio(rec, run)),
            format!("{:.2}", median(bws)),
            paper.into(),
            format!("{:.1}×", median(speeds)),
        ]);
    }
    // The key-value service under redis-benchmark: throughput ratio.
    let (run_rps, _) = kv("run", dir.path(), None, None)?;
    let (rec_rps, rec) = kv("record", dir.path(), Some(&log), None)?;
    let bytes = std::fs::metadata(&log)?.len();
    let rep = replay(&log, &[])?;
    table.row(vec![
        "kv: redis-benchmark set,get -c 50".into(),
        format!("{run_rps:.0} req/s"),
        format!("{rec_rps:.0} req/s"),
        format!("{} (throughput)", ratio(rec_rps, run_rps)),
        format!("{:.2}", mbit(bytes, rec.wall_ms as f64)),
        "MS-SQL DVD Store: 18 Mbit/s".into(),
        format!("{:.1}×", rec.wall_ms as f64 / rep.as_millis().max(1) as f64),
    ]);
    // An idle guest: timer wake-ups only.
    let (_, idle) = kv("record", dir.path(), Some(&log), Some(5_000))?;
    let bytes = std::fs::metadata(&log)?.len();
    let rep = replay(&log, &[])?;
    table.row(vec![
        "kv, idle 5 s".into(),
        "—".into(),
        "—".into(),
        "—".into(),
        format!("{:.3}", mbit(bytes, idle.wall_ms as f64)),
        "(goal ≤ 0.5)".into(),
        format!(
            "{:.1}×",
            idle.wall_ms as f64 / rep.as_millis().max(1) as f64
        ),
    ]);
    print!("{}", table.markdown());
    println!(
        "\nrecord ÷ run: median of 3 of the vCPU thread's wall time for batch workloads (lower is better; goal ≤ 1.02), \
         throughput for the kv service (higher is better; goal ≥ 0.98). Log bandwidth: log file bytes over the recording's \
         wall time. Replay speed: the recording's wall time over the replay's (≥ 1: a backup keeps up)."
    );
    Ok(())
}
