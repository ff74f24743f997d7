//! The logging channel: the primary's log stream to the backup over TCP,
//! the backup's acks coming back on the same connection, and UDP heartbeats
//! in both directions — as io_uring **engines** that run on the VMM's I/O
//! thread, on the ring it shares with the disk and tap engines.
//!
//! * [`SenderEngine`] (primary): sends the stream header once, then every
//!   published [`crate::Segment`] in order, straight from the log buffers
//!   (`IORING_OP_SEND_ZC` from registered buffers where the kernel has it),
//!   and reports the backup's acks.
//! * [`ReceiverEngine`] (backup): receives into registered buffers, verifies
//!   every entry with a [`crate::StreamDecoder`], hands whole verified
//!   entries on and acks what it has received.
//! * [`HeartbeatEngine`]: one UDP datagram every period, both ways.
//! * [`FailureDetector`]: "heard from the peer at t" from heartbeats and
//!   channel traffic; declares the peer dead after a timeout.
//! * [`Ack`] and [`Heartbeat`]: the two 40-byte wire messages (versioned,
//!   crc32c-checked); `docs/log-format.md` has the layout.
//!
//! Every engine follows the pattern of `blkio::DiskEngine` and
//! `netio::TapEngine`: the caller owns the ring; the engine pushes SQEs in
//! `pump` and handles its own CQEs in `on_cqe`; `user_data` carries the
//! engine's tag in the top byte (the I/O thread dispatches on it), a kind in
//! the next byte and an id below. Engines never block and never sleep; the
//! buffers an SQE points at stay owned by the engine until that SQE's last
//! CQE (for `SEND_ZC`: its notification) has been handled, and an engine
//! dropped with operations in flight leaks those buffers rather than free
//! memory the kernel may still touch.

pub mod ack;
pub mod detector;
pub mod error;
mod fixed;
pub mod heartbeat;
pub mod heartbeat_engine;
mod outbox;
pub mod receiver;
mod receiver_types;
mod sealed;
pub mod sender;
mod sender_types;

/// The io_uring crate the engines are built against, for callers (benches,
/// tools) that drive them without depending on it themselves.
pub use io_uring;

pub use ack::{ACK_LEN, ACK_MAGIC, ACK_VERSION, Ack, AckError};
pub use detector::{FailureDetector, HeartbeatConfig};
pub use error::{ChannelError, SetupError};
pub use fixed::Registration;
pub use heartbeat::{
    HEARTBEAT_LEN, HEARTBEAT_MAGIC, HEARTBEAT_VERSION, Heartbeat, HeartbeatError, Role,
};
pub use heartbeat_engine::{HeartbeatEngine, HeartbeatStats};
pub use receiver::{ReceiverEngine, ReceiverEvent, ReceiverOptions, ReceiverStats, RecvMode};
pub use sender::{SendMode, SenderEngine, SenderEvent, SenderOptions, SenderStats};

/// The `user_data` layout every engine on the I/O thread's ring shares.
pub use ioengine::user_data_tag;
pub(crate) use ioengine::{user_data, user_data_id, user_data_kind};

/// Errors a socket operation may return without anything being wrong:
/// retry the same operation.
pub(crate) fn is_transient(errno: i32) -> bool {
    matches!(errno, libc::EAGAIN | libc::EINTR)
}

/// Flags of every send on the logging connection. `MSG_WAITALL` makes the
/// kernel finish a short send itself (one CQE per send under pressure);
/// `MSG_NOSIGNAL`: a reset connection is an error code, not a SIGPIPE.
pub(crate) const SEND_FLAGS: i32 = libc::MSG_NOSIGNAL | libc::MSG_WAITALL;

/// Puts the logging connection in blocking mode with `TCP_NODELAY`:
/// io_uring then waits for the socket itself (internal poll) instead of
/// completing with `EAGAIN`, and small messages (acks) leave at once.
pub(crate) fn configure_stream(stream: &std::net::TcpStream) -> Result<(), SetupError> {
    let sock = |source| SetupError::Socket {
        what: "logging channel",
        source,
    };
    stream.set_nodelay(true).map_err(sock)?;
    stream.set_nonblocking(false).map_err(sock)
}

/// Probes the ring's opcodes and refuses a kernel without the SEND and RECV
/// both ends of the logging channel need.
pub(crate) fn probe(submitter: &io_uring::Submitter<'_>) -> Result<io_uring::Probe, SetupError> {
    use io_uring::opcode;
    let mut probe = io_uring::Probe::new();
    submitter
        .register_probe(&mut probe)
        .map_err(SetupError::Probe)?;
    if !probe.is_supported(opcode::Send::CODE) || !probe.is_supported(opcode::Recv::CODE) {
        return Err(SetupError::Unsupported {
            mode: "the logging channel",
            opcode: "IORING_OP_SEND/RECV",
        });
    }
    Ok(probe)
}
