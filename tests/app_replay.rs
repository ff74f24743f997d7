//! Record and replay of stock redis-server in the guest: a session under
//! redis-benchmark, a Lua busy loop inside redis and a CPU hog on the host
//! replays bit-exactly (console, outputs, memory digests), although the
//! recording's timing depended on the host. The replay needs nothing but
//! the log: the app itself reached the guest as logged disk reads.

mod common;

use std::time::Duration;

use common::apps::{REDIS_ARGS, REDIS_READY, linux_field, redis_server};
use common::hog::Hog;
use common::*;

/// With the defaults — the personality's vDSO, and redis's `syscall`s
/// rewritten to `call rax` — redis reads the clock without system calls,
/// makes all but a few start-up system calls by call (the functions the
/// check leaves alone), and the replay still matches.
#[test]
fn a_redis_session_under_load_replays_bit_exactly() {
    let console = record_and_replay(&[]);
    if console.is_empty() {
        return;
    }
    assert!(console.contains(", vDSO;"), "{console}");
    assert!(!busiest(&console).contains("clock_gettime"), "{console}");
    let (all, by_call) = (
        linux_field(&console, "syscalls"),
        linux_field(&console, "by_call"),
    );
    assert!(all > 1000, "{console}");
    assert!(
        by_call * 100 >= all * 99,
        "{by_call} of {all} by call:\n{console}"
    );
}

/// The same the old ways, without the vDSO (`vdso=0`: every clock read a
/// system call) and with every `syscall` left as it is (`syscalls=trap`:
/// each through the ring-0 stub): the replay matches too.
#[test]
fn by_syscall_and_without_the_vdso_a_session_replays_too() {
    let console = record_and_replay(&["--append", "vdso=0 syscalls=trap"]);
    if console.is_empty() {
        return;
    }
    assert!(!console.contains(", vDSO;"), "{console}");
    assert!(busiest(&console).contains("clock_gettime"), "{console}");
    assert!(linux_field(&console, "syscalls") > 1000, "{console}");
    assert_eq!(linux_field(&console, "by_call"), 0, "{console}");
}

/// The personality's line of its busiest system calls.
fn busiest(console: &str) -> &str {
    console
        .lines()
        .find(|l| l.starts_with("linux: busiest"))
        .unwrap_or_default()
}

/// Records redis under load with `extra` VMM options, replays the log,
/// and returns the recording's console.
fn record_and_replay(extra: &[&str]) -> String {
    if !kvm_available() {
        return String::new();
    }
    let redis = redis_server();
    let net = net_single("rx");
    let dir = tempdir();
    let log = dir.path().join("redis.lslog");
    let console = dir.path().join("rec.console");
    let _hog = Hog::start(1);
    let mut cmd = net.cmd("h", lockstep());
    cmd.args([
        "record",
        "--tap",
        &net.tap(),
        "--disk-size",
        "128",
        "--mem-digest-every",
        "8",
        "--app",
    ])
    .arg(&redis)
    .arg("--log")
    .arg(&log)
    .arg("--console")
    .arg(&console)
    .arg("--disk")
    .arg(dir.path().join("disk.img"))
    .args(extra)
    .arg("--")
    .args(REDIS_ARGS);
    let mut vmm = spawn_vmm(cmd);
    wait_for(Duration::from_secs(60), "redis to serve", || {
        std::fs::read_to_string(&console).is_ok_and(|c| c.contains(REDIS_READY))
    });
    let client = |program: &str, args: &[&str]| {
        let out = net.cmd("c", program).args(args).output().expect(program);
        assert!(out.status.success(), "{program}: {}", output_text(&out));
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    let busy = "local x = 0 for i = 1, 3000000 do x = (x * 31 + i) % 1000003 end return x";
    let sum = client("redis-cli", &["-h", GUEST_IP, "eval", busy, "0"]);
    assert!(sum.trim().parse::<u64>().is_ok(), "{sum}");
    let bench = client(
        "redis-benchmark",
        &[
            "-h",
            GUEST_IP,
            "-n",
            "3000",
            "-c",
            "20",
            "-t",
            "set,get,lpush,hset",
            "-q",
        ],
    );
    assert!(bench.contains("requests per second"), "{bench}");
    vmm.signal(libc::SIGTERM);
    assert_eq!(
        vmm.exit_status(Duration::from_secs(30)).code(),
        Some(0),
        "{}",
        vmm.log()
    );
    drop(_hog);

    let rep_console = dir.path().join("rep.console");
    let out = std::process::Command::new(lockstep())
        .arg("replay")
        .arg("--log")
        .arg(&log)
        .arg("--console")
        .arg(&rep_console)
        .output()
        .expect("lockstep replay");
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("replay matched the recording"), "{text}");
    assert!(
        !text.contains("(0 with memory)"),
        "memory digests were compared:\n{text}"
    );
    assert!(!text.contains(" 0 frames"), "frames were replayed:\n{text}");
    let recorded = std::fs::read_to_string(&console).expect("recording console");
    assert_eq!(
        std::fs::read_to_string(&rep_console).expect("replay console"),
        recorded,
        "the replay prints what the recording printed"
    );
    recorded
}
