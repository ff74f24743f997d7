//! Drivers for the logging channel's io_uring engines and for raw TCP on
//! the same link, shared by `benches/log_channel.rs` (loopback) and
//! `lockstep-bench channel` (two network namespaces joined by a veth).
//!
//! * Streams: `NetRx` 1500 B entries (1536 B encoded, one published per
//!   "exit") appended by a producer, shipped by a [`SenderEngine`] on its
//!   own io_uring thread, verified and acked by a [`ReceiverEngine`] on
//!   another, until the last seq is acked ([`channel_stream`]); vs. a plain
//!   `write_all`/`read` loop of as many bytes ([`raw_stream`]).
//! * Round trips: publish one `Sync` entry → its ack seen by the producer
//!   ([`channel_round_trips`]); vs. a 40-byte TCP ping-pong
//!   ([`raw_round_trips`]).
//!
//! Where the two ends run is a [`Hosts`]: side A (the primary: producer,
//! sender, raw writer, ping client) and side B (the backup: receiver, raw
//! reader, pong server, and the listening socket). Each side's sockets are
//! made on, and its threads started from, a thread of that side, so with
//! [`Side::Netns`] everything of A lives in A's network namespace and
//! everything of B in B's.
//!
//! The engine threads run the VMM's I/O-thread pattern (`EngineLoop`):
//! poll the ring, spin briefly (yielding) when idle, then sleep in
//! `io_uring_enter` with an eventfd read armed that the producer rings after
//! `publish` only if the thread sleeps (one load otherwise).

mod cpu;
mod engine;
mod hosts;
mod round_trip;
mod sealing;
mod stream;

pub use cpu::ThreadCpu;
pub use engine::*;
pub use hosts::*;
pub use round_trip::*;
pub use sealing::*;
pub use stream::*;

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::hint::black_box;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hdrhistogram::Histogram;
use logchan::channel::io_uring::{IoUring, cqueue, opcode, squeue, types};
use logchan::channel::{
    ReceiverEngine, ReceiverEvent, ReceiverOptions, ReceiverStats, Registration, SendMode,
    SenderEngine, SenderEvent, SenderOptions, SenderStats,
};
use logchan::secure::{PairKey, RecordLayer};
use logchan::{
    Entry, ExitKind, GuestIdentity, LogConfig, LogProducer, LogStats, StreamHeader, encode_into,
    encoded_len, log_buffers_with,
};

/// The engines' tag in `user_data`.
const TAG_CHAN: u8 = 1;
/// The doorbell read's tag.
const TAG_WAKE: u8 = 0xff;
/// How long an engine thread polls with nothing to do before it sleeps.
pub const IDLE_SPIN: Duration = Duration::from_micros(50);
/// Submission queue size of an engine thread's ring.
const RING_ENTRIES: u32 = 256;
/// The payload of every streamed `NetRx` entry.
pub const FRAME: [u8; 1500] = [0x5a; 1500];
/// Bytes of a raw ping (and pong): an ack's size.
pub const PING: usize = 40;
/// How long one side waits for the other to show up (connect, ready).
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a stream or round trip may take before the run is abandoned.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);
/// Reads of the raw receiver.
const RAW_READ: usize = 256 << 10;

/// The streamed entry: one received 1500-byte frame.
pub fn netrx() -> Entry<'static> {
    Entry::NetRx { frame: &FRAME }
}

/// The round-trip entry: a sync point, as an output waits for.
pub fn sync_entry() -> Entry<'static> {
    Entry::Sync {
        flags: 1,
        events: 0,
        now_ns: 1,
        deadline_ns: 0,
    }
}

/// Encoded size of [`netrx`].
pub fn netrx_len() -> u64 {
    encoded_len(&netrx()) as u64
}

/// `total` rounded down to whole [`netrx`] entries: the bytes a stream of
/// about `total` bytes carries.
pub fn stream_bytes(total: u64) -> u64 {
    total / netrx_len() * netrx_len()
}

/// About `len` bytes of encoded [`netrx`] entries (whole ones): what the raw
/// stream writes, so both carry the same bytes.
pub fn encoded_chunk(len: usize) -> anyhow::Result<Vec<u8>> {
    let e = netrx();
    let entry_len = encoded_len(&e);
    let mut chunk = vec![0u8; len / entry_len * entry_len];
    for (i, out) in chunk.chunks_exact_mut(entry_len).enumerate() {
        let seq = i as u64 + 1;
        encode_into(out, seq, seq, ExitKind::SyncPort, &e).context("encoding an entry")?;
    }
    Ok(chunk)
}

/// Joins `h`, turning a panic into an error.
fn join<T>(h: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    match h.join() {
        Ok(r) => r.with_context(|| what.to_string()),
        Err(_) => bail!("{what}: thread panicked"),
    }
}
