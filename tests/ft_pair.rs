//! The fault-tolerant pair on real namespaces, veth, taps, KVM and clients:
//! failover under load without losing an acknowledged write, the output
//! rule, partitions, a dying backup, a corrupt logging channel, and the
//! etcd arbiter.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ft::*;
use common::*;
use lockstep_bench::kvclient;

fn addr() -> String {
    format!("{GUEST_IP}:6379")
}

/// Writers in the client namespace that SET unique keys until stopped and
/// remember every SET the guest acknowledged. They keep their TCP
/// connections across a failover (the guest's TCP state moves with it).
struct Writers {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<kvclient::WriterReport>,
}

impl Writers {
    fn start(pair: &FtPair, n: usize) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = spawn_in_netns(pair.net.ns("c"), move || kvclient::write(&addr(), n, flag));
        Writers { stop, thread }
    }

    fn finish(self) -> (Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.join().expect("writers");
        (r.acked, r.errors)
    }
}

/// Reads every acknowledged key back; returns the ones missing or wrong.
fn lost_writes(pair: &FtPair, acked: &[String]) -> Vec<String> {
    in_netns(&pair.net.ns("c"), || {
        kvclient::check(&addr(), acked).expect("read back")
    })
}

/// A small deterministic generator for kill times (printed, so a failing
/// trial can be rerun).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn failover_under_load_loses_no_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    let mut seed = std::env::var("LOCKSTEP_FT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 | 1);
    eprintln!("kill times from seed {seed}");
    let trials: usize = std::env::var("LOCKSTEP_FT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    for trial in 0..trials {
        let mut pair = FtPair::start("fo", FtOptions::default());
        let writers = Writers::start(&pair, 3);
        let kill_after = Duration::from_millis(150 + next_rand(&mut seed) % 700);
        let deadline = Instant::now() + kill_after;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        pair.primary.signal(libc::SIGKILL);
        let killed = Instant::now();
        pair.wait_backup_live(Duration::from_secs(10));
        // The writers go on against the new primary for a moment.
        wait_for(Duration::from_secs(10), "writes after failover", || {
            pair.redis(&["dbsize"]).parse::<u64>().is_ok()
        });
        std::thread::sleep(Duration::from_millis(200));
        let (acked, errors) = writers.finish();
        assert!(
            errors.is_empty(),
            "trial {trial}: clients saw errors: {:?}",
            &errors[..errors.len().min(5)]
        );
        assert!(
            !acked.is_empty(),
            "trial {trial}: no write was acknowledged"
        );
        let lost = lost_writes(&pair, &acked);
        assert!(
            lost.is_empty(),
            "trial {trial} (kill after {kill_after:?}): {} of {} acknowledged writes lost, e.g. {:?}\nbackup:\n{}",
            lost.len(),
            acked.len(),
            &lost[..lost.len().min(5)],
            pair.backup.log()
        );
        eprintln!(
            "trial {trial}: killed after {kill_after:?}, {} acknowledged writes kept, live {:?} after the kill",
            acked.len(),
            killed.elapsed()
        );
    }
}

#[test]
fn outputs_wait_for_the_backup_and_the_guest_does_not() {
    if !kvm_available() {
        return;
    }
    // A long failure timeout: a frozen backup is not declared dead here.
    let opts = FtOptions {
        heartbeat_ms: 100,
        failure_timeout_ms: 60_000,
        ..FtOptions::default()
    };
    let pair = FtPair::start("or", opts);
    assert_eq!(pair.redis(&["set", "before", "1"]), "OK");
    let exits = |pair: &FtPair| {
        pair.status("primary")
            .and_then(|s| s["exit_index"].as_u64())
            .unwrap_or(0)
    };
    // Connected before the freeze (a SYN-ACK is an output too).
    let mut stream = in_netns(&pair.net.ns("c"), || {
        TcpStream::connect(addr()).expect("connect")
    });
    pair.backup.signal(libc::SIGSTOP);
    stream
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .ok();
    stream.write_all(b"PING\r\n").expect("send");
    let before = exits(&pair);
    let mut buf = [0u8; 64];
    let answered = stream.read(&mut buf).map(|n| n > 0).unwrap_or(false);
    let after = exits(&pair);
    let gate = pair
        .status("primary")
        .map(|s| s["gate_frames"].as_u64().unwrap_or(0))
        .unwrap_or(0);
    pair.backup.signal(libc::SIGCONT);
    assert!(
        !answered,
        "a reply left the primary while the backup was frozen"
    );
    assert!(
        after > before,
        "the guest kept running (exit index {before} → {after})"
    );
    assert!(gate > 0, "outputs were held at the gate");
    // Thawed: the held reply flows.
    stream.set_read_timeout(Some(Duration::from_secs(10))).ok();
    let mut buf = [0u8; 64];
    let n = stream.read(&mut buf).expect("the held reply arrives");
    assert_eq!(&buf[..n], b"+PONG\r\n");
    assert_eq!(pair.redis(&["get", "before"]), "1");
    drop(pair);
}

#[test]
fn a_partition_leaves_exactly_one_side_serving() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("pt", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    std::thread::sleep(Duration::from_millis(300));
    // Cut the link between A and B; both still reach the shared storage.
    run_ok(
        pair.net
            .cmd("a", "ip")
            .args(["link", "set", &format!("{}-ab", pair.net.name), "down"]),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut p_done, mut b_done) = (None, None);
    while Instant::now() < deadline && p_done.is_none() && b_done.is_none() {
        p_done = pair.primary.try_wait().ok().flatten();
        b_done = pair.backup.try_wait().ok().flatten();
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(500));
    p_done = p_done.or_else(|| pair.primary.try_wait().ok().flatten());
    b_done = b_done.or_else(|| pair.backup.try_wait().ok().flatten());
    let (acked, _errors) = writers.finish();
    match (p_done, b_done) {
        (Some(s), None) => {
            assert_eq!(
                s.code(),
                Some(7),
                "the primary lost the arbiter:\n{}",
                pair.primary.log()
            );
            pair.backup
                .wait_for_line("going live", Duration::from_secs(10));
        }
        (None, Some(s)) => {
            assert_eq!(
                s.code(),
                Some(7),
                "the backup lost the arbiter:\n{}",
                pair.backup.log()
            );
            pair.primary
                .wait_for_line("continuing alone", Duration::from_secs(10));
        }
        other => panic!(
            "exactly one side must stop, got {other:?}\nprimary:\n{}\nbackup:\n{}",
            pair.primary.log(),
            pair.backup.log()
        ),
    }
    assert_eq!(pair.redis(&["ping"]), "PONG", "the winner serves");
    let lost = lost_writes(&pair, &acked);
    assert!(lost.is_empty(), "{} acknowledged writes lost", lost.len());
}

#[test]
fn a_primary_that_loses_its_backup_continues_alone() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("kb", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    std::thread::sleep(Duration::from_millis(300));
    pair.backup.signal(libc::SIGKILL);
    pair.primary
        .wait_for_line("continuing alone", Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(300));
    let (acked, errors) = writers.finish();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(lost_writes(&pair, &acked).is_empty());
    let role = pair
        .status("primary")
        .map(|s| s["role"].to_string())
        .unwrap_or_default();
    assert!(role.to_lowercase().contains("alone"), "role {role}");
}

/// Forwards TCP from `listen` to `to`, flipping one byte after `flip_at`
/// bytes of the primary → backup direction.
fn corrupting_proxy(
    ns: String,
    listen: String,
    to: String,
    flip_at: usize,
) -> std::thread::JoinHandle<()> {
    spawn_in_netns(ns, move || {
        let listen = TcpListener::bind(&listen).expect("proxy listen");
        let Ok((mut from, _)) = listen.accept() else {
            return;
        };
        let Ok(mut dst) = TcpStream::connect(&to) else {
            return;
        };
        let (mut from2, mut dst2) = (
            from.try_clone().expect("clone"),
            dst.try_clone().expect("clone"),
        );
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = dst2.read(&mut buf) {
                if n == 0 || from2.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut seen = 0usize;
        let mut buf = [0u8; 4096];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if seen <= flip_at && flip_at < seen + n {
                buf[flip_at - seen] ^= 0x20;
            }
            seen += n;
            if dst.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

#[test]
fn a_corrupt_entry_on_the_wire_is_detected_and_never_applied() {
    if !kvm_available() {
        return;
    }
    // A proxy on host A between the primary and the backup flips one bit
    // of the stream after 300 KB.
    let net = net_ft("cp");
    let _proxy = corrupting_proxy(
        net.ns("a"),
        format!("{PRIMARY_LOG}:7100"),
        format!("{BACKUP_LOG}:{LOG_PORT}"),
        300_000,
    );
    let opts = FtOptions {
        backup_target: Some(format!("{PRIMARY_LOG}:7100")),
        // Heartbeats go straight between the hosts' port 7000, around the proxy.
        primary_extra: vec![
            "--heartbeat-port".into(),
            LOG_PORT.to_string(),
            "--heartbeat-peer".into(),
            format!("{BACKUP_LOG}:{LOG_PORT}"),
        ],
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch(net, opts);
    let writers = Writers::start(&pair, 2);
    let status = pair.backup.exit_status(Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    let (acked, errors) = writers.finish();
    let log = pair.backup.log();
    assert_eq!(
        status.code(),
        Some(8),
        "the backup stops: its primary lives on\n{log}"
    );
    let corrupt_seq: u64 = log
        .lines()
        .find(|l| l.contains("corrupt"))
        .and_then(|l| l.split("seq ").nth(1))
        .and_then(|t| t.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the backup names the corrupt entry:\n{log}"));
    let replayed: u64 = log
        .lines()
        .find(|l| l.contains("replayed up to seq"))
        .and_then(|l| l.split("replayed up to seq ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the backup reports how far it replayed:\n{log}"));
    assert!(
        replayed < corrupt_seq,
        "replayed seq {replayed} must stay below the corrupt seq {corrupt_seq}"
    );
    pair.primary
        .wait_for_line("continuing alone", Duration::from_secs(10));
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(lost_writes(&pair, &acked).is_empty());
}

#[test]
fn etcd_arbitrates_a_failover() {
    if !kvm_available() {
        return;
    }
    let net = net_ft("et");
    let etcd = common::etcd::Etcd::start_in(&net.ns("c"), "10.77.0.1");
    let opts = FtOptions {
        arbiter: Some(format!("etcd://{}/lockstep-test", etcd.client_addr())),
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch(net, opts);
    let writers = Writers::start(&pair, 2);
    std::thread::sleep(Duration::from_millis(300));
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(200));
    let (acked, errors) = writers.finish();
    assert!(errors.is_empty(), "clients saw errors: {errors:?}");
    assert!(lost_writes(&pair, &acked).is_empty());
    assert!(
        pair.backup.log().contains("won the arbiter"),
        "{}",
        pair.backup.log()
    );
}
