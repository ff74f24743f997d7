//! A new backup joins a running primary by live clone (docs/join.md), on
//! real namespaces, taps, KVM and clients: under a client load no
//! acknowledged write is lost and the pause is reported; the joined backup
//! takes over when the primary dies, with every acknowledged write (also
//! on a reboot of the disk image); a joiner of another memory size is
//! refused with a clear error and one that dies mid-copy leaves the
//! primary serving, after which a new join succeeds; a spare registered
//! in etcd (`backup --standby`) is found there and joins.

mod common;

use std::time::{Duration, Instant};

use common::ft::*;
use common::*;

fn spares() -> FtOptions {
    let defaults = FtOptions::spare_on_b();
    FtOptions {
        // `LOCKSTEP_JOIN_MEM_MIB` measures joins of larger guests.
        mem_mib: std::env::var("LOCKSTEP_JOIN_MEM_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(defaults.mem_mib),
        ..defaults
    }
}

/// The pause the primary reported for its last join, in ms.
fn last_pause_ms(log: &str) -> f64 {
    log.lines()
        .rev()
        .find_map(|l| {
            let at = l.find("guest paused ")? + "guest paused ".len();
            l[at..].split(' ').next()?.parse().ok()
        })
        .unwrap_or(f64::NAN)
}

#[test]
fn a_backup_joins_under_load_and_then_takes_over_with_every_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("jn", spares());
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    // The backup dies: the primary continues alone, then joins a new one.
    pair.lose_backup();
    let alone = Instant::now();
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(60));
    let pause = last_pause_ms(&pair.primary.log());
    let log = pair.primary.log();
    let line = log
        .lines()
        .find(|l| l.contains("protected again"))
        .unwrap_or_default();
    eprintln!(
        "{:?} after the new backup started waiting: {}",
        alone.elapsed(),
        line.split("protected again").nth(1).unwrap_or_default()
    );
    assert!(pause.is_finite(), "the pause was reported");
    // The pair runs: writes are acknowledged under the output rule again.
    pair.wait_acked(200);
    // The primary dies: the joined backup goes live with every acked write.
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "a joined backup taking over", false);
    eprintln!("{n} acknowledged writes kept across a join and a failover");
}

#[test]
fn a_refused_or_dying_joiner_leaves_the_primary_serving_and_a_new_join_succeeds() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start("jr", spares());
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(100);
    pair.lose_backup();
    // A backup for another guest size: its admission refuses the join,
    // the primary says why and serves on alone.
    pair.new_backup(&["--mem", "256"], &[]);
    pair.primary
        .wait_for_line("this backup's --mem says 256 MiB", Duration::from_secs(20));
    pair.wait_served(50);
    let status = pair.status("primary").expect("status");
    let role = status["role"].to_string();
    assert!(role.contains("alone"), "role {role}");
    let protection = status["protection"].as_str().unwrap_or_default();
    assert!(
        protection.starts_with("need-backup (backup lost") && protection.contains("256 MiB"),
        "protection {protection:?}"
    );
    // A backup that dies in the middle of the copy (after three messages).
    pair.new_backup(&[], &[("FAILPOINTS", "join-recv=3*off->panic(dies)")]);
    pair.primary
        .wait_for_line("no backup joined at", Duration::from_secs(20));
    let copies_failed = |log: &str| {
        log.lines()
            .filter(|l| l.contains("no backup joined at") && l.contains("copying the guest"))
            .count()
    };
    wait_for(
        Duration::from_secs(20),
        "the copy to the dying joiner to fail",
        || copies_failed(&pair.primary.log()) >= 1,
    );
    pair.wait_served(50);
    // A sound backup: the join succeeds, and the pair is whole again.
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(30));
    pair.wait_acked(200);
    let status = pair.status("primary").expect("status");
    let role = status["role"].to_string();
    assert!(!role.contains("alone"), "role {role}");
    assert_eq!(status["protection"], "protected");
    assert_eq!(status["joins"], 1);
    let n = pair.check_writes(writers, "refused and dying joiners, then a join", false);
    eprintln!(
        "{n} acknowledged writes kept; primary log:\n{}",
        pair.primary.log()
    );
}

#[test]
fn a_chain_of_generations_serves_every_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    // A primary on host a, B backup on host b; each re-protects from a
    // waiting backup on the other host once it runs alone.
    let opts = FtOptions {
        primary_extra: vec!["--spares".into(), format!("{BACKUP_LOG}:{LOG_PORT}")],
        backup_extra: vec!["--spares".into(), format!("{PRIMARY_LOG}:{LOG_PORT}")],
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("jg", opts);
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    let spares_a = format!("{PRIMARY_LOG}:{LOG_PORT}");
    let spares_b = format!("{BACKUP_LOG}:{LOG_PORT}");
    // Kill A: B goes live; C, started on host a (A's tap is free once A is
    // gone), joins B.
    pair.primary.signal(libc::SIGKILL);
    let killed = Instant::now();
    pair.wait_backup_live(Duration::from_secs(10));
    let live = killed.elapsed();
    pair.primary = pair.spawn_backup_on("a", PRIMARY_LOG, "c", &["--spares", &spares_b], &[]);
    let waiting = killed.elapsed();
    pair.backup
        .wait_for_line("protected again", Duration::from_secs(30));
    eprintln!(
        "from the kill of A: B live after {live:?}, C waiting after {waiting:?}, protected again after {:?}",
        killed.elapsed()
    );
    pair.primary
        .wait_for_line("following the primary", Duration::from_secs(10));
    // B's status names its new backup, C.
    let peer = pair.status("backup").expect("status")["peer"].clone();
    assert_eq!(peer, spares_a.as_str(), "B's peer after C joined");
    pair.wait_served(50);
    // Kill B: C goes live; D, waiting on host b, joins C.
    pair.backup.signal(libc::SIGKILL);
    pair.primary.wait_for_line(LIVE, Duration::from_secs(10));
    pair.new_backup(&["--spares", &spares_a], &[]);
    pair.primary
        .wait_for_line("protected again", Duration::from_secs(30));
    pair.backup
        .wait_for_line("following the primary", Duration::from_secs(10));
    pair.wait_served(50);
    // Kill C: D goes live and serves every acknowledged write of the run.
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "A → B → C → D", false);
    eprintln!("{n} acknowledged writes kept across four generations");
}

#[test]
fn a_vm_started_alone_is_protected_by_a_joining_backup_and_then_fails_over() {
    if !kvm_available() {
        return;
    }
    let mut pair = FtPair::start_alone("ja", FtOptions::default());
    // It serves alone first (the spare may join at any moment).
    assert_eq!(pair.redis(&["set", "alone", "1"]), "OK");
    let protection = pair.status("primary").expect("status")["protection"].to_string();
    assert!(
        protection.contains("no backup yet")
            || protection.contains("starting")
            || protection.contains("protected"),
        "protection {protection}"
    );
    let writers = Writers::start(&pair, 3);
    pair.wait_protected(1, Duration::from_secs(30));
    let status = pair.status("primary").expect("status");
    assert_eq!(status["protection"], "protected");
    pair.wait_acked(200);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    assert_eq!(pair.redis(&["get", "alone"]), "1");
    let n = pair.check_writes(writers, "a VM started alone, joined, failed over", false);
    eprintln!("{n} acknowledged writes kept");
}

/// Spares in etcd (docs/join.md): both sides re-protect from the spares
/// registered under a prefix of the etcd that is also their arbiter. The
/// backup dies; a new `backup --standby` registers there; the primary
/// alone finds it and joins it, and the spare withdraws its registration;
/// then the primary dies and the joined backup serves every acknowledged
/// write.
#[test]
fn a_spare_registered_in_etcd_joins_and_then_takes_over() {
    if !kvm_available() {
        return;
    }
    let net = net_ft("je");
    let etcd = common::etcd::Etcd::start_in(&net.ns("c"), "10.77.0.1");
    let spares = etcd.uri("spares");
    let opts = FtOptions {
        arbiter: Some(etcd.uri("lockstep")),
        primary_extra: vec!["--spares".into(), spares.clone()],
        backup_extra: vec!["--spares".into(), spares.clone()],
        ..FtOptions::default()
    };
    let mut pair = FtPair::launch(net, opts);
    let writers = Writers::start(&pair, 3);
    pair.wait_acked(100);
    pair.lose_backup();
    let alone = Instant::now();
    pair.new_backup(&["--standby", &spares, "--spares", &spares], &[]);
    pair.backup.wait_for_line(
        "spares registry: registered spares/backup = 10.99.0.2:7000",
        Duration::from_secs(10),
    );
    pair.wait_protected(1, Duration::from_secs(60));
    eprintln!(
        "protected again {:?} after the new spare started",
        alone.elapsed()
    );
    assert!(
        pair.primary
            .log()
            .contains("spares registered: backup at 10.99.0.2:7000"),
        "the primary found the spare in etcd:\n{}",
        pair.primary.log()
    );
    let status = pair.status("primary").expect("status");
    assert_eq!(status["spares"], 1, "spares at the last round: {status}");
    pair.backup
        .wait_for_line("withdrew spares/backup", Duration::from_secs(10));
    pair.wait_served(50);
    pair.wait_acked(200);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(10));
    pair.wait_served(50);
    let n = pair.check_writes(writers, "a spare from etcd joined, then failed over", false);
    eprintln!("{n} acknowledged writes kept across a join from etcd and a failover");
}
