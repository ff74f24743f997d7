//! The faults a host meets besides a clean death, on real namespaces, taps,
//! KVM and clients: one-way and healing partitions of the logging link, a
//! backup that is alive but makes no progress, an arbiter outage, a backup
//! far behind at failover, and junk from a dead primary's address. Every
//! trial checks that at most one side serves (the taps of both hosts are
//! watched), and reads every acknowledged write back, through whoever
//! serves and from a reboot of the disk image.

mod common;

use std::time::{Duration, Instant};

use common::ft::*;
use common::split::{Outcome, SplitWatch};
use common::*;

/// One direction of the logging link drops everything: the side that
/// stops hearing its peer claims the arbiter; exactly one side serves.
/// `slow_claim` delays one side's claim (fail point `claim-delay`) so that
/// the other wins: each outcome is tested, not left to the race.
fn one_way_partition(from: &str, slow_claim: Option<&str>, expect: Outcome) {
    let what = format!("dropping {from}'s packets to its peer, {slow_claim:?} claiming late");
    let mut pair = FtPair::start(&format!("o{from}"), FtOptions::default());
    if let Some(side) = slow_claim {
        pair.set_failpoints(side, "claim-delay=sleep(300)");
    }
    let mut watch = SplitWatch::start(&pair);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    pair.drop_outgoing(from);
    let outcome = watch.settle(&mut pair, Duration::from_secs(20), false, &what);
    assert_eq!(outcome, expect, "{what}");
    if outcome == Outcome::PrimaryAlone {
        watch.backup_stops(&mut pair, Duration::from_secs(20), &what);
    }
    pair.wait_served(20);
    let n = pair.check_writes(writers, &what, false);
    eprintln!("{what}: {outcome:?}, {n} acknowledged writes kept");
}

/// A→B dropped: the backup hears nothing and claims; the primary hears
/// heartbeats but no acks and claims after the ack timeout.
#[test]
fn a_one_way_partition_from_the_primary_leaves_one_side_serving() {
    if kvm_available() {
        one_way_partition("a", Some("backup"), Outcome::PrimaryAlone);
        one_way_partition("a", Some("primary"), Outcome::BackupLive);
    }
}

/// B→A dropped: the primary hears nothing from its backup and continues
/// alone; the backup, still hearing the primary, never claims, and stops
/// when the channel closes.
#[test]
fn a_one_way_partition_from_the_backup_leaves_one_side_serving() {
    if kvm_available() {
        one_way_partition("b", None, Outcome::PrimaryAlone);
    }
}

/// The logging link goes down for a random time, from below to well above
/// the failure timeout, and comes back while both sides run: the pair
/// stays whole, or exactly one side serves and the other stops.
#[test]
fn a_partition_that_heals_leaves_at_most_one_side_serving() {
    if !kvm_available() {
        return;
    }
    let mut seed = Seed::from_env();
    let trials = trials("LOCKSTEP_HEAL_TRIALS", 4);
    for trial in 0..trials {
        let cut = Duration::from_millis(seed.between(20, 400));
        let what = format!("trial {trial}: the logging link down for {cut:?}");
        let mut pair = FtPair::start("hl", FtOptions::default());
        let mut watch = SplitWatch::start(&pair);
        let writers = Writers::start(&pair, 2);
        pair.wait_acked(200);
        pair.logging_link(false);
        // The fault's length, not a synchronization.
        std::thread::sleep(cut);
        pair.logging_link(true);
        let outcome = watch.settle(&mut pair, Duration::from_secs(20), true, &what);
        if outcome == Outcome::PrimaryAlone {
            watch.backup_stops(&mut pair, Duration::from_secs(20), &what);
        }
        let n = pair.check_writes(writers, &what, false);
        eprintln!("{what}: {outcome:?}, {n} acknowledged writes kept");
    }
}

/// A backup that stays alive (it heartbeats) but makes no progress —
/// it stops acknowledging, or stops reading the log, or its acks are lost
/// on the way — is failed by the primary within the ack-progress timeout;
/// the primary continues alone and serves.
fn a_backup_without_progress(side: &str, failpoint: &str) {
    let what = format!("{side} with {failpoint}");
    let ack_timeout = Duration::from_millis(200);
    let opts = FtOptions {
        primary_extra: vec![
            "--ack-timeout-ms".into(),
            ack_timeout.as_millis().to_string(),
        ],
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("hb", opts);
    let mut watch = SplitWatch::start(&pair);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    let hung = Instant::now();
    pair.set_failpoints(side, &format!("{failpoint}=return"));
    let outcome = watch.settle(&mut pair, Duration::from_secs(20), false, &what);
    let took = hung.elapsed();
    assert_eq!(outcome, Outcome::PrimaryAlone, "{what}");
    assert!(
        pair.counter("primary", "ack_timeouts") >= 1,
        "{what}: the primary counts the ack timeout"
    );
    // The ack timeout, the claim and polling: well under a second more.
    assert!(
        took < ack_timeout + Duration::from_secs(2),
        "{what}: failed after {took:?}"
    );
    pair.wait_served(20);
    let n = pair.check_writes(writers, &what, false);
    eprintln!("{what}: failed by the primary {took:?} after it hung, {n} acknowledged writes kept");
}

#[test]
fn a_backup_that_heartbeats_but_never_acks_is_failed() {
    if kvm_available() {
        a_backup_without_progress("backup", "backup-ack");
    }
}

#[test]
fn a_backup_that_stops_reading_is_failed() {
    if kvm_available() {
        a_backup_without_progress("backup", "backup-read");
    }
}

#[test]
fn a_backup_whose_acks_are_lost_is_failed() {
    if kvm_available() {
        a_backup_without_progress("primary", "primary-drop-ack");
    }
}

/// The backup dies while the arbiter is unreachable for longer than the
/// log buffers last: the primary holds its outputs, keeps its guest running
/// and never dies of the undrained log; when the arbiter is back it
/// continues alone and service resumes.
#[test]
fn a_backup_lost_during_an_arbiter_outage_resumes_when_the_arbiter_answers() {
    if !kvm_available() {
        return;
    }
    let what = "the backup killed during an arbiter outage";
    const BUFFERS_MIB: u64 = 2;
    let opts = FtOptions {
        primary_extra: vec!["--log-buffer-mib".into(), BUFFERS_MIB.to_string()],
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("ao", opts);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    // How long the primary's log buffers would last at this load, then the
    // stall timeout that full buffers used to end the primary at (10 s).
    let (b0, t0) = (pair.counter("primary", "log_bytes"), Instant::now());
    pair.wait_acked(500);
    let rate = (pair.counter("primary", "log_bytes") - b0) as f64 / t0.elapsed().as_secs_f64();
    let buffers_last = Duration::from_secs_f64((BUFFERS_MIB << 20) as f64 / rate.max(1.0));
    let outage = (buffers_last + Duration::from_secs(11)).min(Duration::from_secs(30));
    eprintln!(
        "{what}: log at {:.1} MB/s, buffers last {buffers_last:?}, outage {outage:?}",
        rate / 1e6
    );
    let away = pair.dir.path().join("arbiter.away");
    std::fs::rename(pair.arbiter_dir(), &away).expect("take the arbiter away");
    pair.backup.signal(libc::SIGKILL);
    pair.primary
        .wait_for_line("the arbiter cannot be reached", Duration::from_secs(10));
    let exits = pair.counter("primary", "exit_index");
    let gone = Instant::now();
    let mut frames = common::watch::TapWatch::start(&pair.net.ns("a"), &pair.net.tap());
    while gone.elapsed() < outage {
        assert!(
            pair.primary.try_wait().ok().flatten().is_none(),
            "{what}: the primary died {:?} into the outage\n{}",
            gone.elapsed(),
            pair.primary.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        frames.take_from_vmm(),
        0,
        "{what}: the primary released outputs without the arbiter"
    );
    assert!(
        pair.counter("primary", "exit_index") > exits,
        "{what}: the guest kept running"
    );
    std::fs::rename(&away, pair.arbiter_dir()).expect("bring the arbiter back");
    pair.primary
        .wait_for_line("continuing alone", Duration::from_secs(10));
    wait_for(Duration::from_secs(10), "service alone", || {
        pair.redis(&["set", "after-outage", "1"]) == "OK"
    });
    // The clients' 10 s timeouts may end some calls during the outage; what
    // was acknowledged must still be there.
    let n = pair.check_writes(writers, what, true);
    eprintln!("{what}: {n} acknowledged writes kept");
}

/// The primary dies while etcd, the arbiter, is frozen (it takes
/// connections and never answers): the backup may not go live without it,
/// and does once etcd answers again.
#[test]
fn a_primary_lost_during_an_etcd_outage_fails_over_when_etcd_answers() {
    if !kvm_available() {
        return;
    }
    let what = "the primary killed while etcd is frozen";
    let net = net_ft("eo");
    let etcd = common::etcd::Etcd::start_in(&net.ns("c"), "10.77.0.1");
    let opts = FtOptions {
        arbiter: Some(format!("etcd://{}/lockstep-outage", etcd.client_addr())),
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch(net, opts);
    let mut watch = SplitWatch::start(&pair);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    etcd.signal(libc::SIGSTOP);
    pair.primary.signal(libc::SIGKILL);
    // Two failed claims (2 s request timeout each): the backup waits.
    wait_for(
        Duration::from_secs(15),
        "the backup to retry the arbiter",
        || {
            pair.backup
                .log()
                .matches("the arbiter cannot be reached")
                .count()
                >= 2
        },
    );
    assert!(
        !pair.backup.log().contains(LIVE),
        "{what}: the backup went live without the arbiter"
    );
    etcd.signal(libc::SIGCONT);
    let outcome = watch.settle(&mut pair, Duration::from_secs(20), false, what);
    assert_eq!(outcome, Outcome::BackupLive, "{what}");
    pair.wait_served(50);
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {n} acknowledged writes kept");
}

/// A failover while the backup's replay is far behind what it acked (its
/// bounded replay buffer holding thousands of entries): the new primary
/// replays every acked entry before it goes live.
#[test]
fn a_failover_while_the_backup_lags_replays_every_acked_entry() {
    if !kvm_available() {
        return;
    }
    let what = "failover with the backup's replay behind";
    let mut pair = FtPair::start("lg", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    // Every replayed exit takes a millisecond more: the replay falls behind
    // while the backup keeps receiving and acknowledging.
    pair.set_failpoints("backup", "replay-slow=sleep(1)");
    wait_for(
        Duration::from_secs(30),
        "the backup's replay to fall behind what it acked",
        || {
            let s = pair.status("backup");
            let n = |k: &str| s.as_ref().and_then(|s| s[k].as_u64()).unwrap_or(0);
            n("acked_seq").saturating_sub(n("replayed_seq")) > ACKED_AHEAD
        },
    );
    let (acked, replayed) = (
        pair.counter("backup", "acked_seq"),
        pair.counter("backup", "replayed_seq"),
    );
    let throttle = pair.counter("primary", "throttle_permille");
    pair.primary.signal(libc::SIGKILL);
    pair.set_failpoints("backup", "replay-slow=");
    pair.wait_backup_live(Duration::from_secs(60));
    let replayed_at_live = pair.counter("backup", "replayed_seq");
    // The go-live report (failure timeout, replay of the lag) follows.
    pair.backup.wait_for_line(
        "after the primary's last sign of life:",
        Duration::from_secs(5),
    );
    assert!(
        replayed_at_live >= acked,
        "{what}: live after replaying to seq {replayed_at_live}, below the acked {acked}"
    );
    let n = pair.check_writes(writers, what, false);
    eprintln!(
        "{what}: {} entries behind at the kill, throttle at {throttle} permille, {n} acknowledged writes kept",
        acked - replayed
    );
}

/// The backup's I/O thread stalls again and again (each gap longer than
/// half the timeout, so each is forgiven) while its primary dies: the
/// primary's last heartbeats keep looking fresh, and the closed channel is
/// all the evidence left. The backup must put that to the arbiter and
/// serve, not stop as if a live primary had cut it off (it used to exit 8
/// and leave nobody serving).
#[test]
fn a_backup_stalling_while_its_primary_dies_still_takes_over() {
    if !kvm_available() {
        return;
    }
    let what = "a stalling backup whose primary dies";
    let mut pair = FtPair::start("st", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    pair.set_failpoints("backup", "backup-tick=sleep(40)");
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(30));
    pair.set_failpoints("backup", "backup-tick=");
    pair.wait_served(50);
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {n} acknowledged writes kept");
}

/// Entries acked and not yet replayed at the kill: the backup's replay
/// buffer (bounded, replay_buffer.rs) holds them.
const ACKED_AHEAD: u64 = 2000;

/// A dead primary's address keeps sending junk to the backup's heartbeat
/// and log ports: junk is not a heartbeat, and the backup goes live.
#[test]
fn junk_from_a_dead_primarys_address_does_not_hold_the_backup() {
    if !kvm_available() {
        return;
    }
    let what = "junk from the dead primary's address";
    let mut pair = FtPair::start("jk", FtOptions::default());
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(200);
    pair.primary.signal(libc::SIGKILL);
    let _ = pair.primary.wait_exit(Duration::from_secs(10));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let junk = junk_sender(&pair, stop.clone());
    pair.wait_backup_live(Duration::from_secs(10));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = junk.join().expect("junk sender");
    assert!(sent > 0, "{what}: junk was sent");
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {sent} junk datagrams ignored, {n} acknowledged writes kept");
}

/// From the primary's own address and heartbeat port (free now that it is
/// dead): short, long and heartbeat-sized junk until `stop`.
fn junk_sender(
    pair: &FtPair,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    spawn_in_netns(pair.net.ns("a"), move || {
        // The dead primary's ring may hold its socket a moment longer.
        let mut sock = None;
        wait_for(
            Duration::from_secs(10),
            "the primary's port to be free",
            || {
                sock = std::net::UdpSocket::bind((PRIMARY_LOG, LOG_PORT)).ok();
                sock.is_some()
            },
        );
        let sock = sock.expect("bound");
        let to = (BACKUP_LOG, LOG_PORT);
        let mut sent = 0u64;
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent < 100_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = [1usize, 32, 40, 64, 1400][(x % 5) as usize];
            let buf: Vec<u8> = (0..len).map(|i| (x >> (i % 8 * 8)) as u8).collect();
            if sock.send_to(&buf, to).is_ok() {
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        sent
    })
}
