//! The lockstep log: what a primary records and a backup replays.
//!
//! * [`header`]: the 64-byte stream header (format version, guest identity).
//! * [`entry`] / [`decode`]: log entries — a 32-byte header (crc32c, length,
//!   seq, exit index, kind, exit kind), a payload, padding to 8 bytes.
//! * [`buffers`], [`producer`], [`consumer`]: the zero-copy producer (vCPU
//!   thread) → consumer (sender) hand-off through page-aligned buffers and an
//!   SPSC ring.
//! * [`file`]: writing a log file on a thread, reading one for replay.
//! * [`stream`]: decoding a stream that arrives in arbitrary chunks.
//! * [`hash`]: the hashes both sides compute for divergence checks.
//! * [`channel`]: the logging channel on io_uring — the primary's sender,
//!   the backup's receiver, acks, UDP heartbeats and failure detection.
//!
//! The byte layout and its rules are in `docs/log-format.md`.

pub mod buffers;
pub mod channel;
pub mod consumer;
pub mod decode;
pub mod entry;
pub mod file;
pub mod hash;
pub mod header;
mod pair;
pub mod producer;
pub mod secure;
pub mod stream;
mod wait;
mod wire;

pub use buffers::{BufferError, LogConfig, LogStats};
pub use channel::{
    Ack, ChannelError, FailureDetector, Heartbeat, HeartbeatConfig, HeartbeatEngine,
    ReceiverEngine, ReceiverEvent, ReceiverOptions, RecvMode, Registration, Role, SendMode,
    SenderEngine, SenderEvent, SenderOptions,
};
pub use consumer::{LogConsumer, ReleaseError, Segment};
pub use decode::{Corruption, DecodeError, StreamState, decode, entry_need};
pub use entry::{
    DIGEST_REGS, ENTRY_ALIGN, ENTRY_HEADER_LEN, EncodeError, EndReason, Entry, EntryHeader,
    EntryKind, ExitKind, MAX_ENTRY_LEN, MAX_PAYLOAD, OutputKind, Record, encode_into, encoded_len,
    entry_len_for_payload,
};
pub use file::{Entries, FileSink, LogFileReader, ReadError, SinkError, SinkReport};
pub use hash::{RunningHash, checksum, content_hash, mem_hash, output_hash};
pub use header::{
    FORMAT_VERSION, GuestIdentity, HeaderError, IdentityDiff, IdentityField, IdentityMismatch,
    STREAM_HEADER_LEN, STREAM_MAGIC, StreamHeader,
};
pub use pair::{log_buffers, log_buffers_with};
pub use producer::{LogProducer, ProducerError};
pub use stream::{Feed, StreamDecoder, StreamError, StreamItem};
