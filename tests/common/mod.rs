//! Shared helpers for the integration tests: real KVM, real namespaces,
//! real processes, all cleaned up on drop (also when a test fails).
#![allow(dead_code)]

pub mod actions;
pub mod apps;
pub mod capture;
pub mod cgroup;
pub mod etcd;
pub mod ft;
pub mod hog;
pub mod join;
pub mod split;
pub mod watch;
#[allow(unused_imports)]
pub use lockstep_bench::netns::{GUEST_IP, Net};
#[allow(unused_imports)]
pub use lockstep_bench::resp;
#[allow(unused_imports)]
pub use lockstep_bench::vm::Vmm;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::sync::atomic::{AtomicU32, Ordering};
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
    lockstep_bench::vm::asm_guest(&src, dir, name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// A finished command's stdout and stderr, one after the other.
pub fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// A hostile peer: connects to `addr`, sends `bytes`, and waits (bounded)
/// until the peer drops the connection: true if it did.
pub fn send_and_wait_drop(addr: &str, bytes: &[u8], within: Duration) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.write_all(bytes);
    let _ = s.set_read_timeout(Some(within));
    let mut buf = [0u8; 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

/// A unique short name for namespaces (≤ 8 characters).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:x}{n:x}", std::process::id() % 0xfff)
}

/// `scripts/net up` under a unique name: one VM host (`NAME-h`, tap
/// `NAME-t`) and a client (`NAME-c`, 10.77.0.1).
pub fn net_single(prefix: &str) -> Net {
    Net::single(&unique_name(prefix)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// `scripts/net ft-up` under a unique name: two VM hosts (`NAME-a`,
/// `NAME-b`), a client LAN (`NAME-c`).
pub fn net_ft(prefix: &str) -> Net {
    Net::ft(&unique_name(prefix)).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Spawns a `lockstep` command, collecting its output.
pub fn spawn_vmm(cmd: Command) -> Vmm {
    Vmm::spawn(cmd).unwrap_or_else(|e| panic!("{e:#}"))
}

/// The shared [`Vmm`]'s waits as test assertions: they fail the test, with
/// the VMM's log, instead of returning the error.
pub trait VmmExt {
    /// Waits for a line containing `needle`; fails on timeout or if the
    /// process exits first.
    fn wait_for_line(&mut self, needle: &str, timeout: Duration);
    /// Waits for the process to exit (and its last output); fails on
    /// timeout.
    fn exit_status(&mut self, timeout: Duration) -> ExitStatus;
}

impl VmmExt for Vmm {
    fn wait_for_line(&mut self, needle: &str, timeout: Duration) {
        self.wait_for(needle, timeout)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }

    fn exit_status(&mut self, timeout: Duration) -> ExitStatus {
        self.wait_exit(timeout).unwrap_or_else(|e| panic!("{e:#}"))
    }
}

/// Moves the calling thread into network namespace `ns`.
fn enter_netns(ns: &str) {
    let file = std::fs::File::open(format!("/var/run/netns/{ns}")).expect("netns file");
    nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
}

/// Runs `f` on a thread that has joined network namespace `ns`, so a test
/// can be a real TCP client of the guest from the client namespace.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(ns);
            f()
        })
        .join()
        .expect("netns thread panicked")
    })
}

/// Runs a client program in `net`'s client namespace; returns its output.
pub fn client_in(net: &Net, program: &str, args: &[&str]) -> Output {
    let out = net
        .cmd("c", program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    // `ip netns exec` reports a missing program only on stderr: say so
    // plainly rather than let a wait for answers time out.
    assert!(
        out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("No such file"),
        "{program} is not installed: scripts/test installs what the tests need\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `redis-cli -h 10.77.0.2 ARGS` from `net`'s client namespace: its
/// trimmed stdout; the command must succeed.
pub fn redis_in(net: &Net, args: &[&str]) -> String {
    let mut all = vec!["-h", GUEST_IP];
    all.extend_from_slice(args);
    let out = client_in(net, "redis-cli", &all);
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
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
        let net = net_single(prefix);
        let dir = tempdir();
        let mut vm = KvVm {
            vmm: spawn_vmm(Command::new("true")),
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
        self.vmm = spawn_vmm(cmd);
        self.vmm
            .wait_for_line("kv: serving RESP", Duration::from_secs(30));
    }

    /// Runs a client program in the client namespace; returns its output.
    pub fn client(&self, program: &str, args: &[&str]) -> Output {
        client_in(&self.net, program, args)
    }

    /// `redis-cli -h 10.77.0.2 ARGS`, trimmed stdout.
    pub fn redis(&self, args: &[&str]) -> String {
        redis_in(&self.net, args)
    }

    /// Stops the VMM with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        self.vmm.signal(libc::SIGTERM);
        let status = self.vmm.exit_status(Duration::from_secs(20));
        assert_eq!(status.code(), Some(0), "clean stop:\n{}", self.vmm.log());
    }
}

/// Spawns a thread that joins network namespace `ns` and runs `f`.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: String,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    std::thread::spawn(move || {
        enter_netns(&ns);
        f()
    })
}

/// Random fault timings from a printed seed (`LOCKSTEP_SEED`, or the
/// process id), so a failing trial can be rerun exactly.
pub struct Seed(u64, u64);

impl Seed {
    pub fn from_env() -> Seed {
        let seed = std::env::var("LOCKSTEP_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| u64::from(std::process::id()) | 1);
        eprintln!("fault timings from LOCKSTEP_SEED={seed}");
        Seed(seed.max(1), seed)
    }

    /// The seed this generator started from.
    pub fn initial(&self) -> u64 {
        self.1
    }

    /// A number in `lo..hi` (xorshift).
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        lo + self.0 % (hi - lo).max(1)
    }
}

/// How many trials a randomized test runs (`var` overrides `default`).
pub fn trials(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A fresh pair key (what `lockstep keygen` writes) in `dir`: both sides of
/// a pair are started with `--key-file` on it.
pub fn pair_key(dir: &Path) -> PathBuf {
    let path = dir.join("pair.key");
    logchan::secure::PairKey::write_new(&path).expect("pair key");
    path
}
