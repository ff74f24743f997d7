//! Running `lockstep` from the benchmark harness and the integration tests:
//! spawn it with its output collected, wait for a line or for the exit,
//! stop it and read its statistics line; tiny assembled guests.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The workspace root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The release `lockstep` binary (`LOCKSTEP_BIN` overrides).
pub fn lockstep_bin() -> PathBuf {
    std::env::var_os("LOCKSTEP_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/release/lockstep"))
}

/// How long an exited VMM's output may take to reach EOF: its last lines
/// are still in the pipes when the exit is seen.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// Everything the VMM printed, and how many of its streams are still open.
struct Output {
    text: String,
    open: usize,
}

/// The readers' shared [`Output`], and the signal that a stream closed.
struct Collected {
    out: Mutex<Output>,
    closed: Condvar,
}

impl Collected {
    fn lock(&self) -> MutexGuard<'_, Output> {
        // The readers only append text: a poisoned log is still a log.
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running VMM whose stdout and stderr are collected into one log;
/// killed on drop.
pub struct Vmm {
    child: Child,
    collected: Arc<Collected>,
}

impl Vmm {
    /// Spawns `cmd` (with `RUST_LOG=info`), collecting its output.
    pub fn spawn(mut cmd: Command) -> anyhow::Result<Vmm> {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
        let streams: Vec<Box<dyn Read + Send>> = vec![
            Box::new(child.stdout.take().context("stdout")?),
            Box::new(child.stderr.take().context("stderr")?),
        ];
        let collected = Arc::new(Collected {
            out: Mutex::new(Output {
                text: String::new(),
                open: streams.len(),
            }),
            closed: Condvar::new(),
        });
        for s in streams {
            let c = collected.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(s).lines().map_while(Result::ok) {
                    let mut o = c.lock();
                    o.text.push_str(&line);
                    o.text.push('\n');
                }
                c.lock().open -= 1;
                c.closed.notify_all();
            });
        }
        Ok(Vmm { child, collected })
    }

    pub fn log(&self) -> String {
        self.collected.lock().text.clone()
    }

    /// Waits until both streams have closed (or [`DRAIN_TIMEOUT`] passed,
    /// should something else hold them open): for an exited VMM, the log
    /// then has all it printed.
    fn wait_drained(&self) {
        let out = self.collected.lock();
        let _ = self
            .collected
            .closed
            .wait_timeout_while(out, DRAIN_TIMEOUT, |o| o.open > 0);
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// The process id (the VMM's own: `ip netns exec` and the placement
    /// wrapper `exec` it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the exit; returns its status and the CPU time the whole
    /// process used (all threads, from `wait4`'s rusage: exact even for
    /// threads that ended before the process).
    pub fn wait_exit_cpu(&mut self, timeout: Duration) -> anyhow::Result<(i32, Duration)> {
        let deadline = Instant::now() + timeout;
        let pid = self.child.id() as libc::pid_t;
        loop {
            let mut status = 0;
            // SAFETY: an all-zero rusage is a valid value of the plain C struct.
            let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: wait4 on our own child with live out-pointers.
            let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
            if r == pid {
                self.wait_drained();
                let tv = |t: libc::timeval| {
                    Duration::from_secs(t.tv_sec.max(0) as u64)
                        + Duration::from_micros(t.tv_usec.max(0) as u64)
                };
                return Ok((status, tv(ru.ru_utime) + tv(ru.ru_stime)));
            }
            if r < 0 {
                bail!("wait4({pid}): {}", std::io::Error::last_os_error());
            }
            if Instant::now() > deadline {
                bail!("lockstep did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The exit status, if the VMM has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits until a line containing `needle` was printed; an error (with
    /// the log) if the VMM exits first or `timeout` passes.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.log().contains(needle) {
            if let Some(status) = self.child.try_wait()? {
                self.wait_drained();
                let log = self.log();
                if log.contains(needle) {
                    return Ok(());
                }
                bail!("lockstep exited ({status}) before printing {needle:?}:\n{log}");
            }
            if Instant::now() > deadline {
                bail!("no {needle:?} within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Waits for the exit, and for the output it printed before it.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.wait_drained();
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("lockstep did not exit within {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM, wait for the exit (killed after 30 s); returns everything
    /// it printed.
    pub fn stop_log(mut self) -> anyhow::Result<String> {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(30))?;
        Ok(self.log())
    }

    /// SIGTERM, wait for the exit, return the statistics it printed.
    pub fn stop(self) -> anyhow::Result<Stats> {
        let log = self.stop_log()?;
        Stats::parse(&log).with_context(|| format!("no stats line in:\n{log}"))
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

/// Runs `cmd` to its end; an error with its output if it fails.
fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Assembles the guest source `src` into a static ELF `dir/NAME` at
/// 0x200000 (its object `dir/NAME.o` beside it).
pub fn asm_guest(src: &Path, dir: &Path, name: &str) -> anyhow::Result<PathBuf> {
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(name);
    run_ok(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(src))?;
    run_ok(
        Command::new("ld")
            .args([
                "-static",
                "-nostdlib",
                "-Ttext-segment=0x200000",
                "-e",
                "_start",
                "-o",
            ])
            .arg(&elf)
            .arg(&obj),
    )?;
    Ok(elf)
}

/// A guest that makes `$N` non-waiting sync calls and exits.
const SYNC_LOOP: &str = ".globl _start\n.text\n_start:\n  mov $N, %rbx\n  mov $0x510, %dx\n1: lea blk(%rip), %rax\n  out %eax, %dx\n  dec %rbx\n  jnz 1b\n  xor %eax, %eax\n  mov $0x512, %dx\n  out %eax, %dx\n.data\n.align 16\nblk: .quad 0, 0, 0, 0\n";

/// µs per sync-call exit through lockstep: two runs with n and 2n exits,
/// so boot and teardown cancel out.
pub fn exit_cost_us(n: u64) -> anyhow::Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("lockstep-bench-")
        .tempdir()?;
    let time = |count: u64| -> anyhow::Result<Duration> {
        let src = dir.path().join("g.S");
        std::fs::write(&src, SYNC_LOOP.replace("$N", &format!("${count}")))?;
        let elf = asm_guest(&src, dir.path(), "g")?;
        let started = Instant::now();
        let out = Command::new(lockstep_bin())
            .args(["run", "--mem", "64", "--disk"])
            .arg(dir.path().join("d.img"))
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
    Ok(two.saturating_sub(one).as_secs_f64() * 1e6 / n as f64)
}
