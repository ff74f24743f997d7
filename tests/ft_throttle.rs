//! Managing the logging channel on a real pair (docs/throttling.md): a
//! backup slowed for real (its process's CPU capped by a cgroup) makes the
//! primary's throttle hold the lag near its target, with no acknowledged
//! write lost and both processes' memory bounded, and the brakes come off
//! when the cap is lifted; tiny buffers on both sides make the backup's
//! receives wait and the primary's vCPU stall, without deadlock.

mod common;

use std::time::{Duration, Instant};

use common::cgroup::{capped_pair, rss_kib};
use common::ft::*;
use common::*;

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

const TARGET_MS: f64 = 100.0;
/// The lag may exceed the target by this much once the throttle has
/// settled: the controller's overshoot bound (74 ms, throttle.rs) plus the
/// cap's own granularity (the backup runs in 10 ms periods) and the acks'
/// delay behind a capped backup.
const MARGIN_MS: f64 = 150.0;

/// A CPU-bound guest (`workload=compute`: it runs natively between sync
/// calls, so its backup must execute as much as it does) and a backup
/// capped to a quarter of a CPU: the throttle holds the lag near its
/// target, the primary's progress drops to about the backup's, memory
/// stays bounded; with the cap lifted the brakes come off.
#[test]
fn a_backup_capped_to_a_quarter_cpu_throttles_the_primary_smoothly() {
    if !kvm_available() {
        return;
    }
    let what = "a backup capped to 25 % of a CPU";
    let opts = FtOptions::compute(400);
    let Some((mut pair, cap)) = capped_pair("th", opts) else {
        return;
    };
    let rss0 = (rss_kib(pair.primary.pid()), rss_kib(pair.backup.pid()));
    let exits = |p: &FtPair| p.status("primary").map_or(0.0, |s| num(&s, "guest_exits"));
    // Guest progress: the compute guest makes a sync call per ~1 ms of work.
    let rate = |p: &FtPair| {
        let (t0, e0) = (Instant::now(), exits(p));
        std::thread::sleep(Duration::from_millis(1000));
        (exits(p) - e0) / t0.elapsed().as_secs_f64()
    };
    let full_speed = rate(&pair);
    cap.set(Some(25));
    // Throttled: the level rises and the lag is held near the target.
    let (mut max_level, mut settled_lags) = (0.0f64, Vec::new());
    let (mut rss_max, since) = ((0, 0), Instant::now());
    while since.elapsed() < Duration::from_secs(5) {
        if let Some(s) = pair.status("primary") {
            if std::env::var_os("LOCKSTEP_TEST_TRACE").is_some() {
                eprintln!(
                    "lag {} ms, {} exits, {} bytes; level {}; replay {} exits/s",
                    s["lag_guest_ms"],
                    s["lag_exits"],
                    s["lag_log_bytes"],
                    s["throttle_permille"],
                    s["replay_exits_per_s"]
                );
            }
            max_level = max_level.max(num(&s, "throttle_permille"));
            if since.elapsed() > Duration::from_secs(2) {
                settled_lags.push(num(&s, "lag_guest_ms"));
            }
        }
        rss_max.0 = rss_max.0.max(rss_kib(pair.primary.pid()));
        rss_max.1 = rss_max.1.max(rss_kib(pair.backup.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let capped_speed = rate(&pair);
    assert!(max_level > 0.0, "{what}: the throttle never engaged");
    assert!(
        !settled_lags.is_empty(),
        "{what}: no status from the primary"
    );
    let worst = settled_lags.iter().copied().fold(0.0, f64::max);
    let mut sorted = settled_lags.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[sorted.len() / 2];
    assert!(
        worst <= TARGET_MS + MARGIN_MS,
        "{what}: lag {worst:.1} ms beyond {TARGET_MS} + {MARGIN_MS} ms (median {median:.1})"
    );
    // Bounded memory: at most the log buffers (16 MiB) and the replay
    // buffer (32 MiB) more than before the cap, with room for the heap.
    let bound = 64 << 10;
    assert!(
        rss_max.0 <= rss0.0 + bound && rss_max.1 <= rss0.1 + bound,
        "{what}: RSS grew from {rss0:?} to {rss_max:?} KiB"
    );
    // The cap lifted: the brakes come off and the lag returns to idle.
    cap.set(None);
    wait_for(Duration::from_secs(15), "the throttle to release", || {
        pair.status("primary").is_some_and(|s| {
            num(&s, "throttle_permille") == 0.0 && num(&s, "lag_guest_ms") < TARGET_MS
        })
    });
    let recovered_speed = rate(&pair);
    // The holds changed nothing the replay sees: the backup still follows
    // (a divergence, which its digests check, would have ended it), and
    // its replay is where the primary is.
    let stopped = pair.backup.try_wait().ok().flatten();
    assert!(
        stopped.is_none(),
        "{what}: the backup stopped ({stopped:?}):\n{}",
        pair.backup.log()
    );
    assert!(
        pair.status("backup")
            .is_some_and(|s| s["role"].as_str() == Some("backup")),
        "{what}: the backup no longer replays"
    );
    // Slowed to about the backup's pace: against the better of the two
    // uncapped measurements (other load on this machine moves both).
    let uncapped = full_speed.max(recovered_speed);
    assert!(
        capped_speed < 0.7 * uncapped,
        "{what}: the primary ran on at {capped_speed:.0} exits/s of {uncapped:.0}"
    );
    eprintln!(
        "{what}: guest exits/s full {full_speed:.0}, capped {capped_speed:.0} ({:.2}x), recovered {recovered_speed:.0} ({:.2}x); \
         max throttle {max_level} permille; settled lag median {median:.1} ms, max {worst:.1} ms; RSS {rss0:?} -> max {rss_max:?} KiB",
        capped_speed / full_speed.max(1.0),
        recovered_speed / full_speed.max(1.0),
    );
}

/// The smallest buffers on both sides, the throttle off, a replay slowed
/// by a fail point, and a flood of UDP datagrams to the guest (every
/// received frame is logged whole, and none waits for an ack, so the log
/// grows at the link's pace): the backup's receives wait at its bound,
/// TCP holds the primary, its full log buffers stall its vCPU — and when
/// the flood ends and the replay speeds up, everything goes on, no
/// acknowledged write lost.
/// The most a 1 MiB replay buffer may hold (ft/src/replay_buffer.rs): the
/// bound, plus two reads of 256 KiB, each with the rest of a record (at
/// most 64 KiB on the encrypted channel) begun in the read before, plus
/// the rest of an entry cut across reads (this guest's are well under 64
/// KiB).
const HELD_MAX: u64 = (1 << 20) + 2 * ((256 << 10) + (64 << 10)) + (64 << 10);

#[test]
fn tiny_buffers_make_the_backup_wait_and_the_primary_stall_without_deadlock() {
    if !kvm_available() {
        return;
    }
    let what = "tiny buffers on both sides";
    let opts = FtOptions {
        failure_timeout_ms: 400,
        heartbeat_ms: 20,
        primary_extra: ["--log-buffer-mib", "2", "--lag-target-ms", "0"]
            .map(String::from)
            .to_vec(),
        backup_extra: ["--replay-buffer-mib", "1", "--replay-buffer-chunks", "8"]
            .map(String::from)
            .to_vec(),
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("tb", opts);
    let writers = Writers::start(&pair, 4);
    pair.wait_acked(200);
    pair.set_failpoints("backup", "replay-slow=sleep(1)");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = stop.clone();
    let flood = spawn_in_netns(pair.net.ns("c"), move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("udp");
        let datagram = [0x5au8; 1200];
        let mut sent = 0u64;
        while !flag.load(std::sync::atomic::Ordering::Relaxed) {
            if socket.send_to(&datagram, (GUEST_IP, 9)).is_ok() {
                sent += 1;
            }
        }
        sent
    });
    wait_for(
        Duration::from_secs(30),
        "the backup's receives to wait and the primary's vCPU to stall",
        || {
            pair.counter("backup", "replay_buffer_pauses") > 0
                && pair.counter("primary", "log_full_stalls") > 0
        },
    );
    let held = pair.counter("backup", "replay_buffer_bytes");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let datagrams = flood.join().expect("flood");
    assert!(
        held <= HELD_MAX,
        "{what}: {held} bytes held, more than the 1 MiB bound allows ({HELD_MAX})"
    );
    pair.set_failpoints("backup", "replay-slow=");
    // No deadlock: acks go on, and the guest serves.
    pair.wait_acked(500);
    pair.wait_served(20);
    let stalls = pair.counter("primary", "log_full_stalls");
    let stall_ms = pair.counter("primary", "log_stall_ms");
    let pauses = pair.counter("backup", "replay_buffer_pauses");
    let n = pair.check_writes(writers, what, false);
    eprintln!(
        "{what}: {datagrams} datagrams; {pauses} receive pauses, {stalls} full-buffer stalls ({stall_ms} ms), {n} acknowledged writes kept"
    );
}

/// The primary dies while the throttle holds a backup capped to a quarter
/// of a CPU (the CPU-bound guest, whose replay costs what its execution
/// did): the backup is live within the longer of the failure timeout and
/// the replay of a lag near the target at a quarter speed (the replay goes
/// on while the timeout runs), plus a stated margin; the go-live line
/// says what it took. (The compute guest makes no writes: the next test
/// checks that a failover under throttling loses no acknowledged write.)
#[test]
fn a_failover_while_throttled_is_bounded_by_the_lag() {
    if !kvm_available() {
        return;
    }
    let what = "a failover while the throttle holds a capped backup";
    const FAILURE_MS: u64 = 400;
    /// The replay of the lag (at a quarter speed: 4 × the target) runs
    /// while the failure timeout does; then the arbiter, the lease's end,
    /// the controller's overshoot and a CFS period or two: 300 ms margin.
    const BOUND_MS: u64 = if FAILURE_MS > 4 * TARGET_MS as u64 {
        FAILURE_MS + 300
    } else {
        4 * TARGET_MS as u64 + 300
    };
    let opts = FtOptions::compute(FAILURE_MS);
    let Some((mut pair, cap)) = capped_pair("tf", opts) else {
        return;
    };
    cap.set(Some(25));
    wait_for(Duration::from_secs(20), "the throttle to brake", || {
        pair.counter("primary", "throttle_permille") >= 500
    });
    // Settled near the target (throttle.rs: ~1 s).
    std::thread::sleep(Duration::from_millis(1500));
    let estimate = pair
        .status("primary")
        .map_or(0.0, |s| num(&s, "failover_estimate_ms"));
    pair.primary.signal(libc::SIGKILL);
    let took = pair.wait_backup_live(Duration::from_secs(20));
    // The report follows the go-live line.
    pair.backup.wait_for_line(
        "after the primary's last sign of life",
        Duration::from_secs(5),
    );
    let line = pair
        .backup
        .log()
        .lines()
        .find(|l| l.contains("go-live"))
        .unwrap_or_default()
        .to_string();
    drop(cap);
    assert!(
        took <= Duration::from_millis(BOUND_MS),
        "{what}: live {took:?} after the kill, bound {BOUND_MS} ms\n{line}"
    );
    assert!(
        line.contains("after the primary's last sign of life"),
        "{line}"
    );
    eprintln!(
        "{what}: live {took:?} after the kill (bound {BOUND_MS} ms, estimate before it {estimate} ms)\n{line}"
    );
}

/// The primary dies while the throttle brakes hard (the kv guest under
/// writers; every replayed exit of the backup takes a millisecond more,
/// fail point `replay-slow`; a 20 ms target, so that this output-bound
/// load is braked at all): no acknowledged write is lost, through the new
/// primary and on the disk image after a reboot.
#[test]
fn a_failover_while_braking_hard_loses_no_acknowledged_write() {
    if !kvm_available() {
        return;
    }
    let what = "a failover while the throttle brakes hard";
    let opts = FtOptions {
        failure_timeout_ms: 400,
        heartbeat_ms: 20,
        primary_extra: ["--lag-target-ms", "20"].map(String::from).to_vec(),
        ..FtOptions::default()
    };
    let mut pair = FtPair::start("tw", opts);
    let writers = Writers::start(&pair, 4);
    pair.wait_acked(200);
    pair.set_failpoints("backup", "replay-slow=sleep(1)");
    let mut seen = 0;
    wait_for(
        Duration::from_secs(20),
        "the throttle to brake hard",
        || {
            seen = pair.counter("primary", "throttle_permille");
            seen >= 500
        },
    );
    pair.primary.signal(libc::SIGKILL);
    let took = pair.wait_backup_live(Duration::from_secs(20));
    pair.set_failpoints("backup", "replay-slow=");
    let n = pair.check_writes(writers, what, false);
    eprintln!(
        "{what}: throttle at {seen} permille; live {took:?} after the kill; {n} acknowledged writes kept"
    );
}
