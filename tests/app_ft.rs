//! Stock redis-server in the fault-tolerant pair: randomized `kill -9` of
//! the primary's VMM under load, and no write redis acknowledged is lost —
//! read back through the new primary, and again after the disk is booted
//! afresh (the new primary killed too, then `lockstep run` on the disk);
//! the same after a new backup joined a redis VM by live clone.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::apps::{REDIS_ARGS, REDIS_READY, redis_server};
use common::ft::*;
use common::*;
use lockstep_bench::kvclient;

fn addr() -> String {
    format!("{GUEST_IP}:6379")
}

fn lost(pair: &FtPair, acked: &[String]) -> Vec<String> {
    in_netns(&pair.net.ns("c"), || {
        kvclient::check(&addr(), acked).expect("read back")
    })
}

/// xorshift: kill times from a printed seed, so a failing trial reruns.
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Boots the shared disk afresh on host B (`--workload app`: the app and
/// its data are on the disk) and reads every acknowledged key back.
fn reboot_and_check(pair: &mut FtPair, acked: &[String], trial: usize) {
    pair.backup.signal(libc::SIGKILL);
    pair.backup.exit_status(Duration::from_secs(10));
    let mut cmd = pair.net.cmd("b", lockstep());
    cmd.args([
        "run",
        "--workload",
        "app",
        "--mem",
        "256",
        "--tap",
        &pair.net.tap(),
        "--disk",
    ])
    .arg(pair.disk());
    let mut vm = spawn_vmm(cmd);
    vm.wait_for_line(REDIS_READY, Duration::from_secs(60));
    let gone = lost(pair, acked);
    assert!(
        gone.is_empty(),
        "trial {trial}: after a reboot of the disk {} of {} acknowledged writes are missing, e.g. {:?}",
        gone.len(),
        acked.len(),
        &gone[..gone.len().min(5)]
    );
    vm.signal(libc::SIGTERM);
    vm.exit_status(Duration::from_secs(30));
}

/// The primary's options that run stock redis from a 128 MiB disk.
fn redis_primary_args(redis: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = ["--disk-size", "128", "--app"].map(String::from).to_vec();
    v.push(redis.display().to_string());
    v.push("--".into());
    v.extend(REDIS_ARGS.map(String::from));
    v
}

/// After a failover: waits until redis answers through the backup gone
/// live, stops the writers and checks that something was acknowledged and
/// that every acknowledged write reads back (`what` names the trial).
fn stop_and_check(
    pair: &FtPair,
    stop: &AtomicBool,
    writers: std::thread::JoinHandle<kvclient::WriterReport>,
    what: &str,
) -> kvclient::WriterReport {
    wait_for(
        Duration::from_secs(30),
        "redis to answer after the failover",
        || pair.redis(&["dbsize"]).parse::<u64>().is_ok(),
    );
    stop.store(true, Ordering::Relaxed);
    let report = writers.join().expect("writers");
    assert!(!report.acked.is_empty(), "{what}: nothing was acknowledged");
    let gone = lost(pair, &report.acked);
    assert!(
        gone.is_empty(),
        "{what}: {} of {} acknowledged writes lost, e.g. {:?}\nbackup:\n{}",
        gone.len(),
        report.acked.len(),
        &gone[..gone.len().min(5)],
        pair.backup.log()
    );
    report
}

#[test]
fn redis_in_the_pair_survives_kill_9_of_the_primary_without_losing_a_write() {
    if !kvm_available() {
        return;
    }
    let redis = redis_server();
    let mut seed = std::env::var("LOCKSTEP_FT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| std::process::id() as u64 | 1);
    eprintln!("kill times from seed {seed}");
    let trials: usize = std::env::var("LOCKSTEP_APP_FT_TRIALS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let primary_extra = redis_primary_args(&redis);
    for trial in 0..trials {
        let opts = FtOptions {
            mem_mib: 256,
            ready: REDIS_READY,
            primary_extra: primary_extra.clone(),
            backup_extra: vec!["--app".into(), redis.display().to_string()],
            ..FtOptions::default()
        };
        let mut pair = FtPair::start("af", opts);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let writers = spawn_in_netns(pair.net.ns("c"), move || kvclient::write(&addr(), 3, flag));
        // Under load for a random while (this is the load's length, not a
        // wait for anything).
        let kill_after = Duration::from_millis(200 + next_rand(&mut seed) % 800);
        std::thread::sleep(kill_after);
        pair.primary.signal(libc::SIGKILL);
        let killed = Instant::now();
        // Generous: on a loaded 2-core host the backup may lag by a second
        // of replay, which it finishes before it goes live.
        pair.wait_backup_live(Duration::from_secs(30));
        let live = killed.elapsed();
        let report = stop_and_check(
            &pair,
            &stop,
            writers,
            &format!("trial {trial} (kill after {kill_after:?})"),
        );
        eprintln!(
            "trial {trial}: killed after {kill_after:?}, live after {live:?}, {} acknowledged writes kept ({} client errors across the failover)",
            report.acked.len(),
            report.errors.len()
        );
        reboot_and_check(&mut pair, &report.acked, trial);
    }
}

#[test]
fn a_backup_refuses_a_primary_running_another_app() {
    if !kvm_available() {
        return;
    }
    let redis = redis_server();
    let other = common::apps::build("probes").remove(0);
    let net = net_ft("ab");
    let dir = tempdir();
    let disk = dir.path().join("disk.img");
    let arbiter = format!("file:{}", dir.path().join("arbiter").display());
    let key = pair_key(dir.path());
    let mut b = net.cmd("b", lockstep());
    b.args([
        "backup",
        "--listen",
        &format!("{BACKUP_LOG}:{LOG_PORT}"),
        "--arbiter",
        &arbiter,
        "--disk",
    ])
    .arg(&disk)
    .arg("--key-file")
    .arg(&key)
    .arg("--app")
    .arg(&other);
    let mut backup = spawn_vmm(b);
    backup.wait_for_line("waiting for the primary", Duration::from_secs(20));
    let mut p = net.cmd("a", lockstep());
    p.args([
        "primary",
        "--backup",
        &format!("{BACKUP_LOG}:{LOG_PORT}"),
        "--arbiter",
        &arbiter,
    ])
    .arg("--key-file")
    .arg(&key)
    .args(["--disk-size", "128", "--disk"])
    .arg(&disk)
    .arg("--app")
    .arg(&redis)
    .arg("--")
    .args(REDIS_ARGS);
    let _primary = spawn_vmm(p);
    let status = backup.exit_status(Duration::from_secs(60));
    assert_ne!(status.code(), Some(0));
    assert!(
        backup.log().contains("not the same program"),
        "{}",
        backup.log()
    );
}

/// A redis VM that lost its backup takes a new one by live clone — the
/// app's memory and threads, the personality, the system-call trampoline
/// page — under a client load, and the joined backup takes over when the
/// primary dies: every acknowledged write is there, and on a reboot of the
/// disk.
#[test]
fn redis_protected_again_by_a_joined_backup_fails_over_without_losing_a_write() {
    if !kvm_available() {
        return;
    }
    let redis = redis_server();
    let spares = FtOptions::spare_on_b();
    let mut primary_extra = spares.primary_extra.clone();
    primary_extra.extend(redis_primary_args(&redis));
    let opts = FtOptions {
        mem_mib: 256,
        ready: REDIS_READY,
        primary_extra,
        ..spares
    };
    let mut pair = FtPair::start("aj", opts);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let writers = spawn_in_netns(pair.net.ns("c"), move || kvclient::write(&addr(), 3, flag));
    pair.wait_acked(100);
    pair.lose_backup();
    pair.new_backup(&[], &[]);
    pair.wait_protected(1, Duration::from_secs(60));
    let log = pair.primary.log();
    let joined = log.lines().find(|l| l.contains("protected again"));
    eprintln!("{}", joined.unwrap_or_default());
    // The joined backup follows: its acknowledgements move the log on.
    pair.wait_acked(100);
    pair.primary.signal(libc::SIGKILL);
    pair.wait_backup_live(Duration::from_secs(30));
    let report = stop_and_check(&pair, &stop, writers, "after the joined backup took over");
    eprintln!(
        "{} acknowledged writes kept through the join and the failover",
        report.acked.len()
    );
    reboot_and_check(&mut pair, &report.acked, 0);
}
