//! Deterministic record and replay on real KVM: recordings of every
//! workload (and of real clients) under different host load replay to the
//! same console output, digests, output hashes and final memory; damaged or
//! foreign logs are refused; an injected divergence is caught where it
//! shows.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::hog::Hog;
use common::*;

struct Recording {
    log: PathBuf,
    console: String,
}

/// Records a batch workload to the end (the guest exits by itself).
fn record(dir: &Path, name: &str, workload: &str, append: &str, extra: &[&str]) -> Recording {
    let log = dir.join(format!("{name}.lslog"));
    let console = dir.join(format!("{name}.rec.console"));
    let out = Command::new(lockstep())
        .args([
            "record",
            "--mem",
            "64",
            "--workload",
            workload,
            "--append",
            append,
            "--log",
        ])
        .arg(&log)
        .arg("--console")
        .arg(&console)
        .arg("--disk")
        .arg(dir.join(format!("{name}.img")))
        .args(extra)
        .output()
        .expect("lockstep record");
    assert_eq!(
        out.status.code(),
        Some(0),
        "record {name}:\n{}",
        output_text(&out)
    );
    Recording {
        log,
        console: std::fs::read_to_string(&console).expect("console"),
    }
}

/// Replays a log; returns (exit status, output, console).
fn replay(log: &Path, extra: &[&str]) -> (i32, String, String) {
    let console = log.with_extension("rep.console");
    let out = Command::new(lockstep())
        .arg("replay")
        .arg("--log")
        .arg(log)
        .arg("--console")
        .arg(&console)
        .args(extra)
        .output()
        .expect("lockstep replay");
    (
        out.status.code().unwrap_or(-1),
        output_text(&out),
        std::fs::read_to_string(&console).unwrap_or_default(),
    )
}

fn assert_replays(rec: &Recording, extra: &[&str]) -> String {
    let (code, out, console) = replay(&rec.log, extra);
    assert_eq!(code, 0, "replay of {}:\n{out}", rec.log.display());
    assert!(out.contains("replay matched the recording"), "{out}");
    assert!(
        out.contains("1 with memory"),
        "the final memory hash was compared:\n{out}"
    );
    assert_eq!(console, rec.console, "console output must be identical");
    out
}

#[test]
fn batch_workloads_replay_identically_whatever_the_host_load() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    let workloads = [
        ("compute", "iters=20"),
        ("disk", "ops=300 race=5"),
        ("idle", "duration_ms=300 tick_ms=10"),
    ];
    for (workload, append) in workloads {
        let mut consoles = Vec::new();
        for load in 0..3 {
            let name = format!("{workload}{load}");
            let rec = {
                let _hog = Hog::start(load);
                record(
                    dir.path(),
                    &name,
                    workload,
                    append,
                    &["--digest-every", "1"],
                )
            };
            let out = assert_replays(&rec, &[]);
            assert!(!out.contains(" 0 digests"), "digests were compared:\n{out}");
            consoles.push(rec.console);
        }
        if workload == "compute" {
            // Pure computation: the same result whatever the host did.
            assert!(consoles.iter().all(|c| c == &consoles[0]), "{consoles:?}");
        }
    }
}

#[test]
fn racing_writes_to_one_sector_replay_identically() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    for load in 0..3 {
        let _hog = Hog::start(load);
        let rec = record(
            dir.path(),
            &format!("race{load}"),
            "disk",
            "ops=50 race=40 inflight=4",
            &[],
        );
        assert!(
            rec.console
                .contains("disk: 40 of 40 racing write pairs read back as the later write"),
            "{}",
            rec.console
        );
        assert_replays(&rec, &[]);
    }
}

#[test]
fn backup_reads_replay_from_a_copy_of_the_disk() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    // The disk as it is before the recording starts: filled by a first run.
    let img = dir.path().join("br.img");
    let out = Command::new(lockstep())
        .args([
            "run",
            "--mem",
            "64",
            "--workload",
            "disk",
            "--append",
            "ops=200",
            "--disk",
        ])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let copy = dir.path().join("copy.img");
    std::fs::copy(&img, &copy).unwrap();
    let rec = record(
        dir.path(),
        "br",
        "disk",
        "ops=300 race=5",
        &["--backup-reads"],
    );
    // Without the disk the replay cannot get read data, and says so.
    let (code, out, _) = replay(&rec.log, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("needs --disk IMAGE"), "{out}");
    let out = assert_replays(&rec, &["--backup-reads", "--disk", copy.to_str().unwrap()]);
    assert!(
        !out.contains(" 0 backup reads"),
        "reads were executed by the replay:\n{out}"
    );
    // The log is smaller than one that carries the read data.
    let full = record(dir.path(), "br-full", "disk", "ops=300 race=5", &[]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&rec.log) < size(&full.log),
        "{} vs {}",
        size(&rec.log),
        size(&full.log)
    );
}

#[test]
fn a_session_with_real_clients_replays_identically() {
    if !kvm_available() {
        return;
    }
    let net = net_single("rr");
    let dir = tempdir();
    for load in 0..3 {
        let log = dir.path().join(format!("kv{load}.lslog"));
        let console = dir.path().join(format!("kv{load}.rec.console"));
        let _hog = Hog::start(load);
        let mut cmd = net.cmd("h", lockstep());
        cmd.args(["record", "--mem", "128", "--tap", &net.tap(), "--log"])
            .arg(&log)
            .arg("--console")
            .arg(&console)
            .arg("--disk")
            .arg(dir.path().join(format!("kv{load}.img")));
        let mut vmm = spawn_vmm(cmd);
        wait_for(Duration::from_secs(30), "the guest to serve", || {
            std::fs::read_to_string(&console).is_ok_and(|c| c.contains("kv: serving"))
        });
        let client = |program: &str, args: &[&str]| {
            let out = net.cmd("c", program).args(args).output().expect(program);
            assert!(out.status.success(), "{program}: {}", output_text(&out));
            String::from_utf8_lossy(&out.stdout).to_string()
        };
        let bench = client(
            "redis-benchmark",
            &[
                "-h",
                GUEST_IP,
                "-n",
                "5000",
                "-c",
                "20",
                "-t",
                "set,get,incr",
                "-q",
            ],
        );
        assert!(bench.contains("requests per second"), "{bench}");
        client(
            "curl",
            &[
                "-s",
                "-X",
                "PUT",
                "--data-binary",
                "replayed",
                &format!("http://{GUEST_IP}/kv/r"),
            ],
        );
        assert_eq!(
            client("curl", &["-s", &format!("http://{GUEST_IP}/kv/r")]),
            "replayed"
        );
        vmm.signal(libc::SIGTERM);
        assert_eq!(
            vmm.exit_status(Duration::from_secs(20)).code(),
            Some(0),
            "{}",
            vmm.log()
        );
        let rec = Recording {
            log,
            console: std::fs::read_to_string(&console).unwrap(),
        };
        let out = assert_replays(&rec, &[]);
        assert!(!out.contains(" 0 frames"), "frames were replayed:\n{out}");
    }
}

#[test]
fn damaged_or_foreign_logs_are_refused() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    let rec = record(dir.path(), "d", "disk", "ops=100", &[]);
    let bytes = std::fs::read(&rec.log).unwrap();
    let damaged = dir.path().join("damaged.lslog");

    // One flipped byte in the middle of the log: refused, naming the entry.
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(&damaged, &flipped).unwrap();
    let (code, out, _) = replay(&damaged, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("refusing to replay") && out.contains("seq "),
        "{out}"
    );

    // Cut mid-entry: every whole entry is applied, then the end is reported.
    std::fs::write(&damaged, &bytes[..bytes.len() - bytes.len() / 3 - 5]).unwrap();
    let (code, out, console) = replay(&damaged, &[]);
    assert_eq!(code, 6, "{out}");
    assert!(
        out.contains("applied every whole entry") && out.contains("log ends at offset"),
        "{out}"
    );
    assert!(
        console.contains("workload=disk"),
        "the replay ran up to the cut:\n{console}"
    );

    // Another format version: refused at the start.
    let mut v2 = bytes.clone();
    v2[8..10].copy_from_slice(&2u16.to_le_bytes());
    std::fs::write(&damaged, &v2).unwrap();
    let (code, out, _) = replay(&damaged, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("version 2 is not supported"), "{out}");

    // Another kernel: refused at the start, naming what differs.
    let other = asm_guest(dir.path(), "hello", None);
    let (code, out, _) = replay(&rec.log, &["--kernel", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("recorded for another guest") && out.contains("kernel hash"),
        "{out}"
    );
}

#[test]
fn an_injected_divergence_is_caught_at_the_exit_it_shows() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    let rec = record(
        dir.path(),
        "idle",
        "idle",
        "duration_ms=300 tick_ms=10",
        &["--digest-every", "1"],
    );
    // The idle guest makes only sync calls; each deadline is computed from
    // the time the previous call returned. Perturb the time returned at
    // exit 12: the guest's next call (exit 13) asks for another deadline.
    let (code, out, _) = replay(&rec.log, &["--perturb-time-at", "12"]);
    assert_eq!(code, 5, "{out}");
    assert!(out.contains("replay diverged at exit 13"), "{out}");
    assert!(out.contains("deadline"), "{out}");
    // Unperturbed, the same log replays cleanly.
    assert_replays(&rec, &[]);
}

#[test]
fn a_guest_that_misuses_its_devices_replays_without_divergence() {
    if !kvm_available() {
        return;
    }
    let net = net_single("rh");
    let dir = tempdir();
    let log = dir.path().join("hostile.lslog");
    let console = dir.path().join("hostile.rec.console");
    let mut cmd = net.cmd("h", lockstep());
    cmd.args([
        "record",
        "--mem",
        "64",
        "--workload",
        "hostile",
        "--append",
        "duration_ms=3000",
        "--tap",
        &net.tap(),
        "--log",
    ])
    .arg(&log)
    .arg("--console")
    .arg(&console)
    .arg("--disk")
    .arg(dir.path().join("hostile.img"));
    let mut vmm = spawn_vmm(cmd);
    wait_for(Duration::from_secs(30), "the guest's misuse", || {
        std::fs::read_to_string(&console).is_ok_and(|c| c.contains("reset with a read in flight"))
    });
    // Broadcast frames: each one meets an RX chain that points outside
    // guest memory.
    let sent = spawn_in_netns(net.ns("c"), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_broadcast(true).expect("broadcast");
        let mut sent = 0;
        for i in 0..50u32 {
            if s.send_to(&i.to_le_bytes(), "10.77.0.255:9").is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        sent
    })
    .join()
    .expect("sender");
    assert!(sent > 0, "no broadcast frame could be sent");
    let status = vmm.exit_status(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{}", vmm.log());
    let log_text = vmm.log();
    assert!(
        log_text.contains("not applied"),
        "the read's completion met a reset device:\n{log_text}"
    );
    let rec = Recording {
        log,
        console: std::fs::read_to_string(&console).expect("console"),
    };
    let out = assert_replays(&rec, &[]);
    assert!(
        !out.contains(" 0 frames"),
        "deliveries into broken chains were replayed:\n{out}\nrecording:\n{log_text}"
    );
}
