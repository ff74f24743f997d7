//! The fault tests' scenarios as a soak: `lockstep-bench faults --trials N`
//! runs this (ignored in the suite: 200 trials take about 15 minutes). Each
//! trial starts a pair under write load, picks a fault kind and its timing
//! at random (seed printed), lets the pair settle, then checks the fencing
//! rule from outside (taps, the kernel's I/O accounting) and reads every
//! acknowledged write back through whoever serves and from a reboot of the
//! disk image. A trial that breaks a promise is counted, not fatal: the
//! summary (Markdown, also written to `LOCKSTEP_SOAK_REPORT`) says what
//! broke how often, and the test fails at the end if anything did.

mod common;

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use common::ft::*;
use common::split::{Broken, Outcome, SplitWatch, Violation};
use common::watch::{wait_zombie, write_bytes};
use common::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillPrimary,
    KillBackup,
    PausePrimary,
    PauseBackup,
    PartitionHealing,
    PartitionForGood,
    OneWayFromPrimary,
    OneWayFromBackup,
    BackupNeverAcks,
    BackupStopsReading,
    AcksLost,
    StuckAfterAck,
    ArbiterOutage,
    TestFailover,
}

const FAULTS: [Fault; 14] = [
    Fault::KillPrimary,
    Fault::KillBackup,
    Fault::PausePrimary,
    Fault::PauseBackup,
    Fault::PartitionHealing,
    Fault::PartitionForGood,
    Fault::OneWayFromPrimary,
    Fault::OneWayFromBackup,
    Fault::BackupNeverAcks,
    Fault::BackupStopsReading,
    Fault::AcksLost,
    Fault::StuckAfterAck,
    Fault::ArbiterOutage,
    Fault::TestFailover,
];

/// One trial's findings.
#[derive(Default)]
struct Trial {
    outcome: Option<Outcome>,
    acked: usize,
    lost: usize,
    broken: Option<Violation>,
    /// Bytes the old primary sent to storage after the backup went live
    /// (the paused and stuck kinds measure it).
    bytes_after_live: u64,
    unavailable: Duration,
    client_errors: usize,
}

/// Plays `fault` on `pair` (timings from `seed`) and watches it settle.
fn play(fault: Fault, pair: &mut FtPair, watch: &mut SplitWatch, seed: &mut Seed) -> Trial {
    let mut t = Trial::default();
    let settle = |pair: &mut FtPair, watch: &mut SplitWatch, whole: bool| {
        watch.observe(pair, Duration::from_secs(30), whole)
    };
    let ms = |seed: &mut Seed, lo, hi| Duration::from_millis(seed.between(lo, hi));
    let result = match fault {
        Fault::KillPrimary => {
            pair.primary.signal(libc::SIGKILL);
            settle(pair, watch, false)
        }
        Fault::KillBackup => {
            pair.backup.signal(libc::SIGKILL);
            settle(pair, watch, false)
        }
        Fault::PausePrimary | Fault::StuckAfterAck => {
            let p = pair.primary.pid();
            if fault == Fault::PausePrimary {
                pair.primary.signal(libc::SIGSTOP);
            } else {
                pair.set_failpoints("primary", "primary-after-ack=pause");
            }
            let pause = ms(seed, 20, 400);
            let end = Instant::now() + pause;
            while Instant::now() < end && !pair.backup.log().contains(LIVE) {
                std::thread::sleep(Duration::from_millis(2));
            }
            let live = pair.backup.log().contains(LIVE);
            let written = write_bytes(p);
            if fault == Fault::PausePrimary {
                pair.primary.signal(libc::SIGCONT);
            } else {
                pair.set_failpoints("primary", "primary-after-ack=");
            }
            if live && wait_zombie(p, Duration::from_secs(15)) {
                t.bytes_after_live = write_bytes(p) - written;
            }
            settle(pair, watch, !live)
        }
        Fault::PauseBackup => {
            pair.backup.signal(libc::SIGSTOP);
            std::thread::sleep(ms(seed, 20, 400));
            pair.backup.signal(libc::SIGCONT);
            settle(pair, watch, true)
        }
        Fault::PartitionHealing => {
            pair.logging_link(false);
            std::thread::sleep(ms(seed, 20, 400));
            pair.logging_link(true);
            settle(pair, watch, true)
        }
        Fault::PartitionForGood => {
            pair.logging_link(false);
            settle(pair, watch, false)
        }
        Fault::OneWayFromPrimary => {
            pair.drop_outgoing("a");
            settle(pair, watch, false)
        }
        Fault::OneWayFromBackup => {
            pair.drop_outgoing("b");
            settle(pair, watch, false)
        }
        Fault::BackupNeverAcks => {
            pair.set_failpoints("backup", "backup-ack=return");
            settle(pair, watch, false)
        }
        Fault::BackupStopsReading => {
            pair.set_failpoints("backup", "backup-read=return");
            settle(pair, watch, false)
        }
        Fault::AcksLost => {
            pair.set_failpoints("primary", "primary-drop-ack=return");
            settle(pair, watch, false)
        }
        Fault::ArbiterOutage => {
            let away = pair.dir.path().join("arbiter.away");
            std::fs::rename(pair.arbiter_dir(), &away).expect("take the arbiter away");
            pair.backup.signal(libc::SIGKILL);
            std::thread::sleep(ms(seed, 200, 3000));
            std::fs::rename(&away, pair.arbiter_dir()).expect("bring the arbiter back");
            settle(pair, watch, false)
        }
        Fault::TestFailover => {
            // The operator's test failover, its process slow to exit for
            // 0-500 ms after the fence (the fenced primary must log nothing
            // more meanwhile).
            watch.loser_exit = 9;
            let slow = seed.between(0, 500);
            pair.set_failpoints("primary", &format!("test-failover-exit=sleep({slow})"));
            let out = pair.ft("a", &["test-failover"]);
            assert!(out.status.success(), "{}", common::actions::text(&out));
            settle(pair, watch, false)
        }
    };
    match result {
        Ok(o) => t.outcome = Some(o),
        Err(v) => t.broken = Some(v),
    }
    t
}

fn trial(fault: Fault, seed: &mut Seed) -> Trial {
    let mut pair = if fault == Fault::TestFailover {
        FtPair::start_with_token("sk", FtOptions::default())
    } else {
        FtPair::start("sk", FtOptions::default())
    };
    let mut watch = SplitWatch::start(&pair);
    let writers = Writers::start(&pair, 2);
    pair.wait_acked(seed.between(50, 400));
    let mut t = play(fault, &mut pair, &mut watch, seed);
    if t.broken.is_none() {
        // Service goes on, whoever serves, before the writers stop.
        let end = Instant::now() + Duration::from_secs(15);
        while pair.redis(&["set", "soak", "1"]) != "OK" && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let c = pair.verify_writes(writers);
    t.acked = c.acked;
    t.lost = c.lost_live.len().max(c.lost_reboot.len());
    t.unavailable = c.longest_gap;
    t.client_errors = c.errors.len();
    t
}

/// Per fault kind, what the trials came to.
#[derive(Default)]
struct Tally {
    trials: usize,
    outcomes: BTreeMap<String, usize>,
    acked: usize,
    lost: usize,
    outputs_after_live: usize,
    broken: BTreeMap<Broken, usize>,
    harness: usize,
    unavailable_ms: Vec<f64>,
    client_errors: usize,
}

fn cell(v: &mut [f64]) -> String {
    v.sort_by(|a, b| a.total_cmp(b));
    match v.last() {
        None => "-".into(),
        Some(max) => format!("{:.0} / {max:.0}", v[v.len() / 2]),
    }
}

fn report(tallies: &BTreeMap<Fault, Tally>, seed: u64, secs: u64) -> String {
    let mut o = String::new();
    o.push_str(
        "| fault | trials | outcomes | acked writes checked | lost | outputs after go-live | other broken promises | harness failures | unavailable ms (median / max) |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut all = Tally::default();
    for (fault, t) in tallies {
        let outcomes: Vec<String> = t.outcomes.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let broken: Vec<String> = t.broken.iter().map(|(k, n)| format!("{k:?} {n}")).collect();
        let mut gaps = t.unavailable_ms.clone();
        o.push_str(&format!(
            "| {fault:?} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            t.trials,
            outcomes.join(", "),
            t.acked,
            t.lost,
            t.outputs_after_live,
            if broken.is_empty() {
                "0".into()
            } else {
                broken.join(", ")
            },
            t.harness,
            cell(&mut gaps),
        ));
        all.trials += t.trials;
        all.acked += t.acked;
        all.lost += t.lost;
        all.outputs_after_live += t.outputs_after_live;
        all.harness += t.harness;
        all.client_errors += t.client_errors;
        all.unavailable_ms.extend(&t.unavailable_ms);
        for (k, n) in &t.broken {
            *all.broken.entry(*k).or_default() += n;
        }
    }
    let other: usize = all.broken.values().sum();
    o.push_str(&format!(
        "| **all** | {} | | {} | {} | {} | {other} | {} | {} |\n\n",
        all.trials,
        all.acked,
        all.lost,
        all.outputs_after_live,
        all.harness,
        cell(&mut all.unavailable_ms),
    ));
    o.push_str(&format!(
        "LOCKSTEP_SEED={seed}, {secs} s; client errors (timeouts and resets, not losses): {}. \
         \"Unavailable\" is the longest gap between two acknowledged writes of a trial, fault included.\n",
        all.client_errors
    ));
    o
}

#[test]
#[ignore = "a soak of about 15 minutes: lockstep-bench faults --trials N runs it"]
fn soak() {
    if !kvm_available() {
        return;
    }
    let trials = trials("LOCKSTEP_SOAK_TRIALS", 200);
    let mut seed = Seed::from_env();
    let first = seed.initial();
    let started = Instant::now();
    let mut tallies: BTreeMap<Fault, Tally> = BTreeMap::new();
    // LOCKSTEP_SOAK_FAULTS=KillPrimary,PauseBackup narrows the kinds.
    let only: Vec<Fault> = match std::env::var("LOCKSTEP_SOAK_FAULTS") {
        Ok(list) => FAULTS
            .into_iter()
            .filter(|f| list.split(',').any(|n| n.trim() == format!("{f:?}")))
            .collect(),
        Err(_) => FAULTS.to_vec(),
    };
    assert!(!only.is_empty(), "LOCKSTEP_SOAK_FAULTS names no fault kind");
    for n in 0..trials {
        let fault = only[seed.between(0, only.len() as u64) as usize];
        let tally = tallies.entry(fault).or_default();
        tally.trials += 1;
        let found = std::panic::catch_unwind(AssertUnwindSafe(|| trial(fault, &mut seed)));
        let line = match found {
            Err(e) => {
                tally.harness += 1;
                let why = e
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| e.downcast_ref::<&str>().copied())
                    .unwrap_or("?");
                format!("harness failure: {}", why.lines().next().unwrap_or(""))
            }
            Ok(t) => {
                tally.acked += t.acked;
                tally.lost += t.lost;
                tally.client_errors += t.client_errors;
                tally.unavailable_ms.push(t.unavailable.as_secs_f64() * 1e3);
                if t.bytes_after_live > 0 {
                    tally.outputs_after_live += 1;
                }
                if let Some(o) = t.outcome {
                    *tally.outcomes.entry(format!("{o:?}")).or_default() += 1;
                }
                match &t.broken {
                    Some(v) if v.kind == Broken::OutputAfterLive => tally.outputs_after_live += 1,
                    Some(v) => *tally.broken.entry(v.kind).or_default() += 1,
                    None => {}
                }
                format!(
                    "{:?}, {} acked, {} lost, {} bytes after go-live, unavailable {:?}{}",
                    t.outcome,
                    t.acked,
                    t.lost,
                    t.bytes_after_live,
                    t.unavailable,
                    t.broken
                        .map(|v| format!(", BROKEN {v}"))
                        .unwrap_or_default()
                )
            }
        };
        eprintln!("trial {n} {fault:?}: {line}");
    }
    let text = report(&tallies, first, started.elapsed().as_secs());
    println!("{text}");
    if let Ok(path) = std::env::var("LOCKSTEP_SOAK_REPORT") {
        std::fs::write(&path, &text).expect("soak report");
    }
    let bad: usize = tallies
        .values()
        .map(|t| t.lost + t.outputs_after_live + t.broken.values().sum::<usize>())
        .sum();
    assert_eq!(bad, 0, "broken promises in the soak:\n{text}");
}
