//! The human summary `lockstep status` prints: a few aligned lines, what
//! an operator checks first (role, epoch, how far the backup is behind,
//! whether the peer is heard) at the top.

use std::fmt::Write;

use super::counters::Role;
use super::sanitize::for_terminal;
use super::snapshot::StatusSnapshot;

/// The summary; every string the endpoint sent is shown through
/// [`for_terminal`] (it may come from another host).
pub fn render(s: &StatusSnapshot) -> String {
    let mut o = String::new();
    // Writing to a String cannot fail.
    let name = if s.name.is_empty() {
        "lockstep".to_string()
    } else {
        for_terminal(&s.name)
    };
    let _ = writeln!(
        o,
        "{name}: {} (epoch {}), up {}",
        s.role,
        s.epoch,
        duration(s.uptime_ms)
    );
    if !s.protection.is_empty() {
        let _ = writeln!(o, "  protection {}", for_terminal(&s.protection));
    }
    if let Some(n) = s.spares {
        let _ = writeln!(o, "  spares     {n} at the last round of re-protection");
    }
    let peer = for_terminal(s.peer.as_deref().unwrap_or("-"));
    let heard = match s.peer_silent_ms {
        Some(ms) => format!("heard {} ago", duration_fine(ms)),
        None => "never heard".to_string(),
    };
    if matches!(s.role, Role::Standalone | Role::Recording) && s.peer.is_none() {
        let _ = writeln!(o, "  peer       none");
    } else {
        let _ = writeln!(
            o,
            "  peer       {peer}, {heard}; heartbeats {} sent, {} received",
            s.heartbeats_sent, s.heartbeats_received
        );
    }
    if s.role.is_backup() {
        let _ = writeln!(
            o,
            "  log        received {}, acked {}, replayed {} (exit {})",
            s.log_seq, s.acked_seq, s.replayed_seq, s.replayed_exit
        );
    } else {
        let _ = writeln!(
            o,
            "  log        appended {}, sent {}, acked {}, replayed {} (exit {})",
            s.log_seq, s.sent_seq, s.acked_seq, s.replayed_seq, s.replayed_exit
        );
    }
    let lag = match (s.lag_entries, s.lag_exits) {
        (Some(e), Some(x)) => format!("{e} entries, {x} exits"),
        (Some(e), None) => format!("{e} entries"),
        _ => "-".to_string(),
    };
    let lag = match (s.lag_guest_ms, s.lag_log_bytes) {
        (Some(ms), Some(b)) => format!("{lag}, {ms:.1} ms of guest execution, {}", bytes(b)),
        _ => lag,
    };
    let _ = writeln!(o, "  lag        {lag}");
    if s.role.is_primary_with_backup() || s.lag_target_ms > 0 {
        let speed = match s.replay_exits_per_s {
            Some(v) => format!("; backup replays {v} exits/s"),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "  throttle   {:.1} % (target lag {} ms, {} µs delay per ms of guest execution){speed}",
            s.throttle_permille as f64 / 10.0,
            s.lag_target_ms,
            s.throttle_delay_us
        );
        let _ = writeln!(
            o,
            "  buffers    log {} of {}; {} full-buffer stalls ({} ms)",
            bytes(s.log_buffer_bytes),
            bytes(s.log_buffer_capacity),
            s.log_full_stalls,
            s.log_stall_ms
        );
    }
    if s.role.is_backup() {
        let _ = writeln!(
            o,
            "  buffers    replay {} of {}; receives paused {} times",
            bytes(s.replay_buffer_bytes),
            bytes(s.replay_buffer_max_bytes),
            s.replay_buffer_pauses
        );
    }
    if let Some(ms) = s.went_live_after_ms {
        let _ = writeln!(
            o,
            "  went live  {ms} ms after the primary's last sign of life (failure timeout {} ms)",
            s.failure_timeout_ms
        );
    }
    if let Some(ms) = s.failover_estimate_ms {
        let _ = writeln!(
            o,
            "  failover   ~{ms} ms (the longer of the failure timeout, {} ms, and the replay of the lag)",
            s.failure_timeout_ms
        );
    }
    let _ = writeln!(
        o,
        "  bandwidth  {:.1} Mbit/s ({} total)",
        s.log_mbit_per_s(),
        bytes(s.log_bytes)
    );
    let lease = match s.lease_remaining_ms {
        Some(0) => "; lease expired, outputs wait".to_string(),
        Some(ms) => format!("; lease {}", duration_fine(ms)),
        None => String::new(),
    };
    let _ = writeln!(
        o,
        "  gate       {} frames, {} disk writes held{lease}",
        s.gate_frames, s.gate_disk_writes
    );
    if let Some(channel) = &s.channel {
        let _ = writeln!(
            o,
            "  channel    {}; {} connections rejected, {} primaries refused; heartbeats {} forged, {} replayed",
            for_terminal(channel),
            s.channel_rejected,
            s.primaries_refused,
            s.heartbeats_forged,
            s.heartbeats_replayed
        );
    }
    if s.ack_timeouts > 0 || s.outputs_refused > 0 {
        let _ = writeln!(
            o,
            "  fencing    {} ack timeouts, {} outputs refused",
            s.ack_timeouts, s.outputs_refused
        );
    }
    let _ = writeln!(
        o,
        "  guest      exit {}, {} exits, {} sync calls; failovers {}",
        s.exit_index, s.guest_exits, s.guest_sync_calls, s.failovers
    );
    o
}

fn duration(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn duration_fine(ms: u64) -> String {
    if ms < 10_000 {
        format!("{ms} ms")
    } else {
        duration(ms)
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_primary_shows_its_lag_throttle_buffers_and_failover_estimate() {
        use crate::counters::StatusCounters;
        let c = StatusCounters::new(Role::Primary, "a", Some("b"));
        let set = StatusCounters::set;
        set(&c.exit_index, 1000);
        set(&c.replayed_exit, 900);
        set(&c.lag_guest_us, 120_500);
        set(&c.lag_log_bytes, 4096);
        set(&c.replay_exits_per_s, 200);
        set(&c.throttle_permille, 750);
        set(&c.throttle_delay_us, 3000);
        set(&c.lag_target_ms, 100);
        set(&c.failure_timeout_ms, 400);
        let text = render(&StatusSnapshot::take(&c, 0.0));
        assert!(
            text.contains("100 exits, 120.5 ms of guest execution, 4.0 KiB"),
            "{text}"
        );
        assert!(
            text.contains("throttle   75.0 % (target lag 100 ms"),
            "{text}"
        );
        assert!(text.contains("backup replays 200 exits/s"), "{text}");
        // The longer of the timeout (400) and the replay: 100 exits at
        // 200/s = 500 ms.
        assert!(text.contains("failover   ~500 ms"), "{text}");
    }

    #[test]
    fn units() {
        assert_eq!(duration(59_999), "59s");
        assert_eq!(duration(61_000), "1m01s");
        assert_eq!(duration(3_723_000), "1h02m");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
    }
}
