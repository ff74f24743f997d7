//! `GET /metrics`: the snapshot in the Prometheus text exposition format
//! (version 0.0.4): `# HELP` and `# TYPE` for every family, `lockstep_`
//! prefix, base units (seconds, bytes), `_total` on counters.

use std::fmt::{Display, Write};

use super::counters::Role;
use super::snapshot::StatusSnapshot;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

enum Kind {
    Gauge,
    Counter,
}

struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Gauge => "gauge",
            Kind::Counter => "counter",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.0, "# HELP lockstep_{name} {help}");
        let _ = writeln!(self.0, "# TYPE lockstep_{name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.0.push_str("lockstep_");
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape_label(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }

    fn one(&mut self, name: &str, kind: Kind, help: &str, value: impl Display) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// Label values escape backslash, double quote and newline.
fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Renders every metric of `s`.
pub fn render(s: &StatusSnapshot) -> String {
    use Kind::{Counter, Gauge};
    let mut o = Out(String::with_capacity(4096));
    o.family("info", Gauge, "This VMM's name and peer; always 1.");
    let peer = s.peer.as_deref().unwrap_or("");
    o.sample("info", &[("name", &s.name), ("peer", peer)], 1);
    o.family(
        "role",
        Gauge,
        "1 for the role this VMM has now, 0 for the others.",
    );
    for role in Role::ALL {
        let v = u8::from(role == s.role);
        o.sample("role", &[("role", role.as_str())], v);
    }
    o.one(
        "epoch",
        Gauge,
        "The FT pair run's epoch (0 outside FT).",
        s.epoch,
    );
    o.one(
        "uptime_seconds",
        Gauge,
        "Seconds since this VMM started.",
        s.uptime_ms as f64 / 1e3,
    );
    o.one(
        "log_seq",
        Gauge,
        "Last log sequence number appended (primary) or received (backup).",
        s.log_seq,
    );
    o.one(
        "log_sent_seq",
        Gauge,
        "Last log sequence number sent to the backup.",
        s.sent_seq,
    );
    o.one(
        "log_acked_seq",
        Gauge,
        "Last log sequence number the backup acknowledged (on the backup: the last it acked).",
        s.acked_seq,
    );
    o.one(
        "replayed_seq",
        Gauge,
        "Last log sequence number the backup replayed (on the primary: from the backup's acks).",
        s.replayed_seq,
    );
    o.one(
        "replayed_exit",
        Gauge,
        "Exit index the backup's replay has reached (on the primary: from the backup's acks).",
        s.replayed_exit,
    );
    o.one(
        "exit_index",
        Gauge,
        "This side's own exit index.",
        s.exit_index,
    );
    o.one(
        "log_bytes_total",
        Counter,
        "Log bytes sent (primary) or received (backup).",
        s.log_bytes,
    );
    o.one(
        "log_bandwidth_bytes_per_second",
        Gauge,
        "Log bytes per second over about the last second.",
        s.log_bandwidth_bytes_per_s,
    );
    if let Some(lag) = s.lag_entries {
        o.one(
            "lag_entries",
            Gauge,
            "Log entries the backup's replay is behind.",
            lag,
        );
    }
    if let Some(lag) = s.lag_exits {
        o.one(
            "lag_exits",
            Gauge,
            "Exits the backup's replay is behind the primary.",
            lag,
        );
    }
    o.one(
        "output_gate_frames",
        Gauge,
        "Network frames held until the backup acks their log entries.",
        s.gate_frames,
    );
    o.one(
        "output_gate_disk_writes",
        Gauge,
        "Disk writes held until the backup acks their log entries.",
        s.gate_disk_writes,
    );
    if let Some(ms) = s.peer_silent_ms {
        o.one(
            "peer_silence_seconds",
            Gauge,
            "Seconds since the peer was last heard from.",
            ms as f64 / 1e3,
        );
    }
    o.one(
        "heartbeats_sent_total",
        Counter,
        "Heartbeats sent to the peer.",
        s.heartbeats_sent,
    );
    o.one(
        "heartbeats_received_total",
        Counter,
        "Heartbeats received from the peer.",
        s.heartbeats_received,
    );
    o.one(
        "heartbeats_forged_total",
        Counter,
        "Heartbeats refused: not signed with the peer's key of this session.",
        s.heartbeats_forged,
    );
    o.one(
        "heartbeats_replayed_total",
        Counter,
        "Heartbeats refused: a counter already seen (replayed).",
        s.heartbeats_replayed,
    );
    o.one(
        "channel_rejected_total",
        Counter,
        "Backup: logging connections dropped before they authenticated.",
        s.channel_rejected,
    );
    o.one(
        "primaries_refused_total",
        Counter,
        "Backup: authenticated primaries refused (a second one, another guest, an unbegun epoch).",
        s.primaries_refused,
    );
    o.one(
        "status_unauthorized_total",
        Counter,
        "Status requests refused for lack of the bearer token.",
        s.status_unauthorized,
    );
    o.one(
        "failovers_total",
        Counter,
        "Failovers this VMM took part in (went live or continued alone).",
        s.failovers,
    );
    o.one(
        "ack_timeouts_total",
        Counter,
        "Backups failed for acknowledging nothing while log entries were outstanding.",
        s.ack_timeouts,
    );
    o.one(
        "outputs_refused_total",
        Counter,
        "Outputs the kernel fence refused at the last step (the output lease had run out).",
        s.outputs_refused,
    );
    o.one(
        "replay_backlog_chunks",
        Gauge,
        "Backup: acknowledged log chunks waiting for the replay.",
        s.replay_backlog,
    );
    if let Some(ms) = s.lease_remaining_ms {
        o.one(
            "lease_remaining_seconds",
            Gauge,
            "Output lease left; outputs wait once it reaches 0.",
            ms as f64 / 1e3,
        );
    }
    o.one(
        "log_full_stalls_total",
        Counter,
        "Primary: times its vCPU stalled on full log buffers.",
        s.log_full_stalls,
    );
    o.one(
        "log_stall_seconds_total",
        Counter,
        "Primary: time its vCPU spent stalled on full log buffers.",
        s.log_stall_ms as f64 / 1e3,
    );
    o.one(
        "log_buffer_bytes",
        Gauge,
        "Primary: log bytes waiting in its buffers to be sent.",
        s.log_buffer_bytes,
    );
    o.one(
        "log_buffer_capacity_bytes",
        Gauge,
        "Primary: the size of its log buffers.",
        s.log_buffer_capacity,
    );
    if let Some(b) = s.lag_log_bytes {
        o.one(
            "lag_log_bytes",
            Gauge,
            "Log bytes the backup's replay is behind.",
            b,
        );
    }
    if let Some(ms) = s.lag_guest_ms {
        o.one(
            "lag_guest_seconds",
            Gauge,
            "Guest execution the backup's replay is behind (idle waits and throttle delays excluded).",
            ms / 1e3,
        );
    }
    if let Some(v) = s.replay_exits_per_s {
        o.one(
            "replay_exits_per_second",
            Gauge,
            "The backup's replay speed, from its acks.",
            v,
        );
    }
    o.one(
        "throttle_level_ratio",
        Gauge,
        "Primary: the throttle's level, 0 (no brake) to 1 (the most it brakes).",
        s.throttle_permille as f64 / 1e3,
    );
    o.one(
        "throttle_delay_seconds_per_second",
        Gauge,
        "Primary: the throttle's delay per second of guest execution.",
        s.throttle_delay_us as f64 / 1e3,
    );
    o.one(
        "lag_target_seconds",
        Gauge,
        "Primary: the lag the throttle aims below (0: no throttle).",
        s.lag_target_ms as f64 / 1e3,
    );
    if let Some(ms) = s.failover_estimate_ms {
        o.one(
            "failover_estimate_seconds",
            Gauge,
            "Primary: the longer of the failure timeout and the backup's replay of its lag.",
            ms as f64 / 1e3,
        );
    }
    if let Some(ms) = s.went_live_after_ms {
        o.one(
            "went_live_after_seconds",
            Gauge,
            "A backup that went live: how long after the primary's last sign of life.",
            ms as f64 / 1e3,
        );
    }
    o.one(
        "replay_buffer_bytes",
        Gauge,
        "Backup: log bytes received and acked, not yet replayed.",
        s.replay_buffer_bytes,
    );
    o.one(
        "replay_buffer_max_bytes",
        Gauge,
        "Backup: the bound on its replay buffer.",
        s.replay_buffer_max_bytes,
    );
    o.one(
        "replay_buffer_pauses_total",
        Counter,
        "Backup: times a full replay buffer stopped its receives (backpressure).",
        s.replay_buffer_pauses,
    );
    o.one(
        "guest_exits_total",
        Counter,
        "VM exits the guest caused.",
        s.guest_exits,
    );
    o.one(
        "guest_sync_calls_total",
        Counter,
        "Sync calls the guest made.",
        s.guest_sync_calls,
    );
    o.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped() {
        assert_eq!(escape_label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
