//! The operator's FT actions (docs/operator-actions.md) on real
//! namespaces, taps, KVM and clients: a `lockstep run` VM made fault
//! tolerant with `lockstep ft on` while it serves, whose backup then takes
//! over with every acknowledged write; `ft test-restart-backup` and
//! `ft test-failover` under load, each printing a bounded unprotected
//! window and losing no acknowledged write; actions without the token are
//! refused and leave the VM serving.

mod common;

use std::time::Duration;

use common::actions::*;
use common::ft::*;
use common::*;

#[test]
fn a_run_vm_is_made_fault_tolerant_with_ft_on_and_its_backup_takes_over() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start_run("xo", FtOptions::default());
    let status = pair.status("primary").expect("status");
    assert_eq!(status["protection"], "not protected (turned off)");
    let writers = Writers::start(&pair, 3);
    pair.wait_served(50);

    // Without the right token an action is refused, and the VM serves on.
    let wrong = pair.dir.path().join("wrong.token");
    logchan::secure::write_new_token(&wrong).expect("token");
    let out = pair
        .ft_command("a", &["on", &FtPair::spare_b()], &wrong)
        .output()
        .expect("lockstep ft");
    assert!(
        !out.status.success() && text(&out).contains("401"),
        "{}",
        text(&out)
    );
    // An endpoint with no token configured (the waiting backup's) takes
    // no action at all, also on loopback.
    let out = pair.ft("b", &["off"]);
    assert!(
        !out.status.success() && text(&out).contains("403"),
        "{}",
        text(&out)
    );
    pair.wait_served(50);

    // `ft on`: the waiting backup joins the running VM by live clone.
    let out = pair.ft("a", &["on", &FtPair::spare_b()]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "{said}\nprimary:\n{}\nbackup:\n{}",
        pair.primary.log(),
        pair.backup.log()
    );
    let window = unprotected_ms(&said).unwrap_or_else(|| panic!("no window in {said:?}"));
    assert!(window.is_finite() && window >= 0.0, "{said}");
    eprintln!("ft on: {said}");
    pair.backup
        .wait_for_line("following the primary", Duration::from_secs(10));
    assert_eq!(
        pair.status("primary").expect("status")["protection"],
        "protected"
    );
    pair.wait_acked(200);

    // The primary dies: the joined backup serves every acknowledged write.
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "a run VM turned on, then failed over", false);
    eprintln!("{n} acknowledged writes kept");
}

#[test]
fn test_restart_backup_and_test_failover_under_load_print_a_bounded_window() {
    if !kvm_available() {
        return;
    }
    let opts = FtOptions::spare_on_b();
    let mut pair = FtPair::start_with_token("xt", opts);
    let token = pair.status_token().display().to_string();
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);

    // test-restart-backup: the primary drops its backup (which, losing
    // the arbiter to it, stops: it cannot go live) and joins the spare at
    // once — here the backup's host restarts it, as a service manager
    // would.
    let restart = {
        let mut cmd = pair.ft_command("a", &["test-restart-backup"], &pair.status_token());
        std::thread::spawn(move || cmd.output().expect("lockstep ft"))
    };
    let dropped = pair.backup.exit_status(Duration::from_secs(20));
    assert_eq!(
        dropped.code(),
        Some(8),
        "the dropped backup stops for the broken channel\nbackup:\n{}",
        pair.backup.log()
    );
    // The new backup also serves its status beyond loopback (with the
    // token), for the test failover's watch from host A.
    let peer_status = format!("{BACKUP_LOG}:7011");
    pair.new_backup(
        &["--metrics", &peer_status, "--status-token-file", &token],
        &[],
    );
    let out = restart.join().expect("ft thread");
    let said = text(&out);
    assert!(
        out.status.success(),
        "{said}\nprimary:\n{}",
        pair.primary.log()
    );
    let window = unprotected_ms(&said).unwrap_or_else(|| panic!("no window in {said:?}"));
    assert!(window.is_finite() && window < 30_000.0, "{said}");
    eprintln!("test-restart-backup: {said}");
    pair.backup
        .wait_for_line("following the primary", Duration::from_secs(10));
    pair.wait_acked(100);

    // test-failover: the primary stops on purpose (its own exit status);
    // the backup takes over; the window is watched from host A.
    let out = pair.ft("a", &["test-failover", "--peer-status", &peer_status]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "{said}\nprimary:\n{}\nbackup:\n{}",
        pair.primary.log(),
        pair.backup.log()
    );
    let window = unprotected_ms(&said).unwrap_or_else(|| panic!("no window in {said:?}"));
    assert!(window.is_finite() && window < 10_000.0, "{said}");
    eprintln!("test-failover: {said}");
    let stopped = pair.primary.exit_status(Duration::from_secs(10));
    assert_eq!(stopped.code(), Some(9), "{}", pair.primary.log());
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "test-restart-backup, then test-failover", false);
    eprintln!("{n} acknowledged writes kept");
}

/// A test failover whose process is slow to exit (fail point
/// `test-failover-exit` holds it a second after the fence): the fenced
/// primary's disk writes complete unwritten from then on, and none of
/// those completions may reach the backup's log, or the new primary would
/// take writes for durable that never reached the disk. Checked by the
/// reboot of the disk image.
#[test]
fn a_test_failover_slow_to_exit_logs_nothing_after_its_fence() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start_with_token("xs", FtOptions::default());
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    pair.set_failpoints("primary", "test-failover-exit=sleep(1000)");
    let out = pair.ft("a", &["test-failover"]);
    assert!(out.status.success(), "{}", text(&out));
    let stopped = pair.primary.exit_status(Duration::from_secs(10));
    assert_eq!(stopped.code(), Some(9), "{}", pair.primary.log());
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "a test failover slow to exit", false);
    eprintln!("{n} acknowledged writes kept");
}

#[test]
fn an_idle_pair_suspended_and_resumed_is_protected_by_a_new_backup() {
    if !kvm_available() {
        return;
    }
    let opts = FtOptions::spare_on_b();
    let mut pair = FtPair::start_with_token("xi", opts);
    assert_eq!(pair.redis(&["set", "before", "1"]), "OK");
    // Suspend: the backup is dropped through the primary's claim, so it
    // stops (the broken channel's status) instead of going live.
    let out = pair.ft("a", &["suspend"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("dropped the backup"), "{}", text(&out));
    let dropped = pair.backup.exit_status(Duration::from_secs(20));
    assert_eq!(dropped.code(), Some(8), "{}", pair.backup.log());
    assert_eq!(
        pair.status("primary").expect("status")["protection"],
        "not protected (suspended by the operator)"
    );
    assert_eq!(pair.redis(&["set", "alone", "2"]), "OK");
    // A spare waits again, and nothing joins it while suspended; resume,
    // the guest idle: the join retires the lone primary's plane with no
    // client traffic to wake the I/O thread.
    pair.new_backup(&[], &[]);
    let out = pair.ft("a", &["resume"]);
    let said = text(&out);
    assert!(
        out.status.success(),
        "{said}\nprimary:\n{}",
        pair.primary.log()
    );
    let window = unprotected_ms(&said).unwrap_or_else(|| panic!("no window in {said:?}"));
    assert!(window.is_finite(), "{said}");
    pair.backup
        .wait_for_line("following the primary", Duration::from_secs(10));
    assert_eq!(pair.redis(&["set", "after", "3"]), "OK");
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    for (k, v) in [("before", "1"), ("alone", "2"), ("after", "3")] {
        assert_eq!(pair.redis(&["get", k]), v, "{k}");
    }
}

/// A backup refuses the actions while it follows its primary; once it has
/// gone live and a spare joined it, it takes them as any primary: its
/// test failover hands the VM to the joined backup, with every
/// acknowledged write.
#[test]
fn a_backup_gone_live_takes_the_actions_of_a_primary() {
    if !kvm_available() {
        return;
    }
    let keys = tempdir();
    let token = keys.path().join("status.token");
    logchan::secure::write_new_token(&token).expect("status token");
    let token_arg = token.display().to_string();
    let opts = FtOptions {
        primary_extra: vec!["--status-token-file".into(), token_arg.clone()],
        backup_extra: vec![
            "--status-token-file".into(),
            token_arg.clone(),
            "--spares".into(),
            format!("{PRIMARY_LOG}:{LOG_PORT}"),
        ],
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("xb", opts);
    // Where the harness's status reads look for the endpoints' token.
    std::fs::copy(&token, pair.status_token()).expect("token for status reads");
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    let refused = pair.ft_command("b", &["test-failover"], &token).output();
    let refused = refused.expect("lockstep ft");
    assert!(!refused.status.success(), "{}", text(&refused));
    // The primary dies; B goes live; C starts on host a and B joins it.
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.primary = pair.spawn_backup_on("a", PRIMARY_LOG, "c", &[], &[]);
    pair.backup
        .wait_for_line("protected again", Duration::from_secs(30));
    pair.primary
        .wait_for_line("following the primary", Duration::from_secs(10));
    pair.wait_acked_by("backup", 50);
    let out = pair
        .ft_command("b", &["test-failover"], &token)
        .output()
        .expect("lockstep ft");
    let said = text(&out);
    assert!(out.status.success(), "{said}\nB:\n{}", pair.backup.log());
    let stopped = pair.backup.exit_status(Duration::from_secs(10));
    assert_eq!(stopped.code(), Some(9), "{}", pair.backup.log());
    pair.primary.wait_for_line(LIVE, Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "a backup gone live, then its test failover", false);
    eprintln!("{said}\n{n} acknowledged writes kept");
}
