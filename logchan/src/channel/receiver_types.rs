//! The receiver's public types: receive modes, options, events, counters.

use std::fmt;
use std::time::Instant;

use super::ack::Ack;
use super::error::ChannelError;
use crate::header::StreamHeader;
use crate::stream::StreamError;

/// How the stream is read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecvMode {
    /// `IORING_OP_READ_FIXED` into registered buffers.
    Fixed,
    /// `IORING_OP_RECV` into the same buffers, unregistered.
    Plain,
}

impl fmt::Display for RecvMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RecvMode::Fixed => "READ_FIXED into registered buffers",
            RecvMode::Plain => "RECV",
        })
    }
}

/// Construction options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiverOptions {
    /// Receive buffers, used in turn (≥ 1).
    pub buffers: usize,
    /// Bytes per buffer: the most one read returns.
    pub buffer_size: usize,
    /// `None`: [`RecvMode::Fixed`] if registration works, else
    /// [`RecvMode::Plain`]. `Some`: exactly that.
    pub mode: Option<RecvMode>,
}

impl Default for ReceiverOptions {
    fn default() -> Self {
        ReceiverOptions {
            buffers: 2,
            buffer_size: 256 << 10,
            mode: None,
        }
    }
}

/// What the receiver reports through `on_cqe`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReceiverEvent {
    /// The stream header: first, once. Check its identity and epoch.
    Header(StreamHeader),
    /// Whole verified entries, contiguous, exactly as sent.
    Entries {
        bytes: Vec<u8>,
        first_seq: u64,
        last_seq: u64,
        /// Exit index of the last entry.
        last_exit: u64,
    },
    /// The connection ended. `clean`: at EOF with no partial entry pending.
    Closed { reason: ChannelError, clean: bool },
    /// A corrupt header or entry: nothing from it on is handed on; the
    /// connection is shut down and nothing more is reported.
    Corrupt { error: StreamError },
}

/// Counters (snapshot).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReceiverStats {
    pub mode: Option<RecvMode>,
    pub bytes_received: u64,
    pub reads: u64,
    pub entries_received: u64,
    /// Acks wholly sent.
    pub acks_sent: u64,
    /// The newest ack sent (or being sent).
    pub last_ack: Ack,
    /// When bytes last arrived (any bytes are a sign of life).
    pub last_heard: Option<Instant>,
}
