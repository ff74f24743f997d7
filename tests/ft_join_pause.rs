//! Rule 4 for the join (docs/join.md, "Failures"): a new backup joining a
//! running primary by live clone against a paused side, hostile peers and
//! a one-way partition, on real namespaces, taps, KVM and clients.
//!
//! * A joiner SIGSTOPped in the middle of the pre-copy and held until the
//!   primary gave up on it, and one SIGSTOPped at the join's last step
//!   (the primary, switched to it, is alone again within a joined
//!   backup's 1 s start-up grace, not the boot's 10 s): the primary serves
//!   throughout, the stopped joiner never goes live, never wins a claim
//!   and never writes a frame into its tap, and it stops once woken; a
//!   fresh spare then protects the pair.
//! * The primary SIGSTOPped mid-copy, 300 ms and then 5 s (less than the
//!   joiner's 10 s read timeout): the join goes on and completes, since
//!   the primary's own waits do not count its stop; the joiner never goes
//!   live.
//! * Junk, a wrong key and a second primary holding the key at the waiting
//!   spare's port, before and during the copy, and junk datagrams at both
//!   heartbeat ports: all refused, nothing panics, and the real join
//!   succeeds.
//! * A one-way partition of the logging link, either direction, during the
//!   copy, healed 3 s later: the join completes or fails cleanly, and the
//!   pair is protected again.
//!
//! Every test ends with a failover (kill -9 of the primary) to the joined
//! backup: every acknowledged write is read back through it and from a
//! reboot of the disk image, and the clients' longest wait is bounded.
//!
//! Fail points: `join-recv` (joiner, each message: `sleep(N)` stretches
//! the copy so that a fault lands inside it) and `join-switch-wait`
//! (primary: holds the join's last step).

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::ft::*;
use common::watch::TapWatch;
use common::*;
use logchan::secure::{AttachRequest, PairKey, Security, initiate};

/// A joiner that sleeps 30 ms before each of the first 100 messages of
/// the join stream (a run of zero or non-zero pages each): the first
/// pre-copy round lasts over 3 s, a window a fault lands in; then it
/// reads at full speed.
const SLOW_COPY: &str = "join-recv=100*sleep(30)";

fn spare_addr() -> String {
    format!("{BACKUP_LOG}:{LOG_PORT}")
}

/// Waits until `vmm` logged `n` lines containing `needle`.
fn wait_count(vmm: &Vmm, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while vmm.log().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "no {n} lines {needle:?} within {timeout:?}:\n{}",
            vmm.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn count(vmm: &Vmm, needle: &str) -> usize {
    vmm.log().matches(needle).count()
}

/// The primary's joins that failed once a joiner answered (not the tries
/// of the spare's address before it listened), and the last one's line.
fn join_failures(pair: &FtPair) -> (usize, String) {
    let log = pair.primary.log();
    let failed: Vec<&str> = log
        .lines()
        .filter(|l| {
            l.contains("no backup joined at") && !l.contains("connecting to the new backup")
        })
        .collect();
    (
        failed.len(),
        failed.last().copied().unwrap_or_default().to_string(),
    )
}

/// The primary at a pre-copy: it opened the channel to a joiner for the
/// `n`-th time and the joiner has not received the whole state.
fn wait_copying(pair: &FtPair, n: usize) {
    wait_count(
        &pair.primary,
        "joining the backup at",
        n,
        Duration::from_secs(30),
    );
}

/// A joiner whose join did not complete stops within 30 s (any status but
/// success), having never gone live, won a claim, or written a frame into
/// its tap (`tap`: a watch on host B's tap). `may_follow`: it may have
/// begun to follow (a joiner stopped after the switch, whose primary
/// dropped it).
fn joiner_stops_without_serving(
    pair: &mut FtPair,
    tap: &mut TapWatch,
    may_follow: bool,
    what: &str,
) {
    let status = pair.backup.exit_status(Duration::from_secs(30));
    let log = pair.backup.log();
    // An error (1: the copy broke, or no entry came); once following, it
    // lost the arbiter (7) or its channel broke (8).
    let codes: &[i32] = if may_follow { &[1, 7, 8] } else { &[1] };
    assert!(
        status.code().is_some_and(|c| codes.contains(&c)),
        "{what}: the joiner ended with {status}, not {codes:?}\n{log}"
    );
    // (A backup whose channel broke logs that the primary "won the
    // arbiter"; its own win says "won the arbiter for epoch".)
    let mut never = vec![LIVE, "won the arbiter for epoch"];
    if !may_follow {
        never.push("following the primary");
    }
    for line in never {
        assert!(
            !log.contains(line),
            "{what}: the joiner logged {line:?}\n{log}"
        );
    }
    let frames = tap.take_from_vmm();
    assert_eq!(
        frames, 0,
        "{what}: the joiner wrote {frames} frames into its tap ({:?})",
        tap.last
    );
}

/// The final trial of every test: the primary dies, the joined backup
/// goes live, and every acknowledged write is there, through it and on a
/// reboot of the disk image; no client waited longer than `max_gap`.
fn fail_over_and_check(pair: &mut FtPair, writers: Writers, what: &str, max_gap: Duration) {
    pair.wait_acked(100);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let c = pair.verify_writes(writers);
    assert!(
        c.errors.is_empty(),
        "{what}: clients saw errors: {:?}",
        &c.errors[..c.errors.len().min(5)]
    );
    assert!(c.acked > 0, "{what}: no write was acknowledged");
    assert!(
        c.lost_live.is_empty() && c.lost_reboot.is_empty(),
        "{what}: of {} acknowledged writes, {} lost live (e.g. {:?}), {} not on the disk image (e.g. {:?})",
        c.acked,
        c.lost_live.len(),
        &c.lost_live[..c.lost_live.len().min(5)],
        c.lost_reboot.len(),
        &c.lost_reboot[..c.lost_reboot.len().min(5)]
    );
    assert!(
        c.longest_gap <= max_gap,
        "{what}: the clients waited {:?} (bound {max_gap:?})",
        c.longest_gap
    );
    eprintln!(
        "{what}: {} acknowledged writes kept, longest client wait {:?}",
        c.acked, c.longest_gap
    );
}

/// A pair whose backup was lost: the primary serves alone, under load,
/// and tries the spare address on host B.
fn alone_under_load(prefix: &str) -> (FtPair, Writers, TapWatch) {
    let mut pair = FtPair::start(prefix, FtOptions::spare_on_b());
    let tap = TapWatch::start(&pair.net.ns("b"), &pair.net.tap());
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    pair.lose_backup();
    (pair, writers, tap)
}

/// A fresh spare joins; the pair is protected for the `n`-th time.
fn fresh_spare_joins(pair: &mut FtPair, n: usize) {
    pair.new_backup(&[], &[]);
    pair.wait_protected(n, Duration::from_secs(60));
    pair.wait_served(50);
}

#[test]
fn a_joiner_stopped_mid_copy_never_serves_and_a_fresh_spare_then_protects_the_pair() {
    if !kvm_available() {
        return;
    }
    let what = "a joiner SIGSTOPped mid-copy";
    let (mut pair, writers, mut tap) = alone_under_load("jps");
    pair.new_backup(&[], &[("FAILPOINTS", SLOW_COPY)]);
    wait_copying(&pair, 1);
    pair.backup.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    assert!(
        !pair.backup.log().contains("joined by live clone"),
        "{what}: the stop landed after the copy\n{}",
        pair.backup.log()
    );
    // Held until the primary gave up on it (a send that makes no progress
    // for 2 s, or no `Applied` within 20 s), and serves meanwhile.
    wait_for(Duration::from_secs(40), "the primary to give up", || {
        join_failures(&pair).0 >= 1
    });
    let (_, line) = join_failures(&pair);
    assert!(
        line.contains("copying the guest"),
        "{what}: the copy failed, not the opening: {line}"
    );
    pair.wait_served(50);
    eprintln!("{what}: the primary gave up after {:?}", stopped.elapsed());
    pair.backup.signal(libc::SIGCONT);
    joiner_stops_without_serving(&mut pair, &mut tap, false, what);
    assert_eq!(count(&pair.primary, "protected again"), 0);
    fresh_spare_joins(&mut pair, 1);
    // The copy, its failure and the next join cost the clients no more
    // than a moment; a primary waiting on the stopped joiner would have.
    fail_over_and_check(&mut pair, writers, what, Duration::from_secs(3));
}

#[test]
fn a_joiner_stopped_at_the_last_step_never_serves_and_a_fresh_spare_then_protects_the_pair() {
    if !kvm_available() {
        return;
    }
    let what = "a joiner SIGSTOPped at the join's last step";
    let (mut pair, writers, mut tap) = alone_under_load("jpl");
    pair.set_failpoints("primary", "join-switch-wait=pause");
    pair.new_backup(&[], &[]);
    pair.backup
        .wait_for_line("joined by live clone", Duration::from_secs(30));
    pair.backup.signal(libc::SIGSTOP);
    let stopped = Instant::now();
    // The joiner holds the whole state and stands still; the last step
    // goes on: the switch to a joiner that never answers (or, if the
    // paused guest gave up meanwhile, a join failed after the pause).
    pair.set_failpoints("primary", "join-switch-wait=");
    wait_count(
        &pair.primary,
        "continuing alone",
        2,
        Duration::from_secs(20),
    );
    let log = pair.primary.log();
    let switched = log.contains("protected again");
    assert!(
        switched || log.contains("failed after the pause"),
        "{what}: neither switched nor failed\n{log}"
    );
    let alone = stopped.elapsed();
    eprintln!("{what}: the primary alone again after {alone:?}");
    // The joined backup's start-up grace (1 s), and the time to release
    // the last step: not the boot's 10 s, for which every output waited.
    assert!(
        alone < Duration::from_secs(4),
        "{what}: the primary held its outputs {alone:?} for a stopped joiner"
    );
    // Held well beyond the failure timeout while the primary serves.
    pair.wait_served(50);
    eprintln!("{what}: served after {:?}", stopped.elapsed());
    std::thread::sleep(Duration::from_secs(1)); // the stop's length
    pair.backup.signal(libc::SIGCONT);
    joiner_stops_without_serving(&mut pair, &mut tap, switched, what);
    fresh_spare_joins(&mut pair, usize::from(switched) + 1);
    // The held last step froze the guest (up to the vCPU's 3 s).
    fail_over_and_check(&mut pair, writers, what, Duration::from_secs(5));
}

#[test]
fn a_primary_stopped_mid_copy_completes_the_join_and_the_joiner_never_goes_live() {
    if !kvm_available() {
        return;
    }
    let what = "the primary SIGSTOPped mid-copy";
    let (mut pair, writers, mut tap) = alone_under_load("jpp");
    let mut protected = 0;
    for (trial, hold) in [Duration::from_millis(300), Duration::from_secs(5)]
        .into_iter()
        .enumerate()
    {
        let what = format!("{what} for {hold:?}");
        if trial > 0 {
            // Lose the backup that joined in the trial before.
            let alone = count(&pair.primary, "continuing alone");
            pair.backup.signal(libc::SIGKILL);
            wait_count(
                &pair.primary,
                "continuing alone",
                alone + 1,
                Duration::from_secs(10),
            );
            tap.take_from_vmm();
        }
        let failed = join_failures(&pair).0;
        pair.new_backup(&[], &[("FAILPOINTS", SLOW_COPY)]);
        wait_copying(&pair, trial + 1);
        pair.primary.signal(libc::SIGSTOP);
        // The fault's length, not a synchronization.
        std::thread::sleep(hold);
        pair.primary.signal(libc::SIGCONT);
        wait_for(
            Duration::from_secs(40),
            "the join to complete or fail",
            || {
                count(&pair.primary, "protected again") > protected
                    || join_failures(&pair).0 > failed
            },
        );
        // Shorter than the joiner's 10 s read timeout, and the primary's
        // own waits do not count its stop: the join goes on where it was.
        assert!(
            join_failures(&pair).0 == failed,
            "{what}: the join failed: {}",
            join_failures(&pair).1
        );
        protected += 1;
        pair.wait_protected(protected, Duration::from_secs(10));
        eprintln!("{what}: the join completed");
        let log = pair.backup.log();
        assert!(
            !log.contains(LIVE) && !log.contains("won the arbiter for epoch"),
            "{what}: the joiner claimed or went live\n{log}"
        );
        let frames = tap.take_from_vmm();
        assert_eq!(frames, 0, "{what}: a following backup wrote frames");
        let status = pair.status("primary").expect("status");
        assert_eq!(status["protection"], "protected", "{what}: {status}");
        pair.wait_acked(100);
    }
    // A client waits out the primary's 5 s stop.
    fail_over_and_check(&mut pair, writers, what, Duration::from_secs(8));
}

/// Junk datagrams from `ns` to `to` until `stop`; returns how many.
fn junk_datagrams(
    pair: &FtPair,
    ns: &str,
    to: (&'static str, u16),
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    spawn_in_netns(pair.net.ns(ns), move || {
        let sock = std::net::UdpSocket::bind(("0.0.0.0", 0)).expect("junk socket");
        let (mut sent, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
        while !stop.load(Ordering::Relaxed) && sent < 100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = [1usize, 32, 40, 64, 1400][(x % 5) as usize];
            let buf: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if sock.send_to(&buf, to).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        sent
    })
}

/// Hostile peers at the spare's port, from host A: junk, a wrong key, and
/// an attach under the pair's own key with a header of its own. Returns
/// whether each was dropped or refused.
fn hostile_peers(pair: &FtPair) -> (bool, bool, bool) {
    let key = PairKey::read(&pair.key_file()).expect("the pair's key");
    in_netns(&pair.net.ns("a"), move || {
        let junk: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let junk_dropped = send_and_wait_drop(&spare_addr(), &junk, Duration::from_secs(10));
        let open = |security: Security| {
            let mut s = TcpStream::connect(spare_addr()).expect("connect");
            let identity = logchan::GuestIdentity {
                mem_size: 128 << 20,
                kernel_hash: 1,
                boot_hash: 2,
            };
            let mut header =
                logchan::StreamHeader::new(identity, logchan::header::flags::READ_DATA_LOGGED, 99);
            header.first_seq = 5;
            let r = initiate(
                &mut s,
                &security,
                &AttachRequest {
                    header,
                    boot: b"not a guest".to_vec(),
                },
                Instant::now() + Duration::from_secs(10),
            );
            // A peer that got in would now send junk as its join stream.
            if r.is_ok() {
                let _ = s.write_all(&[0xff; 64]);
            }
            r.is_err()
        };
        let wrong_key = open(Security::Key(PairKey::generate().expect("key")));
        let insider = open(Security::Key(key));
        (junk_dropped, wrong_key, insider)
    })
}

#[test]
fn hostile_peers_at_the_spare_and_the_heartbeat_ports_do_not_stop_the_join() {
    if !kvm_available() {
        return;
    }
    let what = "hostile peers around a join";
    let (mut pair, writers, _tap) = alone_under_load("jph");
    pair.new_backup(&[], &[("FAILPOINTS", SLOW_COPY)]);
    // Junk datagrams at the spare's heartbeat port and the primary's (the
    // joined pair's heartbeats use the spare's logging port on both sides).
    let stop = Arc::new(AtomicBool::new(false));
    let at_spare = junk_datagrams(&pair, "a", (BACKUP_LOG, LOG_PORT), stop.clone());
    let at_primary = junk_datagrams(&pair, "b", (PRIMARY_LOG, LOG_PORT), stop.clone());
    // Before the copy (or at its start: the primary's next round may come
    // first) and in its middle.
    let before = hostile_peers(&pair);
    wait_copying(&pair, 1);
    let during = hostile_peers(&pair);
    assert!(
        !pair.backup.log().contains("joined by live clone"),
        "{what}: the copy ended before the second round of peers\n{}",
        pair.backup.log()
    );
    assert_eq!(
        (before, during),
        ((true, true, true), (true, true, true)),
        "{what}: each hostile peer is dropped or refused"
    );
    pair.wait_protected(1, Duration::from_secs(60));
    // Junk goes on at the heartbeat ports of the joined pair.
    pair.wait_acked(200);
    stop.store(true, Ordering::Relaxed);
    let sent = at_spare.join().expect("junk") + at_primary.join().expect("junk");
    assert!(sent > 0, "{what}: junk was sent");
    let log = pair.backup.log();
    assert!(
        log.matches("dropped a connection").count() >= 2
            && log.contains("not a lockstep primary")
            && log.contains("not made with this pair key"),
        "{what}: the spare said why it dropped them\n{log}"
    );
    assert!(
        log.contains("refused the primary at"),
        "{what}: the second primary was refused\n{log}"
    );
    assert!(!log.contains("panicked"), "{what}\n{log}");
    let status = pair.status("primary").expect("status");
    assert_eq!(status["protection"], "protected", "{what}: {status}");
    assert_eq!(status["joins"], 1, "{what}: {status}");
    eprintln!("{what}: {sent} junk datagrams ignored");
    fail_over_and_check(&mut pair, writers, what, Duration::from_secs(3));
}

/// Heals [`FtPair::drop_outgoing`] on `host`.
fn heal(pair: &FtPair, host: &str) {
    run_ok(
        pair.net
            .cmd(host, "nft")
            .args(["delete", "table", "inet", "fault"]),
    );
}

#[test]
fn a_one_way_partition_during_the_copy_heals_and_the_pair_is_protected() {
    if !kvm_available() {
        return;
    }
    let (mut pair, writers, mut tap) = alone_under_load("jpo");
    let mut protected = 0;
    for (trial, from) in ["a", "b"].into_iter().enumerate() {
        let what = format!("everything out of host {from} dropped for 3 s mid-copy");
        if trial > 0 {
            let alone = count(&pair.primary, "continuing alone");
            pair.backup.signal(libc::SIGKILL);
            wait_count(
                &pair.primary,
                "continuing alone",
                alone + 1,
                Duration::from_secs(10),
            );
            tap.take_from_vmm();
        }
        let failed = join_failures(&pair).0;
        pair.new_backup(&[], &[("FAILPOINTS", SLOW_COPY)]);
        wait_copying(&pair, trial + 1);
        pair.drop_outgoing(from);
        // The fault's length, not a synchronization.
        std::thread::sleep(Duration::from_secs(3));
        heal(&pair, from);
        wait_for(
            Duration::from_secs(40),
            "the join to complete or fail",
            || {
                count(&pair.primary, "protected again") > protected
                    || join_failures(&pair).0 > failed
            },
        );
        protected += 1;
        if count(&pair.primary, "protected again") >= protected {
            pair.wait_protected(protected, Duration::from_secs(10));
            eprintln!("{what}: the join completed");
        } else {
            eprintln!(
                "{what}: the join failed ({}); a fresh spare joins",
                join_failures(&pair).1
            );
            joiner_stops_without_serving(&mut pair, &mut tap, false, &what);
            fresh_spare_joins(&mut pair, protected);
        }
        let log = pair.backup.log();
        assert!(!log.contains(LIVE), "{what}: the joiner went live\n{log}");
        pair.wait_acked(100);
    }
    fail_over_and_check(
        &mut pair,
        writers,
        "one-way partitions during copies",
        Duration::from_secs(3),
    );
}
