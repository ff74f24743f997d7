//! Stock redis-server through the guest's Linux personality (issue 19):
//! the same static musl build, the same configuration (`appendonly yes,
//! appendfsync always`, no saves, one I/O thread), run natively on the host,
//! in one VM under `lockstep run`, and in the FT pair, side by side; with
//! the guest's system calls and exits per request, and the CPU cost of one
//! system call in the guest beside the same call native.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use lockstep_bench::apps::{REDIS_ARGS, REDIS_READY as READY, build};
use lockstep_bench::netns::{GUEST_IP, Net};
use lockstep_bench::pair::{self, PairConfig};
use lockstep_bench::vm::{self, Stats, Vmm};

use crate::redis::{Result as BenchResult, Server, run_benchmark};
use crate::report::{Table, median};

#[derive(Args, Debug)]
pub struct AppArgs {
    /// Requests per redis-benchmark test.
    #[arg(long, default_value_t = 20_000)]
    requests: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 50)]
    clients: u32,
    /// System calls in the cost measurement.
    #[arg(long, default_value_t = 200_000)]
    syscalls: u64,
    /// Rounds of the four set-ups, taken in turn; the table shows medians
    /// (of the rates, and of each round's ratios).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
}

/// One round: the four set-ups one after the other.
struct Round {
    native: Vec<BenchResult>,
    run: Vec<BenchResult>,
    trap: Vec<BenchResult>,
    pair: Vec<BenchResult>,
    /// The `lockstep run`'s stats and log.
    stats: Stats,
    log: String,
}

fn one_round(redis: &Path, a: &AppArgs, pipeline: u32) -> anyhow::Result<Round> {
    let native = {
        let net = Net::single("appn")?;
        let ip = ["addr", "add", &format!("{HOST_IP}/24"), "dev", "br0"];
        let s = net.cmd("h", "ip").args(ip).status()?;
        if !s.success() {
            bail!("cannot give the bridge an address");
        }
        let _server = native(&net, redis)?;
        bench(&net, HOST_IP, a, pipeline)?
    };
    let (run, stats, log) = run_one(redis, a, pipeline, true)?;
    let (trap, _, tlog) = run_one(redis, a, pipeline, false)?;
    if linux_field(&tlog, "by_call") != Some(0) {
        bail!("syscalls=trap, yet system calls came by call:\n{tlog}");
    }
    let pair = run_pair(redis, a, pipeline)?;
    Ok(Round {
        native,
        run,
        trap,
        pair,
        stats,
        log,
    })
}

/// Where the native server listens: the VM host's bridge, so clients cross
/// the same veth and bridge as to the guest (all but the tap and the VMM).
const HOST_IP: &str = "10.77.0.3";

/// A `name=N` field of the personality's closing `linux:` line.
fn linux_field(log: &str, name: &str) -> Option<u64> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("linux: exit status"))?;
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
}

/// The native redis-server in the VM host's namespace, killed on drop.
fn native(net: &Net, redis: &Path) -> anyhow::Result<Server> {
    let dir = tempfile::tempdir_in(vm::repo().join("target"))?;
    let mut cmd = net.cmd("h", &redis.display().to_string());
    cmd.args(["--bind", HOST_IP]).args(REDIS_ARGS);
    Server::spawn(cmd, dir, || {
        net.cmd("c", "redis-cli")
            .args(["-h", HOST_IP, "ping"])
            .output()
    })
    .context("starting the native redis-server")
}

fn bench(net: &Net, host: &str, a: &AppArgs, pipeline: u32) -> anyhow::Result<Vec<BenchResult>> {
    run_benchmark(
        net.cmd("c", "redis-benchmark"),
        host,
        6379,
        a.requests,
        a.clients,
        pipeline,
    )
}

/// The VMM command line that runs redis from `disk`.
fn app_args(redis: &Path) -> Vec<String> {
    let mut v: Vec<String> = ["--mem", "256", "--disk-size", "128", "--app"]
        .map(String::from)
        .to_vec();
    v.push(redis.display().to_string());
    v.push("--".into());
    v.extend(REDIS_ARGS.map(String::from));
    v
}

/// redis in one VM (`rewrite`: its system calls rewritten to `call rax`,
/// the default; otherwise `syscalls=trap`, each through `SYSCALL` and the
/// ring-0 stub): the results, the VMM's stats and its log.
fn run_one(
    redis: &Path,
    a: &AppArgs,
    pipeline: u32,
    rewrite: bool,
) -> anyhow::Result<(Vec<BenchResult>, Stats, String)> {
    let net = Net::single("appb")?;
    let dir = tempfile::tempdir_in(vm::repo().join("target"))?;
    let mut cmd = net.cmd("h", &vm::lockstep_bin().display().to_string());
    cmd.args(["run", "--tap", &net.tap(), "--disk"])
        .arg(dir.path().join("disk.img"));
    if !rewrite {
        cmd.args(["--append", "syscalls=trap"]);
    }
    cmd.args(app_args(redis));
    let mut vmm = Vmm::spawn(cmd)?;
    vmm.wait_for(READY, Duration::from_secs(60))?;
    let rows = bench(&net, GUEST_IP, a, pipeline)?;
    let log = vmm.stop_log()?;
    let stats = Stats::parse(&log).context("no stats line")?;
    Ok((rows, stats, log))
}

/// redis in the FT pair (primary on A, backup on B), started like every
/// pair of the harness (`lockstep_bench::pair`).
fn run_pair(redis: &Path, a: &AppArgs, pipeline: u32) -> anyhow::Result<Vec<BenchResult>> {
    let net = Net::ft("appf")?;
    let dir = tempfile::tempdir_in(vm::repo().join("target"))?;
    let mut cfg = PairConfig::new(&net, dir.path());
    cfg.heartbeat_ms = 20;
    cfg.failure_timeout_ms = 500;
    cfg.primary_extra = app_args(redis);
    cfg.ready = Some(READY);
    let _pair = pair::start(&cfg)?;
    bench(&net, GUEST_IP, a, pipeline)
}

/// CPU time of one system call in the guest, by `call` and by `SYSCALL`,
/// and natively (µs).
fn syscall_cost(getppid: &Path, n: u64) -> anyhow::Result<(f64, f64, f64)> {
    let guest_ms = |calls: u64, trap: bool| -> anyhow::Result<u64> {
        let dir = tempfile::tempdir_in(vm::repo().join("target"))?;
        let mut cmd = Command::new(vm::lockstep_bin());
        cmd.args(["run", "--mem", "64", "--disk-size", "64", "--app"])
            .arg(getppid)
            .arg("--disk")
            .arg(dir.path().join("disk.img"));
        if trap {
            cmd.args(["--append", "syscalls=trap"]);
        }
        let out = cmd
            .args(["--", &calls.to_string()])
            .env("RUST_LOG", "info")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Stats::parse(&text).context("no stats line")?.guest_ms)
    };
    let per_call = |trap: bool| -> anyhow::Result<f64> {
        let ms = guest_ms(n, trap)?.saturating_sub(guest_ms(0, trap)?);
        Ok(ms as f64 * 1000.0 / n as f64)
    };
    let (by_call, by_trap) = (per_call(false)?, per_call(true)?);
    let native = |calls: u64| -> anyhow::Result<Duration> {
        let t = Instant::now();
        Command::new(getppid).arg(calls.to_string()).status()?;
        Ok(t.elapsed())
    };
    let native = (native(n)?.saturating_sub(native(0)?)).as_secs_f64() * 1e6 / n as f64;
    Ok((by_call, by_trap, native))
}

pub fn compare(a: &AppArgs) -> anyhow::Result<()> {
    let redis = build("redis")?.remove(0);
    let getppid = build("probes")?.remove(2);
    println!("## Stock redis-server: native, in `lockstep run`, in the FT pair (issue 19)\n");
    println!(
        "`redis-benchmark -n {} -c {} -t set,get [-P 16]` from a client namespace, {} rounds of the four set-ups in turn, medians; redis-server 7.0 built with musl \
         from Debian's source (`scripts/build-apps`), `{}`. Native: the same binary in the VM host's namespace, \
         bound to its bridge (the clients cross the same veth and bridge, not the tap or the VMM).\n",
        a.requests,
        a.clients,
        a.rounds,
        REDIS_ARGS.join(" ").replace("  ", " \"\" ")
    );
    let mut table = Table::new(&[
        "test",
        "native",
        "lockstep run",
        "FT pair",
        "run, SYSCALL",
        "run ÷ native",
        "FT ÷ run",
        "SYSCALL ÷ native",
        "run ÷ SYSCALL",
        "p99 native / run / FT",
        "syscalls/req (by call)",
        "exits/req",
    ]);
    for pipeline in [1, 16] {
        let mut rounds = Vec::new();
        for round in 1..=a.rounds {
            eprintln!("app bench: -P {pipeline}, round {round} of {}", a.rounds);
            rounds.push(one_round(&redis, a, pipeline)?);
        }
        let last = rounds.last().context("no rounds (--rounds 0)")?;
        let requests = (2 * a.requests) as f64;
        let syscalls = linux_field(&last.log, "syscalls").unwrap_or(0) as f64;
        let by_call = linux_field(&last.log, "by_call").unwrap_or(0) as f64;
        let exits = last.stats.exits as f64;
        for i in 0..2 {
            let name = if pipeline > 1 {
                format!("{} -P {pipeline}", last.run[i].test)
            } else {
                last.run[i].test.clone()
            };
            let med = |f: &dyn Fn(&Round) -> f64| median(rounds.iter().map(f).collect());
            let per = |x: &Round, f: fn(&Round) -> &Vec<BenchResult>| f(x)[i].rps;
            let rps = |f: fn(&Round) -> &Vec<BenchResult>| format!("{:.0}", med(&|r| per(r, f)));
            let over = |f: fn(&Round) -> &Vec<BenchResult>, g: fn(&Round) -> &Vec<BenchResult>| {
                format!("{:.2}", med(&|r| per(r, f) / per(r, g).max(1e-9)))
            };
            let p99 = |f: fn(&Round) -> &Vec<BenchResult>| med(&|r| f(r)[i].p99_ms);
            table.row(vec![
                name,
                rps(|r| &r.native),
                rps(|r| &r.run),
                rps(|r| &r.pair),
                rps(|r| &r.trap),
                over(|r| &r.run, |r| &r.native),
                over(|r| &r.pair, |r| &r.run),
                over(|r| &r.trap, |r| &r.native),
                over(|r| &r.run, |r| &r.trap),
                format!(
                    "{:.2} / {:.2} / {:.2} ms",
                    p99(|r| &r.native),
                    p99(|r| &r.run),
                    p99(|r| &r.pair)
                ),
                format!("{:.2} ({:.2})", syscalls / requests, by_call / requests),
                format!("{:.3}", exits / requests),
            ]);
        }
    }
    print!("{}", table.markdown());
    let (by_call, by_trap, native) = syscall_cost(&getppid, a.syscalls)?;
    println!(
        "\nsyscalls/req and exits/req: the guest's whole life (boot, AOF creation) over the SET+GET requests of \
         one `lockstep run` (system calls rewritten to `call rax` where the check allows, and the vDSO: the \
         defaults); \"by call\": those that took the rewritten path. \"SYSCALL\": the same with \
         `--append syscalls=trap`, every system call through `SYSCALL` and the ring-0 stub.\n\nOne system call \
         (`getppid`, {} calls, CPU time inside KVM_RUN for the guest, wall time natively): by call {by_call:.2} µs, \
         by `SYSCALL` {by_trap:.2} µs, native {native:.3} µs ({:.0}× and {:.0}× native).",
        a.syscalls,
        by_call / native.max(1e-9),
        by_trap / native.max(1e-9)
    );
    Ok(())
}
