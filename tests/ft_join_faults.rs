//! A join that fails at its last step, after the joiner received the whole
//! state (docs/join.md, "A join that fails"): the joiner must never go live
//! from the join point, since the primary's guest goes on alone at once.
//! The primary's claim of the join's epoch meets an arbiter outage; the
//! primary serves through it, wins when the arbiter is back, is protected
//! by the next join, and after a failover every acknowledged write is
//! there, also on a reboot of the disk image.
//!
//! And a backup whose replay diverges says so in its last ack: the
//! primary, alone, shows that reason and is protected by the next join.
//!
//! Fail points: `join-switch-wait` holds the join's last step and
//! `join-switch` fails it (primary); `replay-diverge` (backup).

mod common;

use std::time::Duration;

use common::ft::*;
use common::*;

#[test]
fn a_join_failing_at_its_last_step_during_an_arbiter_outage_loses_no_write() {
    if !kvm_available() {
        return;
    }
    let what = "a join failed at its last step during an arbiter outage";
    let opts = FtOptions::spare_on_b();
    let mut pair = FtPair::start("jf", opts);
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    pair.lose_backup();
    pair.set_failpoints("primary", "join-switch-wait=pause\njoin-switch=1*return");
    pair.new_backup(&[], &[]);
    pair.backup
        .wait_for_line("joined by live clone", Duration::from_secs(30));
    // The joiner holds the whole state; the arbiter goes away; then the
    // join's last step fails.
    let away = pair.dir.path().join("arbiter.away");
    std::fs::rename(pair.arbiter_dir(), &away).expect("take the arbiter away");
    pair.set_failpoints("primary", "join-switch-wait=");
    pair.primary
        .wait_for_line("failed after the pause", Duration::from_secs(10));
    pair.primary
        .wait_for_line("the arbiter cannot be reached", Duration::from_secs(10));
    // The joiner, never sent an entry of the new log, stops without a
    // claim; the primary serves alone meanwhile.
    let status = pair.backup.exit_status(Duration::from_secs(30));
    let joiner = pair.backup.log();
    assert_eq!(
        status.code(),
        Some(1),
        "{what}: the joiner stopped\n{joiner}"
    );
    assert!(
        joiner.contains("the primary sent no boot entry")
            && !joiner.contains(LIVE)
            && !joiner.contains("won the arbiter"),
        "{what}: the joiner claimed or went live\n{joiner}"
    );
    pair.wait_served(50);
    // The arbiter is back: the primary's claim of the join's epoch wins.
    std::fs::rename(&away, pair.arbiter_dir()).expect("bring the arbiter back");
    wait_for(Duration::from_secs(10), "the join's epoch settled", || {
        pair.primary.log().matches("continuing alone").count() >= 2
    });
    // A sound backup joins; the primary dies; the joined backup serves
    // every acknowledged write of the run.
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(30));
    pair.wait_acked(100);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {n} acknowledged writes kept");
}

#[test]
fn a_diverged_backup_is_named_as_such_and_a_spare_replaces_it() {
    if !kvm_available() {
        return;
    }
    let what = "a backup whose replay diverged";
    let opts = FtOptions::spare_on_b();
    let mut pair = FtPair::start("jd", opts);
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    pair.set_failpoints("backup", "replay-diverge=1*return");
    let status = pair.backup.exit_status(Duration::from_secs(20));
    assert_eq!(status.code(), Some(5), "{what}: exit status (diverged)");
    pair.primary
        .wait_for_line("continuing alone", Duration::from_secs(10));
    let log = pair.primary.log();
    assert!(
        log.contains("replay diverged from the log at exit"),
        "{what}: the primary heard why\n{log}"
    );
    let protection = pair.status("primary").expect("status")["protection"].to_string();
    assert!(
        protection.contains("need-backup") && protection.contains("diverged"),
        "protection {protection}"
    );
    pair.wait_served(50);
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(30));
    pair.wait_acked(100);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, what, false);
    eprintln!("{what}: {n} acknowledged writes kept");
}
