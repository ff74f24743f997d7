//! Why a logging channel closed, and why an engine could not be set up.

use thiserror::Error;

use super::ack::AckError;
use crate::secure::RecordError;
use crate::stream::StreamError;

/// Why a logging-channel connection ended. Reported once, in
/// `SenderEvent::Closed` / `ReceiverEvent::Closed`; the engine does nothing
/// more afterwards.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ChannelError {
    /// Orderly end of the peer's side (EOF).
    #[error("the peer closed the logging channel")]
    PeerClosed,
    /// EOF inside the stream header or an entry: the entries before it were
    /// delivered, the partial one was not.
    #[error("the logging channel closed inside an entry")]
    Truncated(#[source] StreamError),
    /// A socket operation failed (ECONNRESET, EPIPE, ETIMEDOUT, …).
    #[error("{op} on the logging channel failed: {}", std::io::Error::from_raw_os_error(*errno))]
    Socket { op: &'static str, errno: i32 },
    /// The backup sent an ack that is malformed or impossible: a protocol
    /// error, so the connection is dropped.
    #[error("protocol error: bad ack from the backup")]
    BadAck(#[source] AckError),
    /// A corrupt stream header or entry arrived (receiver).
    #[error("corrupt log stream")]
    Corrupt(#[source] StreamError),
    /// A record of an authenticated channel failed (forged, replayed,
    /// damaged): nothing from it on is trusted, so the connection ends.
    #[error("the logging channel's records cannot be trusted")]
    Record(#[source] RecordError),
    /// The backup said its replay diverged (its last ack): it stops and
    /// can never take over.
    #[error("the backup's replay diverged from the log at exit {exit}; it stopped")]
    PeerDiverged { exit: u64 },
    /// `shutdown()` was called.
    #[error("the logging channel was shut down locally")]
    Shutdown,
}

impl ChannelError {
    pub(crate) fn socket(op: &'static str, errno: i32) -> Self {
        ChannelError::Socket { op, errno }
    }
}

/// Why an engine cannot run.
#[derive(Debug, Error)]
pub enum SetupError {
    #[error("cannot configure the {what} socket")]
    Socket {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot probe the io_uring opcodes this kernel supports")]
    Probe(#[source] std::io::Error),
    #[error("{mode} was requested but this kernel's io_uring lacks {opcode}")]
    Unsupported {
        mode: &'static str,
        opcode: &'static str,
    },
    #[error(
        "cannot register {count} buffers with the io_uring (locked-memory limit? a table already registered?)"
    )]
    Register {
        count: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("{count} buffers from slot {offset} do not fit the io_uring buffer table")]
    SlotRange { offset: u16, count: usize },
    #[error("cannot unregister buffers while {in_flight} operations are in flight")]
    Busy { in_flight: usize },
    #[error("the engine is already attached to a ring")]
    AlreadyAttached,
    #[error("invalid {what}: {why}")]
    Config {
        what: &'static str,
        why: &'static str,
    },
}
