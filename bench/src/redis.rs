//! `redis-benchmark` against the guest's key-value service under
//! `lockstep run`, and against a stock redis-server on loopback in two
//! configurations: default, and `appendonly yes, appendfsync always` (the
//! guest's durability: every write on disk before its reply).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use lockstep_bench::netns::{GUEST_IP, Net};
use lockstep_bench::vm::{self, Stats, Vmm};

use crate::env::Machine;
use crate::report::{Table, ratio};

/// One row of `redis-benchmark --csv`.
#[derive(Clone, Debug, Default)]
pub struct Result {
    pub test: String,
    pub rps: f64,
    pub p99_ms: f64,
}

pub fn parse_csv(out: &str) -> Vec<Result> {
    out.lines()
        .filter(|l| !l.starts_with("\"test\""))
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').map(|x| x.trim_matches('"')).collect();
            (f.len() >= 7).then(|| Result {
                test: f[0].to_string(),
                rps: f[1].parse().unwrap_or(0.0),
                p99_ms: f[6].parse().unwrap_or(0.0),
            })
        })
        .collect()
}

/// Runs redis-benchmark (`cmd` already names the program and namespace).
pub fn run_benchmark(
    mut cmd: Command,
    host: &str,
    port: u16,
    n: u64,
    c: u32,
    pipeline: u32,
) -> anyhow::Result<Vec<Result>> {
    cmd.args([
        "-h",
        host,
        "-p",
        &port.to_string(),
        "-n",
        &n.to_string(),
        "-c",
        &c.to_string(),
    ])
    .args(["-P", &pipeline.to_string(), "-t", "set,get", "--csv"]);
    let out = cmd
        .output()
        .context("running redis-benchmark (apt-get install redis-tools)")?;
    if !out.status.success() {
        bail!(
            "redis-benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let rows = parse_csv(&String::from_utf8_lossy(&out.stdout));
    if rows.len() != 2 {
        bail!(
            "unexpected redis-benchmark output: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(rows)
}

/// A stock redis-server, with its data directory; stopped on drop.
pub struct Server {
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Server {
    /// A stock redis-server on loopback (`always`: `appendonly yes,
    /// appendfsync always`).
    fn start(port: u16, always: bool) -> anyhow::Result<Server> {
        let dir = tempfile::tempdir()?;
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ]);
        if always {
            cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
        }
        Server::spawn(cmd, dir, || {
            Command::new("redis-cli")
                .args(["-p", &port.to_string(), "ping"])
                .output()
        })
        .context("starting redis-server (apt-get install redis-server)")
    }

    /// Starts `cmd` (a redis-server, given `--dir DIR`) and waits until
    /// `ping` (a `redis-cli ... ping`) answers PONG.
    pub fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        ping: impl Fn() -> std::io::Result<std::process::Output>,
    ) -> anyhow::Result<Server> {
        cmd.arg("--dir").arg(dir.path()).stdout(Stdio::null());
        let child = cmd.spawn().context("spawning redis-server")?;
        // From here on a failure stops the child (drop).
        let server = Server { child, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while String::from_utf8_lossy(&ping()?.stdout).trim() != "PONG" {
            if Instant::now() > deadline {
                bail!("redis-server did not come up");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(server)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The guest under `lockstep run`, on a fresh disk, for one benchmark.
fn guest_run(n: u64, c: u32, pipeline: u32) -> anyhow::Result<(Vec<Result>, Stats)> {
    let net = Net::single("bench")?;
    let dir = tempfile::tempdir()?;
    let mut cmd = net.cmd("h", &vm::lockstep_bin().display().to_string());
    cmd.args(["run", "--tap", &net.tap(), "--disk"])
        .arg(dir.path().join("disk.img"));
    let mut vmm = Vmm::spawn(cmd)?;
    vmm.wait_for("kv: serving RESP", Duration::from_secs(30))?;
    let rows = run_benchmark(
        net.cmd("c", "redis-benchmark"),
        GUEST_IP,
        6379,
        n,
        c,
        pipeline,
    )?;
    let stats = vmm.stop()?;
    Ok((rows, stats))
}

pub fn compare(machine: &Machine, n: u64, c: u32) -> anyhow::Result<()> {
    println!("## redis-benchmark: guest under `lockstep run` vs stock redis-server\n");
    println!(
        "`redis-benchmark -n {n} -c {c} -t set,get [-P 16]`; the stock servers on loopback, the guest through its tap from a client namespace.\n"
    );
    let mut table = Table::new(&[
        "test",
        "redis default",
        "redis always",
        "lockstep",
        "÷ default",
        "÷ always",
        "exits/req",
        "time: guest / VMM / idle / switches",
    ]);
    for pipeline in [1, 16] {
        let stock = |port: u16, always: bool| {
            let _server = Server::start(port, always)?;
            run_benchmark(
                Command::new("redis-benchmark"),
                "127.0.0.1",
                port,
                n,
                c,
                pipeline,
            )
        };
        let default = stock(7101, false)?;
        let always = stock(7102, true)?;
        let (ours, stats) = guest_run(n, c, pipeline)?;
        let requests = 2 * n;
        let switch_ms = stats.exits as f64 * machine.lockstep_exit_us / 1000.0;
        let wall = stats.wall_ms.max(1) as f64;
        let shares = format!(
            "{:.0}% / {:.0}% / {:.0}% / ~{:.0}%",
            100.0 * stats.guest_ms as f64 / wall,
            100.0 * stats.vmm_ms as f64 / wall,
            100.0 * stats.wait_ms as f64 / wall,
            100.0 * switch_ms / wall
        );
        for i in 0..2 {
            let (d, a, o) = (&default[i], &always[i], &ours[i]);
            let name = if pipeline > 1 {
                format!("{} -P {pipeline}", o.test)
            } else {
                o.test.clone()
            };
            let cell = |r: &Result| format!("{:.0} (p99 {:.2} ms)", r.rps, r.p99_ms);
            table.row(vec![
                name,
                cell(d),
                cell(a),
                cell(o),
                ratio(o.rps, d.rps),
                ratio(o.rps, a.rps),
                format!("{:.3}", stats.exits as f64 / requests as f64),
                shares.clone(),
            ]);
        }
    }
    print!("{}", table.markdown());
    println!(
        "\nexits/req: all exits of the VM's life (boot included) over the SET+GET requests. Time shares of the \
         vCPU thread's wall time: inside KVM_RUN (guest code and the exits' world switches), handling exits in \
         the VMM, blocked in an idle sync wait, and the estimated world-switch part (exits × the measured \
         {:.1} µs round trip).",
        machine.lockstep_exit_us
    );
    Ok(())
}
