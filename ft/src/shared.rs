//! What the threads of an FT VMM share beyond the dataplane: log positions
//! for the output rule and acks, the peer's liveness, and the decisions the
//! main thread takes after arbitration.

use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::Thread;
use std::time::Instant;

use crate::replay_buffer::ReplayBuffer;

/// Shared by the vCPU thread, the I/O thread and the main thread.
#[derive(Default)]
pub struct FtShared {
    /// Backup: the last seq received and verified (what it acks).
    pub received_seq: AtomicU64,
    /// Backup: the last seq the replay has applied, and its exit index.
    pub replayed_seq: AtomicU64,
    pub replayed_exit: AtomicU64,
    /// Backup: the highest `acked_seq` it has sent to the primary.
    pub ack_sent: AtomicU64,
    /// Backup: it suspected its primary and stopped acking; the log it
    /// replays ends at `cut_seq`, the highest seq any of its acks covered
    /// (everything the primary may have seen acknowledged, nothing more).
    pub cut: AtomicBool,
    pub cut_seq: AtomicU64,
    /// Backup: no output of its may leave before this instant, when the
    /// primary's lease is over for certain (its last ack + the lease).
    pub live_not_before: Mutex<Option<Instant>>,
    /// Backup: when it made the cut (its failure detection's verdict), and
    /// how far its replay was then: the go-live line reports the replay of
    /// the lag since.
    pub cut_made: Mutex<Option<(Instant, u64)>>,
    /// Backup: how long the primary had been silent when the cut was made
    /// (`None`: a broken channel, not silence).
    pub silent_at_cut: Mutex<Option<std::time::Duration>>,
    /// Backup: the primary's release watermark, from its heartbeats:
    /// outputs tagged above it may not have left the primary.
    pub primary_released: AtomicU64,
    /// This side lost the arbiter: nothing it holds, or produces later,
    /// may leave (the I/O thread revokes its gates).
    pub fenced: AtomicBool,
    /// The I/O thread's verdict: the peer is gone (timeouts or a closed
    /// channel).
    pub peer_dead: AtomicBool,
    /// Primary: the operator drops this backup (docs/operator-actions.md):
    /// set with `peer_dead`, so the supervisor claims the epoch as for a
    /// lost backup, but the channel stays open until it has won — the
    /// backup, seeing the channel break, would otherwise race it to the
    /// arbiter and might go live instead.
    pub dropped: AtomicBool,
    /// Backup: the primary ended the stream on purpose (an `End` entry and
    /// a clean close): replay to the end, no failover.
    pub stream_ended: AtomicBool,
    /// Backup: the channel closed (an error or a corrupt entry) while the
    /// primary's heartbeats went on; set with `peer_dead`, so the arbiter
    /// decides, and a lost claim is reported as a broken channel.
    pub channel_broken: AtomicBool,
    /// Why the channel closed, for the operator.
    pub channel_note: Mutex<Option<String>>,
    /// Main thread, backup: the arbiter was won; consume what was received,
    /// then go live.
    pub go_live: AtomicBool,
    /// Main thread, primary: the arbiter was won; continue without a
    /// backup (outputs no longer wait for acks).
    pub alone: AtomicBool,
    /// Backup: its replay diverged from the log at exit `diverged_exit`:
    /// its last ack says so (the primary then counts it lost, with that
    /// reason), and it stops.
    pub diverged: AtomicBool,
    pub diverged_exit: AtomicU64,
    /// Backup: the bound on what it received and has not replayed yet.
    pub replay_buffer: ReplayBuffer,
    /// The main thread, unparked when the I/O thread has news.
    pub main_thread: OnceLock<Thread>,
}

impl FtShared {
    pub fn load(a: &AtomicU64) -> u64 {
        a.load(Ordering::Acquire)
    }

    /// Raises `a` to `v` if `v` is higher.
    pub fn raise(a: &AtomicU64, v: u64) {
        a.fetch_max(v, Ordering::AcqRel);
    }

    pub fn flag(b: &AtomicBool) -> bool {
        b.load(Ordering::Acquire)
    }

    pub fn set(&self, b: &AtomicBool) {
        b.store(true, Ordering::Release);
        self.wake_main();
    }

    /// Records why the channel closed (the first reason wins).
    pub fn note(&self, why: impl Into<String>) {
        if let Ok(mut n) = self.channel_note.lock() {
            n.get_or_insert_with(|| why.into());
        }
        self.wake_main();
    }

    /// Records the backup's cut and when it may go live.
    pub fn set_cut(&self, seq: u64, live_not_before: Instant) {
        if let Ok(mut t) = self.live_not_before.lock() {
            *t = Some(live_not_before);
        }
        if let Ok(mut m) = self.cut_made.lock() {
            *m = Some((Instant::now(), Self::load(&self.replayed_seq)));
        }
        self.cut_seq.store(seq, Ordering::Release);
        self.set(&self.cut);
    }

    /// The cut, once the backup has made it.
    pub fn cut_at(&self) -> Option<u64> {
        Self::flag(&self.cut).then(|| Self::load(&self.cut_seq))
    }

    /// When the backup may go live (`None` before the cut).
    pub fn live_not_before(&self) -> Option<Instant> {
        self.live_not_before.lock().ok().and_then(|t| *t)
    }

    /// When the cut was made, and the seq replayed then.
    pub fn cut_made(&self) -> Option<(Instant, u64)> {
        self.cut_made.lock().ok().and_then(|m| *m)
    }

    pub fn note_text(&self) -> Option<String> {
        self.channel_note.lock().ok().and_then(|n| n.clone())
    }

    pub fn wake_main(&self) {
        if let Some(t) = self.main_thread.get() {
            t.unpark();
        }
    }
}
