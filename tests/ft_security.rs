//! The pair against hostile peers on its networks (docs/threat-model.md),
//! on real namespaces, taps, KVM and clients: a waiting backup outlasts
//! junk, silence, a wrong key and a replayed recording and then follows the
//! real primary; a fake primary without the key gets nothing executed,
//! claimed or announced; an impostor backup gets no output released;
//! forged and replayed heartbeats neither count as life nor stop a
//! failover; and the logging link carries no client plaintext.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::capture::{Capture, contains, udp_payloads};
use common::ft::*;
use common::*;
use logchan::secure::{
    AttachRequest, BeatKey, PairKey, Responder, Security, Step, Verdict, initiate,
};
use logchan::{Entry, ExitKind, Heartbeat, Role, StreamHeader};

fn backup_addr() -> String {
    format!("{BACKUP_LOG}:{LOG_PORT}")
}

/// What an attacker sends as a primary: a valid-looking stream header
/// (the guest's real identity, a lease) and a boot entry of its choosing.
fn fake_stream() -> (StreamHeader, Vec<u8>) {
    let spec = lockstep_vmm::spec::GuestSpec {
        mem_size: 128 << 20,
        cmdline: "workload=kv ip=10.77.0.66/24".into(),
        seed: 7,
        mac: Some([0x52, 0x54, 0, 0x66, 0x66, 0x66]),
        disk_sectors: 64 << 11,
        disk_read_only: false,
    };
    let header = StreamHeader::new(
        spec.identity(lockstep_vmm::EMBEDDED_GUEST),
        logchan::header::flags::READ_DATA_LOGGED,
        u64::MAX,
    )
    .with_lease_ms(50);
    let boot = spec.encode();
    let mut bytes = header.encode().to_vec();
    let mut entry = vec![0u8; logchan::encoded_len(&Entry::Boot { config: &boot })];
    logchan::encode_into(
        &mut entry,
        1,
        0,
        ExitKind::None,
        &Entry::Boot { config: &boot },
    )
    .expect("encode");
    bytes.extend_from_slice(&entry);
    (header, bytes)
}

/// Everything a primary with `key` sends in a whole opening of an earlier
/// session (recorded by our own responder in the middle).
fn recorded_opening(key: &PairKey) -> Vec<u8> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let sec = Security::Key(key.clone());
    let (header, _) = fake_stream();
    let primary = std::thread::spawn(move || {
        let mut c = TcpStream::connect(addr).expect("connect");
        let attach = AttachRequest {
            header,
            boot: b"an earlier session".to_vec(),
        };
        initiate(
            &mut c,
            &sec,
            &attach,
            Instant::now() + Duration::from_secs(10),
        )
        .expect("the earlier session opens")
    });
    let (mut s, _) = l.accept().expect("accept");
    let mut r = Responder::new(Security::Key(key.clone()));
    let (mut recording, mut buf) = (Vec::new(), [0u8; 4096]);
    loop {
        match r.advance().expect("a good opening") {
            Step::NeedMore => {
                let n = s.read(&mut buf).expect("read");
                recording.extend_from_slice(&buf[..n]);
                r.input(&buf[..n]).expect("input");
            }
            Step::Send(b) => s.write_all(&b).expect("send"),
            Step::Attach(_) => {
                let (b, _) = r.answer(&Verdict::Accepted).expect("answer");
                s.write_all(&b).expect("send");
                break;
            }
        }
    }
    primary.join().expect("primary");
    recording
}

#[test]
fn a_waiting_backup_outlasts_junk_silence_a_wrong_key_and_a_replay_then_the_pair_serves() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::launch_backup(net_ft("sw"), FtOptions::default());
    let key = PairKey::read(&pair.key_file()).expect("the pair's key");
    let recording = recorded_opening(&key);
    let (header, _) = fake_stream();
    let results = in_netns(&pair.net.ns("a"), move || {
        let junk: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let junk_dropped = send_and_wait_drop(&backup_addr(), &junk, Duration::from_secs(10));
        // Silence: the backup drops it at the handshake deadline.
        let idle_dropped = send_and_wait_drop(&backup_addr(), &[], Duration::from_secs(10));
        let mut s = TcpStream::connect(backup_addr()).expect("connect");
        let wrong = initiate(
            &mut s,
            &Security::Key(PairKey::generate().expect("key")),
            &AttachRequest {
                header,
                boot: b"x".to_vec(),
            },
            Instant::now() + Duration::from_secs(10),
        );
        let replay_dropped =
            send_and_wait_drop(&backup_addr(), &recording, Duration::from_secs(10));
        (junk_dropped, idle_dropped, wrong.is_err(), replay_dropped)
    });
    assert_eq!(
        results,
        (true, true, true, true),
        "each hostile peer is dropped"
    );
    let log = pair.backup.log();
    assert_eq!(
        log.matches("dropped a connection").count(),
        4,
        "one line per dropped peer:\n{log}"
    );
    assert!(log.contains("not a lockstep primary"), "{log}");
    assert!(log.contains("deadline"), "{log}");
    assert!(log.contains("not made with this pair key"), "{log}");
    assert!(log.contains("replayed"), "{log}");
    assert!(!log.contains("following the primary"), "{log}");
    assert_eq!(pair.counter("backup", "channel_rejected"), 4);
    // Still waiting: the real primary attaches and the pair serves.
    pair.start_primary();
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    pair.check_writes(writers, "a pair after hostile peers", false);
}

#[test]
fn a_fake_primary_without_the_key_cannot_make_the_backup_execute_claim_or_go_live() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::launch_backup(net_ft("fp"), FtOptions::default());
    let (header, stream) = fake_stream();
    // The attack of an unauthenticated build (a stream header and a boot
    // entry, straight away), and the same asking for an insecure channel.
    let dropped = in_netns(&pair.net.ns("a"), move || {
        let raw = send_and_wait_drop(&backup_addr(), &stream, Duration::from_secs(10));
        let mut s = TcpStream::connect(backup_addr()).expect("connect");
        let insecure = initiate(
            &mut s,
            &Security::Insecure,
            &AttachRequest {
                header,
                boot: stream[64 + 32..].to_vec(),
            },
            Instant::now() + Duration::from_secs(10),
        );
        (raw, insecure.is_err())
    });
    assert_eq!(dropped, (true, true));
    wait_for(Duration::from_secs(10), "both fakes counted", || {
        pair.counter("backup", "channel_rejected") >= 2
    });
    // Nothing was executed, claimed or announced, and nothing was begun.
    let log = pair.backup.log();
    for never in [
        "following the primary",
        "going live",
        "won the arbiter",
        "claim",
    ] {
        assert!(
            !log.contains(never),
            "{never:?} after a fake primary:\n{log}"
        );
    }
    let records: Vec<String> = std::fs::read_dir(pair.arbiter_dir())
        .expect("arbiter dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        records.is_empty(),
        "arbiter records after a fake: {records:?}"
    );
    assert_eq!(pair.status("backup").expect("status")["epoch"], 0);
    // The real primary still attaches; epochs go on from 1.
    pair.start_primary();
    assert_eq!(pair.counter("primary", "epoch"), 1);
    pair.wait_acked(50);
}

#[test]
fn an_impostor_backup_without_the_key_never_gets_an_output_released() {
    if !kvm_available() {
        return;
    }
    // The primary is pointed at an impostor on host B that accepts, acks
    // anything and keeps every byte it gets.
    let opts = FtOptions {
        backup_target: Some(format!("{BACKUP_LOG}:7100")),
        primary_extra: vec!["--connect-timeout".into(), "4".into()],
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch_backup(net_ft("ib"), opts);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let impostor = spawn_in_netns(pair.net.ns("b"), move || {
        let l = std::net::TcpListener::bind((BACKUP_LOG, 7100)).expect("impostor listen");
        l.set_nonblocking(true).expect("nonblocking");
        let (mut got, mut conns) = (Vec::new(), 0);
        while !flag.load(Ordering::Relaxed) {
            let Ok((mut s, _)) = l.accept() else {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            };
            conns += 1;
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_millis(300)));
            let mut buf = [0u8; 65536];
            for seq in 1..20u64 {
                // Acks for everything, as a v1 backup would send them.
                let ack = logchan::Ack {
                    acked_seq: seq * 1000,
                    replayed_seq: 0,
                    replayed_exit: 0,
                    diverged: false,
                };
                let _ = s.write_all(&ack.encode());
                match s.read(&mut buf) {
                    Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
        }
        (got, conns)
    });
    pair.primary = spawn_vmm(pair.primary_command());
    // Clients try the guest all along: nothing may answer.
    let mut answered = Vec::new();
    let started = Instant::now();
    while pair.primary.try_wait().expect("primary").is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the primary gave up in time"
        );
        let out = pair
            .net
            .cmd("c", "redis-cli")
            .args(["-h", GUEST_IP, "-t", "1", "ping"])
            .output()
            .expect("redis-cli");
        answered.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    stop.store(true, Ordering::Relaxed);
    let (got, conns) = impostor.join().expect("impostor");
    let status = pair.primary.exit_status(Duration::from_secs(10));
    let log = pair.primary.log();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("no backup of this pair answered"), "{log}");
    assert!(conns >= 1, "the primary tried the impostor");
    assert!(
        !answered.iter().any(|a| a == "PONG"),
        "an output left: {answered:?}"
    );
    // The impostor learnt nothing of the log: no stream header, no guest
    // configuration.
    assert!(!contains(&got, b"LSTPLOG"), "the log reached the impostor");
    assert!(
        !contains(&got, b"workload=kv"),
        "the boot entry reached the impostor"
    );
    eprintln!(
        "impostor: {conns} connections, {} bytes (handshakes only)",
        got.len()
    );
}

#[test]
fn forged_and_replayed_heartbeats_are_dropped_and_the_backup_still_takes_over() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("hb", FtOptions::default());
    let dir = pair.dir.path().to_path_buf();
    let link = format!("{}-ba", pair.net.name);
    let capture = Capture::start(
        &pair.net,
        "b",
        &link,
        &format!("udp and src host {PRIMARY_LOG}"),
        &dir.join("beats.pcap"),
    );
    let writers = Writers::start(&pair, 2);
    let beats_before = pair.counter("primary", "heartbeats_sent");
    pair.wait_acked(200);
    // Enough beats inside the capture whatever the load: 200 acks can come
    // in less than five heartbeat periods.
    wait_for(Duration::from_secs(10), "ten heartbeats sent", || {
        pair.counter("primary", "heartbeats_sent") >= beats_before + 10
    });
    let beats: Vec<Vec<u8>> = udp_payloads(&capture.finish())
        .into_iter()
        .filter(|p| p.len() == logchan::channel::heartbeat::SIGNED_HEARTBEAT_LEN)
        .collect();
    assert!(beats.len() >= 5, "signed beats captured: {}", beats.len());
    assert!(
        beats.iter().all(|b| Heartbeat::decode(b).is_err()),
        "no unsigned beats"
    );
    let epoch = pair.counter("primary", "epoch");
    pair.primary.signal(libc::SIGKILL);
    let _ = pair.primary.wait_exit(Duration::from_secs(10));
    // From the dead primary's address: its own beats again, and new ones
    // signed with another key and unsigned ones, for its epoch.
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let sender = spawn_in_netns(pair.net.ns("a"), move || {
        let mut sock = None;
        wait_for(
            Duration::from_secs(10),
            "the primary's port to be free",
            || {
                sock = UdpSocket::bind((PRIMARY_LOG, LOG_PORT)).ok();
                sock.is_some()
            },
        );
        let sock = sock.expect("bound");
        let forger = BeatKey::generate().expect("key");
        let mut sent = 0u64;
        while !flag.load(Ordering::Relaxed) && sent < 200_000 {
            let fresh = Heartbeat {
                role: Role::Primary,
                flags: 0,
                epoch,
                counter: u64::MAX - sent,
                log_seq: u64::MAX,
            };
            for d in beats
                .iter()
                .map(Vec::as_slice)
                .chain([&fresh.encode_signed(&forger)[..], &fresh.encode()[..]])
            {
                let _ = sock.send_to(d, (BACKUP_LOG, LOG_PORT));
                sent += 1;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        sent
    });
    pair.wait_backup_live(Duration::from_secs(10));
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().expect("sender");
    let (forged, replayed) = (
        pair.counter("backup", "heartbeats_forged"),
        pair.counter("backup", "heartbeats_replayed"),
    );
    assert!(
        sent > 0 && forged > 0 && replayed > 0,
        "sent {sent}, forged {forged}, replayed {replayed}"
    );
    let n = pair.check_writes(writers, "forged and replayed heartbeats", false);
    eprintln!(
        "{sent} forged/replayed beats sent, {forged} forged and {replayed} replayed refused; {n} writes kept"
    );
}

#[test]
fn the_logging_link_carries_no_client_plaintext() {
    if !kvm_available() {
        return;
    }
    // The control first: on an --insecure link the marker is seen, so the
    // search can find it.
    for insecure in [true, false] {
        let marker = format!("plaintext-marker-{}", unique_name("m"));
        let opts = FtOptions {
            insecure,
            ..FtOptions::default()
        };
        let pair = FtPair::start(if insecure { "pi" } else { "pe" }, opts);
        let link = format!("{}-ba", pair.net.name);
        let capture = Capture::start(
            &pair.net,
            "b",
            &link,
            &format!("tcp port {LOG_PORT}"),
            &pair.dir.path().join("link.pcap"),
        );
        assert_eq!(pair.redis(&["set", "secret", &marker]), "OK");
        assert_eq!(pair.redis(&["get", "secret"]), marker);
        let bytes = capture.finish();
        assert!(bytes.len() > 1000, "the link was captured");
        assert_eq!(
            contains(&bytes, marker.as_bytes()),
            insecure,
            "marker on the {} link",
            if insecure { "insecure" } else { "encrypted" }
        );
    }
}
