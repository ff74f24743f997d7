//! The fault-tolerant pair on real namespaces, veth, taps, KVM and clients:
//! failover under load without losing an acknowledged write, the output
//! rule, partitions, a dying backup, a corrupt logging channel, and the
//! etcd arbiter.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use common::ft::*;
use common::split::{Outcome, SplitWatch};
use common::*;

#[test]
fn failover_under_load_loses_no_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    let mut seed = Seed::from_env();
    let trials = trials("LOCKSTEP_FT_TRIALS", 20);
    for trial in 0..trials {
        let mut pair = FtPair::start("fo", FtOptions::default());
        let writers = Writers::start(&pair, 3);
        pair.wait_acked(50);
        // The fault's timing, not a synchronization.
        let kill_after = Duration::from_millis(seed.between(0, 700));
        std::thread::sleep(kill_after);
        pair.primary.signal(libc::SIGKILL);
        let killed = Instant::now();
        pair.wait_backup_live(Duration::from_secs(10));
        let live = killed.elapsed();
        // The writers go on against the new primary.
        pair.wait_served(50);
        let what = format!("trial {trial} (kill after {kill_after:?})");
        let n = pair.check_writes(writers, &what, false);
        eprintln!("{what}: {n} acknowledged writes kept, live {live:?} after the kill");
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
    let what = "the logging link cut for good";
    let mut pair = FtPair::start("pt", FtOptions::default());
    let mut watch = SplitWatch::start(&pair);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    // Cut the link between A and B; both still reach the shared storage.
    pair.logging_link(false);
    let outcome = watch.settle(&mut pair, Duration::from_secs(20), false, what);
    if outcome == Outcome::PrimaryAlone {
        watch.backup_stops(&mut pair, Duration::from_secs(20), what);
    }
    assert_eq!(pair.redis(&["ping"]), "PONG", "the winner serves");
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {outcome:?}, {n} acknowledged writes kept");
}

#[test]
fn a_primary_that_loses_its_backup_continues_alone() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("kb", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    pair.backup.signal(libc::SIGKILL);
    pair.primary
        .wait_for_line("continuing alone", Duration::from_secs(10));
    pair.wait_served(50);
    let role = pair
        .status("primary")
        .map(|s| s["role"].to_string())
        .unwrap_or_default();
    assert!(role.to_lowercase().contains("alone"), "role {role}");
    pair.check_writes(writers, "the backup killed", false);
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
    corrupt_on_the_wire(true);
}

#[test]
fn a_flipped_bit_on_an_encrypted_link_fails_its_record_and_nothing_of_it_is_applied() {
    corrupt_on_the_wire(false);
}

/// A proxy flips one bit of the channel; `insecure`: the entry's crc
/// catches it (and names the entry), else the record's tag.
fn corrupt_on_the_wire(insecure: bool) {
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
        insecure,
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch(net, opts);
    let writers = Writers::start(&pair, 2);
    let status = pair.backup.exit_status(Duration::from_secs(60));
    let log = pair.backup.log();
    assert_eq!(
        status.code(),
        Some(8),
        "the backup stops: its primary lives on\n{log}"
    );
    if !insecure {
        assert!(
            log.contains("a record failed authentication"),
            "the record layer refuses the flipped bit:\n{log}"
        );
        pair.primary
            .wait_for_line("continuing alone", Duration::from_secs(10));
        pair.wait_served(50);
        pair.check_writes(writers, "a flipped bit on an encrypted link", false);
        return;
    }
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
    pair.wait_served(50);
    pair.check_writes(writers, "a corrupt entry on the wire", false);
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
    pair.wait_acked(200);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    pair.check_writes(writers, "failover arbitrated by etcd", false);
    assert!(
        pair.backup.log().contains("won the arbiter"),
        "{}",
        pair.backup.log()
    );
}
