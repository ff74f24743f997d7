//! Fencing against a paused side (SIGSTOP of any length, then SIGCONT), on
//! real namespaces, taps, KVM and clients. Once the backup is live, not one
//! frame from the old primary reaches its tap (a packet socket watches) and
//! it sends not one byte more to storage (the kernel's I/O accounting); a
//! paused backup never serves beside the primary. No acknowledged write is
//! lost, through whoever serves and after a reboot of the disk image.

mod common;

use std::time::{Duration, Instant};

use common::ft::*;
use common::split::{Outcome, SplitWatch};
use common::watch::{TapWatch, wait_zombie, write_bytes};
use common::*;

/// Waits up to `pause` for the backup to say it went live (the pause is
/// the fault's length, not a synchronization).
fn live_within(pair: &FtPair, pause: Duration) -> bool {
    let end = Instant::now() + pause;
    loop {
        if pair.backup.log().contains(LIVE) {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_paused_primary_never_outputs_after_the_backup_went_live() {
    if !kvm_available() {
        return;
    }
    let mut seed = Seed::from_env();
    let trials = trials("LOCKSTEP_PAUSE_TRIALS", 20);
    let mut fenced = 0;
    for trial in 0..trials {
        let mut pair = FtPair::start("ps", FtOptions::default());
        let mut frames = TapWatch::start(&pair.net.ns("a"), &pair.net.tap());
        let mut split = SplitWatch::start(&pair);
        let writers = Writers::start(&pair, 3);
        pair.wait_acked(300);
        let p = pair.primary.pid();
        assert!(
            frames.take_from_vmm() > 0 && write_bytes(p) > 0,
            "trial {trial}: the watchers see the primary's frames and writes"
        );
        // From below to well above the 50 ms failure timeout.
        let pause = Duration::from_millis(seed.between(20, 400));
        pair.primary.signal(libc::SIGSTOP);
        let live = live_within(&pair, pause);
        let mut written = 0;
        if live {
            // Everything the primary did before it stopped is counted away.
            frames.take_from_vmm();
            written = write_bytes(p);
        }
        pair.primary.signal(libc::SIGCONT);
        if live {
            // The old primary wakes, finds its lease over and the arbiter
            // lost, and stops without an output.
            assert!(
                wait_zombie(p, Duration::from_secs(15)),
                "trial {trial}: the old primary did not stop\n{}",
                pair.primary.log()
            );
            let (f, w) = (frames.take_from_vmm(), write_bytes(p) - written);
            let status = pair.primary.exit_status(Duration::from_secs(15));
            assert_eq!(
                status.code(),
                Some(7),
                "trial {trial}: the old primary stops: lost the arbiter\n{}",
                pair.primary.log()
            );
            assert_eq!(
                (f, w),
                (0, 0),
                "trial {trial} (pause {pause:?}): frames and bytes written by the old primary after the backup went live\n{}",
                pair.primary.log()
            );
            fenced += 1;
        }
        let what = format!("trial {trial} (pause {pause:?})");
        let outcome = if live {
            Outcome::BackupLive
        } else {
            // The pause ended first: the pair stays whole, or one side
            // wins now, with the fencing rule checked all along.
            split.settle(&mut pair, Duration::from_secs(20), true, &what)
        };
        if outcome == Outcome::PrimaryAlone {
            split.backup_stops(&mut pair, Duration::from_secs(20), &what);
        }
        let before = Instant::now();
        wait_for(Duration::from_secs(10), "service after the pause", || {
            pair.redis(&["set", "after-pause", "1"]) == "OK"
        });
        let n = pair.check_writes(writers, &what, false);
        eprintln!(
            "{what}: {}, {n} acknowledged writes kept (service again after {:?})",
            if live {
                "backup live during the pause, old primary fenced".to_string()
            } else {
                format!("{outcome:?} after the pause")
            },
            before.elapsed()
        );
    }
    assert!(
        fenced * 3 >= trials,
        "too few trials paused the primary past a failover ({fenced} of {trials})"
    );
}

/// A paused backup (SIGSTOP of any length, then SIGCONT) never serves
/// beside the primary: the pair stays whole, or the primary continues
/// alone and the backup stops when it wakes.
#[test]
fn a_paused_backup_never_serves_beside_the_primary() {
    if !kvm_available() {
        return;
    }
    let mut seed = Seed::from_env();
    let trials = trials("LOCKSTEP_PAUSE_TRIALS", 20).div_ceil(3);
    for trial in 0..trials {
        let pause = Duration::from_millis(seed.between(20, 400));
        let what = format!("trial {trial}: the backup paused for {pause:?}");
        let mut pair = FtPair::start("pb", FtOptions::default());
        let mut split = SplitWatch::start(&pair);
        let writers = Writers::start(&pair, 2);
        pair.wait_acked(200);
        pair.backup.signal(libc::SIGSTOP);
        // The fault's length, not a synchronization.
        std::thread::sleep(pause);
        pair.backup.signal(libc::SIGCONT);
        let outcome = split.settle(&mut pair, Duration::from_secs(20), true, &what);
        assert_ne!(
            outcome,
            Outcome::BackupLive,
            "{what}: the primary was never gone"
        );
        if outcome == Outcome::PrimaryAlone {
            split.backup_stops(&mut pair, Duration::from_secs(20), &what);
        }
        pair.wait_served(20);
        let n = pair.check_writes(writers, &what, false);
        eprintln!("{what}: {outcome:?}, {n} acknowledged writes kept");
    }
}

/// The narrow race of a pause, made deterministic: the primary's I/O
/// thread stops right after an ack arrived and before it releases what
/// the ack covers (fail point `primary-after-ack=pause`), stays stopped
/// until the backup is live, then runs on with released outputs in hand.
/// Not one of them leaves: the lease ran out, and the kernel fence with it.
#[test]
fn a_primary_stuck_between_an_ack_and_its_release_never_outputs_after_go_live() {
    if !kvm_available() {
        return;
    }
    let pair = FtPair::start("pr", FtOptions::default());
    stuck_after_an_ack(pair, "the primary's I/O thread stuck after an ack");
}

/// The same for a primary whose backup joined by live clone after it had
/// run alone (its lease and kernel fence lifted, then re-armed at the join
/// point: docs/join.md).
#[test]
fn a_joined_primary_stuck_between_an_ack_and_its_release_never_outputs_after_go_live() {
    if !kvm_available() {
        return;
    }
    let opts = FtOptions::spare_on_b();
    let mut pair = FtPair::start("pj", opts);
    pair.lose_backup();
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(30));
    stuck_after_an_ack(pair, "a joined primary's I/O thread stuck after an ack");
}

fn stuck_after_an_ack(mut pair: FtPair, what: &str) {
    let mut frames = TapWatch::start(&pair.net.ns("a"), &pair.net.tap());
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(300);
    let p = pair.primary.pid();
    pair.set_failpoints("primary", "primary-after-ack=pause");
    pair.wait_backup_live(Duration::from_secs(10));
    frames.take_from_vmm();
    let written = write_bytes(p);
    pair.set_failpoints("primary", "primary-after-ack=");
    assert!(
        wait_zombie(p, Duration::from_secs(15)),
        "{what}: the old primary did not stop\n{}",
        pair.primary.log()
    );
    let (f, w) = (frames.take_from_vmm(), write_bytes(p) - written);
    assert_eq!(
        pair.primary.exit_status(Duration::from_secs(5)).code(),
        Some(7),
        "{what}: the old primary stops: it lost the arbiter\n{}",
        pair.primary.log()
    );
    assert_eq!(
        (f, w),
        (0, 0),
        "{what}: frames and bytes written by the old primary after the backup went live\n{}",
        pair.primary.log()
    );
    pair.wait_served(50);
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: fenced, {n} acknowledged writes kept");
}
