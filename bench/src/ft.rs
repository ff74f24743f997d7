//! The FT pair against one VM (issue 10): redis-benchmark throughput with
//! and without fault tolerance on the same hosts, the latency the output
//! rule adds beside the logging link's round trip, the logging bandwidth,
//! and how long a failover takes as clients see it.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use lockstep_bench::netns::{GUEST_IP, Net};
use lockstep_bench::pair::{self, Host, PairConfig};
use lockstep_bench::vm::{self, Vmm};

use crate::redis::{Result as BenchResult, run_benchmark};
use crate::report::{Table, median, ratio};

/// Starts a backup on B and a primary on A; returns (primary, backup).
fn start_pair(
    net: &Net,
    dir: &Path,
    heartbeat_ms: u64,
    timeout_ms: u64,
    insecure: bool,
) -> anyhow::Result<(Vmm, Vmm)> {
    let mut cfg = PairConfig::new(net, dir);
    cfg.heartbeat_ms = heartbeat_ms;
    cfg.failure_timeout_ms = timeout_ms;
    cfg.insecure = insecure;
    let p = pair::start(&cfg)?;
    Ok((p.primary, p.backup))
}

fn benchmark(net: &Net, pipeline: u32, n: u64) -> anyhow::Result<Vec<BenchResult>> {
    run_benchmark(
        net.cmd("c", "redis-benchmark"),
        GUEST_IP,
        6379,
        n,
        50,
        pipeline,
    )
}

/// The `output rule:` line the primary logs when it stops.
fn output_rule_line(log: &str) -> Option<String> {
    log.lines()
        .find(|l| l.contains("output rule:"))
        .and_then(|l| l.split("output rule: ").nth(1))
        .map(str::to_string)
}

/// Milliseconds since the epoch of the first log line containing `needle`
/// (tracing prints an RFC 3339 UTC timestamp first).
fn logged_at_ms(log: &str, needle: &str) -> Option<u128> {
    let line = log.lines().find(|l| l.contains(needle))?;
    let clean: String = line.chars().filter(|c| !c.is_control()).collect();
    let stamp = clean
        .split_whitespace()
        .next()?
        .trim_start_matches("[2m")
        .trim_end_matches("[0m");
    let out = Command::new("date")
        .args(["-d", stamp, "+%s%3N"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

pub fn compare(n: u64, failovers: usize) -> anyhow::Result<()> {
    println!("## The FT pair against one VM (both hosts on this machine)\n");
    let net = Net::ft("bft")?;
    let dir = tempfile::tempdir()?;
    let bin = vm::lockstep_bin().display().to_string();
    println!(
        "`redis-benchmark -n {n} -c 50 -t set,get [-P 16]` from the client LAN; one VM on host A, then the pair (primary on A, backup on B); three rounds alternately, medians.\n"
    );

    // One VM on host A, the pair, and the pair with --insecure,
    // alternately, three rounds; medians.
    let mut single: Vec<Vec<Vec<BenchResult>>> = Vec::new();
    let mut pair: Vec<Vec<Vec<BenchResult>>> = Vec::new();
    let mut plain: Vec<Vec<Vec<BenchResult>>> = Vec::new();
    let mut bandwidth = Vec::new();
    let mut rule = String::from("not reported");
    for round in 0..3 {
        let mut cmd = net.cmd("a", &bin);
        cmd.args(["run", "--tap", &net.tap(), "--cpus", "0,1", "--disk"])
            .arg(dir.path().join(format!("single{round}.img")));
        let mut vmm = Vmm::spawn(cmd)?;
        vmm.wait_for("kv: serving", Duration::from_secs(30))?;
        single.push(
            [1, 16]
                .iter()
                .map(|p| benchmark(&net, *p, n))
                .collect::<anyhow::Result<_>>()?,
        );
        vmm.stop()?;

        let plain_dir = dir.path().join(format!("insecure{round}"));
        std::fs::create_dir_all(&plain_dir)?;
        let (primary, backup) = start_pair(&net, &plain_dir, 100, 1000, true)?;
        plain.push(
            [1, 16]
                .iter()
                .map(|p| benchmark(&net, *p, n))
                .collect::<anyhow::Result<_>>()?,
        );
        primary.stop_log()?;
        drop(backup);

        let round_dir = dir.path().join(format!("pair{round}"));
        std::fs::create_dir_all(&round_dir)?;
        let (primary, backup) = start_pair(&net, &round_dir, 100, 1000, false)?;
        let before = pair::log_bytes(&net);
        let started = Instant::now();
        pair.push(
            [1, 16]
                .iter()
                .map(|p| benchmark(&net, *p, n))
                .collect::<anyhow::Result<_>>()?,
        );
        let secs = started.elapsed().as_secs_f64();
        let after = pair::log_bytes(&net);
        bandwidth.push(after.saturating_sub(before) as f64 * 8.0 / secs / 1e6);
        let primary_log = primary.stop_log()?;
        drop(backup);
        if let Some(r) = output_rule_line(&primary_log) {
            rule = r;
        }
    }
    let mbit = median(bandwidth);

    let mut t = Table::new(&[
        "test",
        "lockstep run",
        "FT pair (encrypted)",
        "FT ÷ run",
        "FT --insecure",
        "encrypted ÷ insecure",
        "p99 run",
        "p99 FT",
    ]);
    for (i, p) in [1, 16].iter().enumerate() {
        for j in 0..2 {
            let pick = |runs: &Vec<Vec<Vec<BenchResult>>>, f: fn(&BenchResult) -> f64| {
                median(runs.iter().map(|r| f(&r[i][j])).collect())
            };
            let (s_rps, f_rps) = (pick(&single, |r| r.rps), pick(&pair, |r| r.rps));
            let i_rps = pick(&plain, |r| r.rps);
            let test = &single[0][i][j].test;
            let name = if *p > 1 {
                format!("{test} -P {p}")
            } else {
                test.clone()
            };
            t.row(vec![
                name,
                format!("{s_rps:.0}"),
                format!("{f_rps:.0}"),
                ratio(f_rps, s_rps),
                format!("{i_rps:.0}"),
                ratio(f_rps, i_rps),
                format!("{:.2} ms", pick(&single, |r| r.p99_ms)),
                format!("{:.2} ms", pick(&pair, |r| r.p99_ms)),
            ]);
        }
    }
    print!("{}", t.markdown());
    println!(
        "\nlogging bandwidth during the benchmark: {mbit:.1} Mbit/s (paper, Table 1: 1.5–18 Mbit/s)"
    );
    println!("output rule during the benchmark: {rule}\n");
    drop(net);
    failover_times(dir.path(), failovers)
}

/// What a series of failovers measured.
#[derive(Clone, Debug, Default)]
pub struct Failovers {
    /// From the `kill -9` of the primary to the backup's "going live".
    pub live_ms: Vec<f64>,
    /// The longest pause between two acknowledged SETs across it.
    pub outage_ms: Vec<f64>,
    /// Runs in which an acknowledged write was lost.
    pub lost: u64,
}

/// Where the pair of a failover run is placed.
pub struct Placed<'a> {
    pub primary_cpus: String,
    pub backup_cpus: String,
    pub adopt: &'a dyn Fn(Host, u32) -> anyhow::Result<()>,
}

/// What the backup logs the moment it goes live (after the arbiter and the
/// wait for the primary's lease), before its first output.
const LIVE: &str = "going live: sending";

/// `runs` failovers under client load, each on fresh hosts, with a 10 ms
/// heartbeat and a 50 ms timeout; `placed` overrides the pair's CPU
/// placement, and `each` is told when a run ended.
pub fn failovers(
    dir: &Path,
    runs: usize,
    placed: Option<&Placed<'_>>,
    each: &dyn Fn(usize),
) -> anyhow::Result<Failovers> {
    failovers_with_lease(dir, runs, None, placed, each)
}

/// [`failovers`] with the primary's output lease set (`None`: the
/// default, the failure timeout).
pub fn failovers_with_lease(
    dir: &Path,
    runs: usize,
    lease_ms: Option<u64>,
    placed: Option<&Placed<'_>>,
    each: &dyn Fn(usize),
) -> anyhow::Result<Failovers> {
    let tools = vm::repo().join("target/release/lockstep-bench");
    let mut f = Failovers::default();
    for run in 0..runs {
        let run_dir = dir.join(format!("failover{run}"));
        std::fs::create_dir_all(&run_dir)?;
        // Fresh hosts and LAN each time: no switch remembers the last run.
        let fresh = Net::ft("bfo")?;
        let net = &fresh;
        let mut cfg = PairConfig::new(net, &run_dir);
        cfg.heartbeat_ms = 10;
        cfg.failure_timeout_ms = 50;
        cfg.lease_ms = lease_ms;
        if let Some(p) = placed {
            cfg.primary_cpus = p.primary_cpus.clone();
            cfg.backup_cpus = p.backup_cpus.clone();
            cfg.adopt = p.adopt;
        }
        let p = pair::start(&cfg)?;
        let (primary, backup) = (p.primary, p.backup);
        let acked = run_dir.join("acked.txt");
        let writer = net
            .cmd("c", &tools.display().to_string())
            .args([
                "kv-writer",
                "--connections",
                "4",
                "--seconds",
                "3",
                "--acked",
            ])
            .arg(&acked)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .context("kv-writer")?;
        std::thread::sleep(Duration::from_millis(1500));
        let killed = now_ms();
        primary.signal(libc::SIGKILL);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !backup.log().contains(LIVE) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = writer.wait_with_output()?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if let Some(at) = logged_at_ms(&backup.log(), LIVE) {
            f.live_ms.push(at.saturating_sub(killed) as f64);
        }
        if let Some(ms) = text
            .split("longest pause between acknowledgements: ")
            .nth(1)
            .and_then(|t| t.split_whitespace().next())
            .and_then(|n| n.parse::<f64>().ok())
        {
            f.outage_ms.push(ms);
        }
        let check = net
            .cmd("c", &tools.display().to_string())
            .args(["kv-check", "--acked"])
            .arg(&acked)
            .output()?;
        if !check.status.success() {
            f.lost += 1;
        }
        drop(backup);
        each(run);
    }
    Ok(f)
}

/// "median X ms, max Y ms" of a sample.
fn median_max(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.last() {
        None => "n/a".to_string(),
        Some(max) => format!("median {:.0} ms, max {max:.0} ms", v[v.len() / 2]),
    }
}

/// Client-visible failover with a 10 ms heartbeat and a 50 ms timeout.
fn failover_times(dir: &Path, runs: usize) -> anyhow::Result<()> {
    let Failovers {
        mut live_ms,
        mut outage_ms,
        lost,
    } = failovers(dir, runs, None, &|_| {})?;
    let stat = |v: &mut Vec<f64>| median_max(v);
    let mut t = Table::new(&[
        "failovers",
        "kill → backup live",
        "client-visible outage",
        "runs that lost an acknowledged write",
    ]);
    t.row(vec![
        runs.to_string(),
        stat(&mut live_ms),
        stat(&mut outage_ms),
        lost.to_string(),
    ]);
    print!("{}", t.markdown());
    println!(
        "\nHeartbeat every 10 ms, peer declared dead after 50 ms of silence. Outage: the longest pause between two \
         acknowledged SETs of 4 writers across the failover (goal < 150 ms; the paper's failovers take seconds)."
    );
    Ok(())
}

/// The output lease's trade-off (docs/failover.md, "Fencing"): for each
/// lease length, failovers under load (kill → live, client-visible
/// outage), the gap between acks the primary's outputs ride through
/// without stalling (the lease less its margin), and the pause after which
/// the backup takes over (the failure timeout, the same for all).
pub fn lease_tradeoff(runs: usize) -> anyhow::Result<()> {
    println!("## The output lease: failover time against tolerated ack gaps\n");
    let dir = tempfile::tempdir()?;
    let mut t = Table::new(&[
        "lease",
        "kill → backup live",
        "client-visible outage",
        "ack gap outputs ride through",
        "primary pause that fails over",
        "runs that lost a write",
    ]);
    // Interleaved: one failover per lease length per round.
    let leases = [25u64, 50, 100, 200];
    let mut live: Vec<Vec<f64>> = vec![Vec::new(); leases.len()];
    let mut outage: Vec<Vec<f64>> = vec![Vec::new(); leases.len()];
    let mut lost = vec![0u64; leases.len()];
    for round in 0..runs {
        for (i, lease) in leases.iter().enumerate() {
            let d = dir.path().join(format!("l{lease}r{round}"));
            let f = failovers_with_lease(&d, 1, Some(*lease), None, &|_| {})?;
            live[i].extend(f.live_ms);
            outage[i].extend(f.outage_ms);
            lost[i] += f.lost;
        }
        eprintln!("round {} of {runs} done", round + 1);
    }
    for (i, lease) in leases.iter().enumerate() {
        let margin = *lease as f64 / 100.0 + 0.5;
        t.row(vec![
            format!("{lease} ms"),
            median_max(&mut live[i]),
            median_max(&mut outage[i]),
            format!("{:.1} ms", *lease as f64 - margin),
            "> 50 ms".to_string(),
            lost[i].to_string(),
        ]);
    }
    print!("{}", t.markdown());
    println!(
        "\nHeartbeat every 10 ms, failure timeout 50 ms, {runs} failovers per lease, interleaved. The backup goes live \
         no sooner than its last ack plus the lease: a lease up to the failure timeout costs no failover time; a longer \
         one delays go-live by the difference, and lets outputs ride through longer gaps between acks."
    );
    Ok(())
}
