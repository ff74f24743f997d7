//! Running `lockstep` for a benchmark: spawn, wait for the guest, stop,
//! and read the VMM's statistics line.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `lockstep` binary (`LOCKSTEP_BIN` overrides).
pub fn lockstep_bin() -> PathBuf {
    std::env::var_os("LOCKSTEP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/lockstep"))
}

/// A running VMM whose output is collected.
pub struct Vmm {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Vmm {
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Vmm> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let log = Arc::new(Mutex::new(String::new()));
        let streams: Vec<Box<dyn std::io::Read + Send>> = vec![
            Box::new(child.stdout.take().context("stdout")?),
            Box::new(child.stderr.take().context("stderr")?),
        ];
        for s in streams {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    if let Ok(mut l) = log.lock() {
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        Ok(Vmm { child, log })
    }

    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "lockstep exited ({status}) before {needle:?}:\n{}",
                    self.log()
                );
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// SIGKILL: the host dies.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
    }

    /// SIGTERM, wait for the exit; returns everything it printed.
    pub fn stop_log(mut self) -> anyhow::Result<String> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("lockstep did not stop:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        std::thread::sleep(Duration::from_millis(100));
        Ok(self.log())
    }

    /// SIGTERM, wait for the exit, return the statistics it printed.
    pub fn stop(mut self) -> anyhow::Result<Stats> {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("lockstep did not stop:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            if let Some(s) = Stats::parse(&self.log()) {
                return Ok(s);
            }
            if Instant::now() > deadline {
                bail!("no stats line in:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vmm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The VMM's `stats:` line.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub exits: u64,
    pub wall_ms: u64,
    pub guest_ms: u64,
    pub vmm_ms: u64,
    pub wait_ms: u64,
}

impl Stats {
    pub fn parse(log: &str) -> Option<Stats> {
        let line = log.lines().rev().find(|l| l.contains("stats: exits="))?;
        let field = |k: &str| -> Option<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{k}=")))
                .and_then(|v| v.parse().ok())
        };
        Some(Stats {
            exits: field("exits")?,
            wall_ms: field("wall_ms")?,
            guest_ms: field("guest_ms")?,
            vmm_ms: field("vmm_ms")?,
            wait_ms: field("wait_ms")?,
        })
    }
}

/// Assembles a tiny guest from `src` into `dir`.
pub fn asm_guest(dir: &Path, src: &str) -> anyhow::Result<PathBuf> {
    let s = dir.join("g.S");
    let o = dir.join("g.o");
    let elf = dir.join("g.elf");
    std::fs::write(&s, src)?;
    for (prog, args) in [
        (
            "as",
            vec![
                "--64".into(),
                "-o".into(),
                o.display().to_string(),
                s.display().to_string(),
            ],
        ),
        (
            "ld",
            vec![
                "-static".into(),
                "-nostdlib".into(),
                "-Ttext-segment=0x200000".into(),
                "-e".into(),
                "_start".into(),
                "-o".into(),
                elf.display().to_string(),
                o.display().to_string(),
            ],
        ),
    ] {
        let st = Command::new(prog)
            .args(&args)
            .status()
            .with_context(|| format!("running {prog}"))?;
        if !st.success() {
            bail!("{prog} failed");
        }
    }
    Ok(elf)
}

/// A guest that makes `$N` non-waiting sync calls and exits.
const SYNC_LOOP: &str = ".globl _start\n.text\n_start:\n  mov $N, %rbx\n  mov $0x510, %dx\n1: lea blk(%rip), %rax\n  out %eax, %dx\n  dec %rbx\n  jnz 1b\n  xor %eax, %eax\n  mov $0x512, %dx\n  out %eax, %dx\n.data\n.align 16\nblk: .quad 0, 0, 0, 0\n";

/// µs per sync-call exit through lockstep: two runs with n and 2n exits,
/// so boot and teardown cancel out.
pub fn exit_cost_us(n: u64) -> anyhow::Result<f64> {
    let dir = std::env::temp_dir().join(format!("lockstep-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let time = |count: u64| -> anyhow::Result<Duration> {
        let elf = asm_guest(&dir, &SYNC_LOOP.replace("$N", &format!("${count}")))?;
        let started = Instant::now();
        let out = Command::new(lockstep_bin())
            .args(["run", "--mem", "64", "--disk"])
            .arg(dir.join("d.img"))
            .arg("--kernel")
            .arg(&elf)
            .output()
            .context("running lockstep (build it first: cargo build --release)")?;
        if !out.status.success() {
            bail!(
                "exit-cost guest failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(started.elapsed())
    };
    let one = time(n)?;
    let two = time(2 * n)?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(two.saturating_sub(one).as_secs_f64() * 1e6 / n as f64)
}
