//! Shared helpers for the integration tests: real KVM, real namespaces,
//! real processes, all cleaned up on drop (also when a test fails).
#![allow(dead_code)]

pub mod etcd;
pub mod ft;
#[allow(unused_imports)]
pub use lockstep_bench::resp;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn lockstep() -> &'static str {
    env!("CARGO_BIN_EXE_lockstep")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// True if /dev/kvm can be used; otherwise prints why the test is skipped.
pub fn kvm_available() -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            eprintln!("SKIP: /dev/kvm is not usable here ({e})");
            false
        }
    }
}

/// A fresh temporary directory, removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("lockstep-test-")
        .tempdir()
        .expect("tempdir")
}

/// Assembles `tests/guests/NAME.S` (or `source`) into a static ELF at 0x200000.
pub fn asm_guest(dir: &Path, name: &str, source: Option<&str>) -> PathBuf {
    let src = match source {
        Some(s) => {
            let p = dir.join(format!("{name}.S"));
            std::fs::write(&p, s).expect("write asm");
            p
        }
        None => repo().join(format!("tests/guests/{name}.S")),
    };
    let obj = dir.join(format!("{name}.o"));
    let elf = dir.join(name);
    run_ok(Command::new("as").args(["--64", "-o"]).arg(&obj).arg(&src));
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
    );
    elf
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Polls `cond` until it holds or `timeout` passes.
pub fn wait_for(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A unique short name for namespaces (≤ 8 characters).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfff)
}

/// Namespaces made by `scripts/net`, removed on drop.
pub struct Net {
    pub name: String,
}

impl Net {
    /// One VM host (`NAME-h`, tap `NAME-t`) and a client (`NAME-c`, 10.77.0.1).
    pub fn single(prefix: &str) -> Net {
        let name = unique_name(prefix);
        run_ok(Command::new(repo().join("scripts/net")).args(["up", &name]));
        Net { name }
    }

    /// Two VM hosts (`NAME-a`, `NAME-b`), a client LAN (`NAME-c`).
    pub fn ft(prefix: &str) -> Net {
        let name = unique_name(prefix);
        run_ok(Command::new(repo().join("scripts/net")).args(["ft-up", &name]));
        Net { name }
    }

    pub fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.name)
    }

    pub fn tap(&self) -> String {
        format!("{}-t", self.name)
    }

    /// A command run inside namespace `NAME-which`.
    pub fn cmd(&self, which: &str, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns(which), program]);
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/net"))
            .args(["down", &self.name])
            .status();
    }
}

/// A running `lockstep` process whose output is collected; killed on drop.
pub struct Vmm {
    pub child: Child,
    pub output: Arc<Mutex<String>>,
}

impl Vmm {
    /// Spawns `cmd`, collecting stdout and stderr into one log.
    pub fn spawn(mut cmd: Command) -> Vmm {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("RUST_LOG", "info");
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().unwrap();
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        Vmm { child, output }
    }

    pub fn log(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits for a line containing `needle`; panics with the log on timeout
    /// or if the process exits first.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads catch up with the last lines.
                std::thread::sleep(Duration::from_millis(50));
                if self.log().contains(needle) {
                    return;
                }
                panic!(
                    "lockstep exited ({status}) before printing {needle:?}:\n{}",
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits for the process to exit; panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "lockstep did not exit within {timeout:?}:\n{}",
                self.log()
            );
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

/// Runs `f` on a thread that has joined network namespace `ns`, so a test
/// can be a real TCP client of the guest from the client namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// A running single VM with its namespaces, reachable at 10.77.0.2 from
/// `NAME-c`. Everything is torn down on drop.
pub struct KvVm {
    pub vmm: Vmm,
    pub net: Net,
    pub dir: tempfile::TempDir,
}

impl KvVm {
    pub fn disk(&self) -> PathBuf {
        self.dir.path().join("disk.img")
    }

    /// Boots the embedded guest on a fresh disk and waits until it serves.
    pub fn start(prefix: &str, extra: &[&str]) -> KvVm {
        let net = Net::single(prefix);
        let dir = tempdir();
        let mut vm = KvVm {
            vmm: Vmm::spawn(Command::new("true")),
            net,
            dir,
        };
        vm.restart(extra);
        vm
    }

    /// (Re)starts the VMM on the same disk and waits for the service.
    pub fn restart(&mut self, extra: &[&str]) {
        let mut cmd = self.net.cmd("h", lockstep());
        cmd.args(["run", "--tap", &self.net.tap(), "--mem", "128", "--disk"])
            .arg(self.disk())
            .args(extra);
        self.vmm = Vmm::spawn(cmd);
        self.vmm
            .wait_for_line("kv: serving RESP", Duration::from_secs(30));
    }

    /// Runs a client program in the client namespace; returns its output.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        let mut cmd = self.net.cmd("c", program);
        cmd.args(args);
        cmd.output().unwrap_or_else(|e| panic!("{program}: {e}"))
    }

    /// `redis-cli -h 10.77.0.2 ARGS`, trimmed stdout.
    pub fn redis(&self, args: &[&str]) -> String {
        let mut all = vec!["-h", GUEST_IP];
        all.extend_from_slice(args);
        let out = self.client("redis-cli", &all);
        assert!(
            out.status.success(),
            "redis-cli {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops the VMM with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        self.vmm.signal(libc::SIGTERM);
        let status = self.vmm.wait_exit(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "clean stop:\n{}", self.vmm.log());
    }
}

pub const GUEST_IP: &str = "10.77.0.2";

/// Spawns a thread that joins network namespace `ns` and runs `f`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}
