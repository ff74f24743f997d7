//! `StatusSnapshot`: what `GET /status` returns (as JSON) and what the
//! metrics and the human summary are made from — the counters at one moment
//! plus the values derived from them.

use serde::{Deserialize, Serialize};

use super::counters::{Role, StatusCounters};

/// Version of the JSON layout; raised when a field changes meaning or goes
/// away (new fields may appear without it).
pub const SNAPSHOT_FORMAT: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusSnapshot {
    pub format: u32,
    pub name: String,
    pub peer: Option<String>,
    pub role: Role,
    pub epoch: u64,
    pub uptime_ms: u64,
    /// Primary: last seq appended; backup: last seq received.
    pub log_seq: u64,
    /// Primary: last seq sent.
    pub sent_seq: u64,
    /// Primary: last seq the backup acked; backup: last seq it acked.
    pub acked_seq: u64,
    /// Backup: last seq replayed and its exit; primary: as the backup's
    /// latest ack reported them.
    pub replayed_seq: u64,
    pub replayed_exit: u64,
    /// This side's own exit index.
    pub exit_index: u64,
    /// Log bytes sent (primary) or received (backup).
    pub log_bytes: u64,
    /// Log bytes per second over the server's last second or so.
    pub log_bandwidth_bytes_per_s: f64,
    /// Entries the backup is behind: sent − replayed on a primary with a
    /// backup, received − replayed on a backup; absent otherwise.
    pub lag_entries: Option<u64>,
    /// Exits the backup is behind the primary: own exit − replayed exit on
    /// a primary with a backup; absent otherwise.
    pub lag_exits: Option<u64>,
    /// Outputs held by the output gate.
    pub gate_frames: u64,
    pub gate_disk_writes: u64,
    /// Milliseconds since the peer was last heard from; absent if never.
    pub peer_silent_ms: Option<u64>,
    pub heartbeats_sent: u64,
    pub heartbeats_received: u64,
    pub failovers: u64,
    /// Primary: backups failed for acking nothing while entries waited.
    #[serde(default)]
    pub ack_timeouts: u64,
    /// Outputs the kernel fence refused at the last step (lease over).
    #[serde(default)]
    pub outputs_refused: u64,
    /// Backup: acknowledged log chunks waiting for the replay.
    #[serde(default)]
    pub replay_backlog: u64,
    /// Primary with a backup: milliseconds of output lease left (0:
    /// expired, outputs wait); absent without a lease.
    #[serde(default)]
    pub lease_remaining_ms: Option<u64>,
    pub guest_exits: u64,
    pub guest_sync_calls: u64,
    /// How the logging channel is protected (`noise-psk`, `insecure`);
    /// absent outside FT.
    #[serde(default)]
    pub channel: Option<String>,
    /// Heartbeats refused as forged or replayed.
    #[serde(default)]
    pub heartbeats_forged: u64,
    #[serde(default)]
    pub heartbeats_replayed: u64,
    /// Backup: logging connections dropped unauthenticated, and
    /// authenticated primaries refused.
    #[serde(default)]
    pub channel_rejected: u64,
    #[serde(default)]
    pub primaries_refused: u64,
    /// Status requests refused for lack of the token.
    #[serde(default)]
    pub status_unauthorized: u64,
    /// Primary: times the vCPU stalled on full log buffers, and the time
    /// it spent stalled (ms).
    #[serde(default)]
    pub log_full_stalls: u64,
    #[serde(default)]
    pub log_stall_ms: u64,
    /// Primary: log bytes waiting in its buffers, and their size.
    #[serde(default)]
    pub log_buffer_bytes: u64,
    #[serde(default)]
    pub log_buffer_capacity: u64,
    /// Primary with a backup: how far the backup's replay is behind, in log
    /// bytes and in ms of guest execution (time the guest ran, not idle
    /// waits nor throttle delays), from the backup's acks.
    #[serde(default)]
    pub lag_log_bytes: Option<u64>,
    #[serde(default)]
    pub lag_guest_ms: Option<f64>,
    /// Primary with a backup: the backup's replay speed, exits per second.
    #[serde(default)]
    pub replay_exits_per_s: Option<u64>,
    /// Primary: the throttle (docs/throttling.md): its level in ‰ of the
    /// most it brakes, the delay it adds per guest-execution ms, the lag it
    /// aims below (0: no throttle).
    #[serde(default)]
    pub throttle_permille: u64,
    #[serde(default)]
    pub throttle_delay_us: u64,
    #[serde(default)]
    pub lag_target_ms: u64,
    /// An FT side's failure timeout (ms; 0 outside FT).
    #[serde(default)]
    pub failure_timeout_ms: u64,
    /// Primary with a backup: how long a failover would take now — the
    /// failure timeout or the backup's replay of its lag, whichever is
    /// longer (the replay goes on during the timeout), in ms.
    #[serde(default)]
    pub failover_estimate_ms: Option<u64>,
    /// Backup: bytes received, acked and not replayed yet; the bound; times
    /// the bound stopped the receives.
    #[serde(default)]
    pub replay_buffer_bytes: u64,
    #[serde(default)]
    pub replay_buffer_max_bytes: u64,
    #[serde(default)]
    pub replay_buffer_pauses: u64,
    /// A backup that went live: how long after the primary's last sign of
    /// life (ms); absent if it has not.
    #[serde(default)]
    pub went_live_after_ms: Option<u64>,
    /// `protected`, `need-backup (reason)`, `starting (join progress)`,
    /// `not protected (reason)` (docs/join.md).
    #[serde(default)]
    pub protection: String,
    /// Backups that joined this primary by live clone.
    #[serde(default)]
    pub joins: u64,
    /// The waiting backups the last round of re-protection was offered
    /// (`--spares`: a list, or the spares registered in etcd); absent
    /// before the first round.
    #[serde(default)]
    pub spares: Option<u64>,
}

impl StatusSnapshot {
    /// Reads every counter once and derives the lag; `bandwidth` is the
    /// server's windowed rate of `log_bytes`.
    pub fn take(c: &StatusCounters, bandwidth: f64) -> StatusSnapshot {
        let get = StatusCounters::get;
        let role = c.role();
        let (log_seq, sent_seq) = (get(&c.log_seq), get(&c.sent_seq));
        let (replayed_seq, replayed_exit) = (get(&c.replayed_seq), get(&c.replayed_exit));
        let exit_index = get(&c.exit_index);
        let (lag_entries, lag_exits) = if role.is_primary_with_backup() {
            (
                Some(sent_seq.saturating_sub(replayed_seq)),
                Some(exit_index.saturating_sub(replayed_exit)),
            )
        } else if role.is_backup() {
            (Some(log_seq.saturating_sub(replayed_seq)), None)
        } else {
            (None, None)
        };
        let with_backup = role.is_primary_with_backup();
        let lag_guest_ms = c
            .lag_guest_us()
            .filter(|_| with_backup)
            .map(|us| us as f64 / 1e3);
        let replay_exits_per_s = Some(get(&c.replay_exits_per_s)).filter(|_| with_backup);
        let failure_timeout_ms = get(&c.failure_timeout_ms);
        // The backup replays its lag while the failure timeout runs (it
        // stops only at the log's end), so the two overlap.
        let failover_estimate_ms = lag_guest_ms.map(|guest_ms| {
            failure_timeout_ms.max(replay_ms(
                guest_ms,
                lag_exits.unwrap_or(0),
                replay_exits_per_s.unwrap_or(0),
            ))
        });
        StatusSnapshot {
            format: SNAPSHOT_FORMAT,
            name: c.name.get().cloned().unwrap_or_default(),
            peer: c.peer(),
            role,
            epoch: get(&c.epoch),
            uptime_ms: c.uptime_ms(),
            log_seq,
            sent_seq,
            acked_seq: get(&c.acked_seq),
            replayed_seq,
            replayed_exit,
            exit_index,
            log_bytes: get(&c.log_bytes),
            log_bandwidth_bytes_per_s: bandwidth,
            lag_entries,
            lag_exits,
            gate_frames: get(&c.gate_frames),
            gate_disk_writes: get(&c.gate_disk_writes),
            peer_silent_ms: c.peer_silent_ms(),
            heartbeats_sent: get(&c.heartbeats_sent),
            heartbeats_received: get(&c.heartbeats_received),
            failovers: get(&c.failovers),
            ack_timeouts: get(&c.ack_timeouts),
            outputs_refused: get(&c.outputs_refused),
            replay_backlog: get(&c.replay_backlog),
            lease_remaining_ms: c.lease_remaining_ms(),
            guest_exits: get(&c.guest_exits),
            guest_sync_calls: get(&c.guest_sync_calls),
            channel: c.channel.get().cloned(),
            heartbeats_forged: get(&c.heartbeats_forged),
            heartbeats_replayed: get(&c.heartbeats_replayed),
            channel_rejected: get(&c.channel_rejected),
            primaries_refused: get(&c.primaries_refused),
            status_unauthorized: get(&c.status_unauthorized),
            log_full_stalls: get(&c.log_full_stalls),
            log_stall_ms: get(&c.log_stall_ns) / 1_000_000,
            log_buffer_bytes: get(&c.log_buffer_bytes),
            log_buffer_capacity: get(&c.log_buffer_capacity),
            lag_log_bytes: Some(get(&c.lag_log_bytes)).filter(|_| with_backup),
            lag_guest_ms,
            replay_exits_per_s,
            throttle_permille: get(&c.throttle_permille),
            throttle_delay_us: get(&c.throttle_delay_us),
            lag_target_ms: get(&c.lag_target_ms),
            failure_timeout_ms,
            failover_estimate_ms,
            replay_buffer_bytes: get(&c.replay_buffer_bytes),
            replay_buffer_max_bytes: get(&c.replay_buffer_max_bytes),
            replay_buffer_pauses: get(&c.replay_buffer_pauses),
            went_live_after_ms: c.went_live_after(),
            protection: c.join.describe(role),
            joins: get(&c.join.joins),
            spares: c.join.spares_seen(),
        }
    }

    /// Log bandwidth in Mbit/s, as people quote link speeds.
    pub fn log_mbit_per_s(&self) -> f64 {
        self.log_bandwidth_bytes_per_s * 8.0 / 1e6
    }
}

/// How long the backup needs to replay its lag (ms): the guest execution it
/// is behind, or, if its replay is slower than the primary ran, the exits
/// it is behind at its measured replay speed — whichever is longer.
pub fn replay_ms(lag_guest_ms: f64, lag_exits: u64, exits_per_s: u64) -> u64 {
    let by_time = lag_guest_ms.max(0.0).ceil() as u64;
    // Speed unknown (0): the guest time alone.
    let by_speed = lag_exits
        .saturating_mul(1000)
        .checked_div(exits_per_s)
        .unwrap_or(0);
    by_time.max(by_speed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replay_of_the_lag_takes_the_longer_of_time_and_speed() {
        assert_eq!(
            replay_ms(80.2, 100, 10_000),
            81,
            "a fast replay: guest time"
        );
        assert_eq!(
            replay_ms(80.0, 10_000, 50_000),
            200,
            "a slow replay: its speed"
        );
        assert_eq!(replay_ms(5.0, 10, 0), 5, "speed unknown");
    }
}
