//! The counters a VMM's threads update for `lockstep status` and the
//! metrics endpoint. Every field is an atomic that its one writer updates
//! with a single relaxed store or add on its hot path; the status server
//! reads them whenever asked. Relaxed is enough: a snapshot is a set of
//! recent values for people and dashboards, not a consistent cut, and no
//! decision of the VMM is taken from it.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// What this VMM is doing, as `lockstep status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[repr(u8)]
pub enum Role {
    /// One VM, no fault tolerance (`lockstep run`).
    Standalone = 0,
    /// One VM whose inputs go to a log file (`lockstep record`).
    Recording = 1,
    /// FT primary with a live backup.
    Primary = 2,
    /// FT primary whose backup is gone; it won the arbiter and runs alone.
    PrimaryAlone = 3,
    /// FT backup replaying the primary's log.
    Backup = 4,
    /// Backup that won the arbiter and is consuming the rest of the log
    /// before it serves.
    GoingLive = 5,
    /// The VM has stopped (guest exit, lost arbiter, shutdown).
    Stopped = 6,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Standalone,
        Role::Recording,
        Role::Primary,
        Role::PrimaryAlone,
        Role::Backup,
        Role::GoingLive,
        Role::Stopped,
    ];

    pub fn from_u8(v: u8) -> Option<Role> {
        Role::ALL.get(usize::from(v)).copied()
    }

    /// The name in JSON, metrics labels and the human summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Recording => "recording",
            Role::Primary => "primary",
            Role::PrimaryAlone => "primary-alone",
            Role::Backup => "backup",
            Role::GoingLive => "going-live",
            Role::Stopped => "stopped",
        }
    }

    /// Sides that stream the log to a backup and hear its acks.
    pub fn is_primary_with_backup(self) -> bool {
        self == Role::Primary
    }

    /// Sides that receive and replay a log.
    pub fn is_backup(self) -> bool {
        matches!(self, Role::Backup | Role::GoingLive)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `peer_heard_at_ms` before anything was heard.
const NEVER: u64 = u64::MAX;

/// Shared with the VMM threads through `Arc`. Field comments name the
/// thread expected to write each one; all writes are `Relaxed`.
pub struct StatusCounters {
    started: Instant,
    /// This side's name (arbiter name); set once at start.
    pub name: OnceLock<String>,
    /// The peer's address or name: the backup a join brought replaces the
    /// one before ([`StatusCounters::set_peer`]).
    peer: std::sync::Mutex<Option<String>>,
    /// How the logging channel is protected (`noise-psk`, `insecure`);
    /// set once at start by an FT side.
    pub channel: OnceLock<String>,
    /// [`Role`] as `u8`; use [`StatusCounters::set_role`].
    pub role: AtomicU8,
    /// The FT pair run's epoch (0 outside FT).
    pub epoch: AtomicU64,
    /// Primary: last log seq appended; backup: last seq received.
    pub log_seq: AtomicU64,
    /// Primary: last seq handed to the socket.
    pub sent_seq: AtomicU64,
    /// Primary: last seq the backup acked; backup: last seq it acked.
    pub acked_seq: AtomicU64,
    /// Backup: last seq replayed and its exit index; primary: the same as
    /// the backup's latest ack reported them.
    pub replayed_seq: AtomicU64,
    pub replayed_exit: AtomicU64,
    /// This side's own exit index.
    pub exit_index: AtomicU64,
    /// Log bytes sent (primary) or received (backup), in total.
    pub log_bytes: AtomicU64,
    /// Output gate: frames and disk writes held until their log entries
    /// are acked.
    pub gate_frames: AtomicU64,
    pub gate_disk_writes: AtomicU64,
    /// Milliseconds after `started` when the peer was last heard from
    /// (heartbeat, ack or log data); use [`StatusCounters::heard_from_peer`].
    pub peer_heard_at_ms: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_received: AtomicU64,
    /// Failovers this VMM took part in (went live, or continued alone).
    pub failovers: AtomicU64,
    /// Primary: times the backup was failed for acking nothing while log
    /// entries were outstanding (alive, but making no progress).
    pub ack_timeouts: AtomicU64,
    /// Outputs the kernel fence refused at the last step (the output lease
    /// had run out): each waited for a renewed lease, or was dropped when
    /// this side lost. None of them left the host.
    pub outputs_refused: AtomicU64,
    /// Backup: log chunks received and acknowledged but not yet taken by
    /// the replay (its ring and the queue behind it).
    pub replay_backlog: AtomicU64,
    /// Primary: milliseconds after `started` until which its output lease
    /// runs (`u64::MAX`: no lease needed; use [`StatusCounters::set_lease_until`]).
    pub lease_until_ms: AtomicU64,
    /// The guest's exits and sync calls.
    pub guest_exits: AtomicU64,
    pub guest_sync_calls: AtomicU64,
    /// Heartbeats refused: not signed with the peer's key of this session
    /// (forged), or an old counter again (replayed).
    pub heartbeats_forged: AtomicU64,
    pub heartbeats_replayed: AtomicU64,
    /// Backup: connections to the logging port dropped before they proved
    /// anything (junk, silence, a wrong key, a replay, too many at once).
    pub channel_rejected: AtomicU64,
    /// Backup: authenticated primaries refused (a second one, a wrong
    /// guest, an epoch the arbiter never began).
    pub primaries_refused: AtomicU64,
    /// Status requests refused for lack of the bearer token.
    pub status_unauthorized: AtomicU64,
    /// Primary: times its vCPU stalled on full log buffers (the backup
    /// or the link not keeping up), and the time it spent stalled.
    pub log_full_stalls: AtomicU64,
    pub log_stall_ns: AtomicU64,
    /// Primary: log bytes published and not yet sent, and the buffers'
    /// size.
    pub log_buffer_bytes: AtomicU64,
    pub log_buffer_capacity: AtomicU64,
    /// Primary: how far the backup's replay is behind, in log bytes and
    /// in µs of guest execution (`u64::MAX`: not known yet), from its acks.
    pub lag_log_bytes: AtomicU64,
    pub lag_guest_us: AtomicU64,
    /// Primary: the backup's replay speed (exits per second), from its acks.
    pub replay_exits_per_s: AtomicU64,
    /// Primary: the throttle's level (0 ‰: no brake, 1000 ‰: the most it
    /// brakes), the delay it adds to each sync call, and its target lag.
    pub throttle_permille: AtomicU64,
    pub throttle_delay_us: AtomicU64,
    pub lag_target_ms: AtomicU64,
    /// The failure timeout (ms); set once by an FT side.
    pub failure_timeout_ms: AtomicU64,
    /// Backup: bytes received and not yet replayed, its bound, and times
    /// the bound stopped the receives (backpressure).
    pub replay_buffer_bytes: AtomicU64,
    pub replay_buffer_max_bytes: AtomicU64,
    pub replay_buffer_pauses: AtomicU64,
    /// A backup that went live: how long after the primary's last sign of
    /// life (ms; `u64::MAX`: it has not).
    pub went_live_after_ms: AtomicU64,
    /// A primary's live clone into a new backup (docs/join.md).
    pub join: crate::protection::JoinProgress,
}

impl Default for StatusCounters {
    fn default() -> Self {
        StatusCounters {
            started: Instant::now(),
            name: OnceLock::new(),
            peer: Default::default(),
            channel: OnceLock::new(),
            role: AtomicU8::new(Role::Standalone as u8),
            epoch: AtomicU64::new(0),
            log_seq: AtomicU64::new(0),
            sent_seq: AtomicU64::new(0),
            acked_seq: AtomicU64::new(0),
            replayed_seq: AtomicU64::new(0),
            replayed_exit: AtomicU64::new(0),
            exit_index: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            gate_frames: AtomicU64::new(0),
            gate_disk_writes: AtomicU64::new(0),
            peer_heard_at_ms: AtomicU64::new(NEVER),
            heartbeats_sent: AtomicU64::new(0),
            heartbeats_received: AtomicU64::new(0),
            failovers: AtomicU64::new(0),
            ack_timeouts: AtomicU64::new(0),
            outputs_refused: AtomicU64::new(0),
            replay_backlog: AtomicU64::new(0),
            lease_until_ms: AtomicU64::new(NEVER),
            guest_exits: AtomicU64::new(0),
            guest_sync_calls: AtomicU64::new(0),
            heartbeats_forged: AtomicU64::new(0),
            heartbeats_replayed: AtomicU64::new(0),
            channel_rejected: AtomicU64::new(0),
            primaries_refused: AtomicU64::new(0),
            status_unauthorized: AtomicU64::new(0),
            log_full_stalls: AtomicU64::new(0),
            log_stall_ns: AtomicU64::new(0),
            log_buffer_bytes: AtomicU64::new(0),
            log_buffer_capacity: AtomicU64::new(0),
            lag_log_bytes: AtomicU64::new(0),
            lag_guest_us: AtomicU64::new(NEVER),
            replay_exits_per_s: AtomicU64::new(0),
            throttle_permille: AtomicU64::new(0),
            throttle_delay_us: AtomicU64::new(0),
            lag_target_ms: AtomicU64::new(0),
            failure_timeout_ms: AtomicU64::new(0),
            replay_buffer_bytes: AtomicU64::new(0),
            replay_buffer_max_bytes: AtomicU64::new(0),
            replay_buffer_pauses: AtomicU64::new(0),
            went_live_after_ms: AtomicU64::new(NEVER),
            join: Default::default(),
        }
    }
}

impl StatusCounters {
    /// Counters for a VMM in `role`, with its name and peer.
    pub fn new(role: Role, name: &str, peer: Option<&str>) -> Self {
        let c = StatusCounters::default();
        c.set_role(role);
        let _ = c.name.set(name.to_string());
        if let Some(p) = peer {
            c.set_peer(p);
        }
        c
    }

    /// Who the peer is now.
    pub fn set_peer(&self, peer: &str) {
        if let Ok(mut p) = self.peer.lock() {
            *p = Some(peer.to_string());
        }
    }

    pub fn peer(&self) -> Option<String> {
        self.peer.lock().ok().and_then(|p| p.clone())
    }

    pub fn set_role(&self, role: Role) {
        self.role.store(role as u8, Relaxed);
    }

    pub fn role(&self) -> Role {
        // Only `set_role` writes the field, so the fallback is unreachable.
        Role::from_u8(self.role.load(Relaxed)).unwrap_or(Role::Stopped)
    }

    /// Milliseconds since these counters were made (the VMM's start).
    pub fn uptime_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Notes that the peer was heard from just now (one clock read and one
    /// relaxed store).
    pub fn heard_from_peer(&self) {
        self.peer_heard_at_ms.store(self.uptime_ms(), Relaxed);
    }

    /// The same for a thread that already read the clock (`now` from
    /// `Instant::now()`): one relaxed store.
    pub fn heard_from_peer_at(&self, now: Instant) {
        let ms = now.saturating_duration_since(self.started).as_millis();
        self.peer_heard_at_ms
            .store(u64::try_from(ms).unwrap_or(u64::MAX - 1), Relaxed);
    }

    /// The output lease runs until `until` (`None`: no lease needed).
    pub fn set_lease_until(&self, until: Option<Instant>) {
        let ms = until.map_or(NEVER, |t| {
            let ms = t.saturating_duration_since(self.started).as_millis();
            u64::try_from(ms).unwrap_or(NEVER - 1)
        });
        self.lease_until_ms.store(ms, Relaxed);
    }

    /// Milliseconds of output lease left (0: expired); `None` without one.
    pub fn lease_remaining_ms(&self) -> Option<u64> {
        match self.lease_until_ms.load(Relaxed) {
            NEVER => None,
            until => Some(until.saturating_sub(self.uptime_ms())),
        }
    }

    /// µs of guest execution the backup is behind; `None` before known.
    pub fn lag_guest_us(&self) -> Option<u64> {
        match self.lag_guest_us.load(Relaxed) {
            NEVER => None,
            us => Some(us),
        }
    }

    /// How long after the primary's last sign of life this backup went
    /// live; `None` if it has not.
    pub fn went_live_after(&self) -> Option<u64> {
        match self.went_live_after_ms.load(Relaxed) {
            NEVER => None,
            ms => Some(ms),
        }
    }

    /// Milliseconds since the peer was last heard from; `None` if never.
    pub fn peer_silent_ms(&self) -> Option<u64> {
        match self.peer_heard_at_ms.load(Relaxed) {
            NEVER => None,
            at => Some(self.uptime_ms().saturating_sub(at)),
        }
    }

    /// The vCPU thread serves a sync call at `exit_index`.
    pub fn note_sync_call(&self, exit_index: u64) {
        Self::set(&self.exit_index, exit_index);
        Self::set(&self.guest_exits, exit_index);
        Self::add(&self.guest_sync_calls, 1);
    }

    /// Convenience for one-writer counters: `field = v`.
    #[inline]
    pub fn set(field: &AtomicU64, v: u64) {
        field.store(v, Relaxed);
    }

    /// Convenience for one-writer counters: `field += n`.
    #[inline]
    pub fn add(field: &AtomicU64, n: u64) {
        field.fetch_add(n, Relaxed);
    }

    #[inline]
    pub fn get(field: &AtomicU64) -> u64 {
        field.load(Relaxed)
    }
}
