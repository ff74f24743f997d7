//! The sender's public types: send modes, options, events, counters.

use std::fmt;
use std::time::Instant;

use super::error::ChannelError;

/// How segments are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SendMode {
    /// `IORING_OP_SEND_ZC` from the registered log buffers.
    ZeroCopyFixed,
    /// `IORING_OP_SEND_ZC`, pages pinned per send (no registered buffers).
    ZeroCopy,
    /// `IORING_OP_SEND`: the kernel copies the bytes into the socket.
    Copy,
}

impl SendMode {
    pub fn name(&self) -> &'static str {
        match self {
            SendMode::ZeroCopyFixed => "SEND_ZC from registered buffers",
            SendMode::ZeroCopy => "SEND_ZC",
            SendMode::Copy => "SEND (copy)",
        }
    }

    pub fn is_zero_copy(&self) -> bool {
        !matches!(self, SendMode::Copy)
    }
}

impl fmt::Display for SendMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Construction options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenderOptions {
    /// `None`: the best mode the kernel offers (and the fallback if
    /// registering buffers fails). `Some(mode)`: exactly that mode; `attach`
    /// fails if the kernel lacks it.
    pub mode: Option<SendMode>,
    /// Most bytes in one send (contiguous segments are merged up to it).
    pub max_send: usize,
}

impl Default for SenderOptions {
    fn default() -> Self {
        SenderOptions {
            mode: None,
            max_send: 1 << 20,
        }
    }
}

impl SenderOptions {
    /// Options that force `mode`.
    pub fn forced(mode: SendMode) -> Self {
        SenderOptions {
            mode: Some(mode),
            ..Self::default()
        }
    }
}

/// What the sender reports through `on_cqe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SenderEvent {
    /// The newest ack of a receive (batched acks are reported once).
    Acked {
        acked_seq: u64,
        replayed_seq: u64,
        replayed_exit: u64,
        /// When the send that carried entry `acked_seq` was handed to the
        /// kernel: the backup received the entry no earlier, so a lease
        /// counted from here never outlasts one the backup counts from its
        /// receipt (`lockstep_ft::output_rule`). `None` for an ack of nothing
        /// sent by this engine.
        sent_at: Option<Instant>,
    },
    /// The connection is over; reported once, nothing is sent afterwards.
    Closed { reason: ChannelError },
}

/// Counters (snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SenderStats {
    /// `None` until attached.
    pub mode: Option<SendMode>,
    /// Stream bytes the socket accepted, header included.
    pub bytes_sent: u64,
    pub entries_sent: u64,
    pub segments_sent: u64,
    /// Segments taken from the log and not yet released to it.
    pub segments_in_flight: u64,
    /// Completed send operations, and those that sent less than asked.
    pub send_ops: u64,
    pub partial_sends: u64,
    /// `SEND_ZC` notifications, and how many said the kernel copied.
    pub zc_notifications: u64,
    pub zc_copied: u64,
    pub acks_received: u64,
    pub last_ack: Option<Instant>,
    pub acked_seq: u64,
    pub replayed_seq: u64,
    pub replayed_exit: u64,
}
