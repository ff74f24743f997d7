//! The join stream in order (docs/join.md): `Hello`, pre-copy `Pages` and
//! `Round` messages while the guest runs, the final `Pages` taken at the
//! pause, `State`, `Done`. The sender side drives [`PreCopy`] and asks for
//! the pause through a closure (the VMM stops the vCPU at an exit
//! boundary); the receiver checks each message's place in the order and
//! writes pages into the joiner's memory.

use std::time::{Duration, Instant};

use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::Devices;

use super::memory::{PreCopy, apply_pages};
use super::wire::{MessageSink, MessageSource, Reader, Writer, kind};
use super::{Hello, JoinStats, MachineState, SnapshotError};

/// When pre-copy stops and the pause begins.
#[derive(Clone, Copy, Debug)]
pub struct CopyOptions {
    /// A round that finds at most this many dirty pages is the last.
    pub small_enough: u64,
    /// Rounds at most (the first, whole-memory one included).
    pub max_rounds: u32,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            small_enough: 1024,
            max_rounds: 30,
        }
    }
}

/// What the VMM hands back from the pause.
pub struct Frozen {
    /// `Pages` bodies of the final pass, copied while the guest stood.
    pub pages: Vec<Vec<u8>>,
    pub final_pages: u64,
    pub state: MachineState,
    /// How long the guest stood still.
    pub pause: Duration,
    /// The copy, returned (dirty logging is turned off when it drops).
    pub precopy: PreCopy,
}

/// Sends a live clone: pre-copy rounds until the dirty set is small (or
/// stops shrinking, or `max_rounds`), then `pause` (which stops the guest
/// at an exit boundary, runs the final pass and captures the machine),
/// then the final pages, the state and `Done`.
pub fn send_clone(
    sink: &mut dyn MessageSink,
    mut precopy: PreCopy,
    hello: &Hello,
    opts: CopyOptions,
    progress: &mut dyn FnMut(u32, u64),
    pause: impl FnOnce(PreCopy) -> Result<Frozen, SnapshotError>,
) -> Result<JoinStats, SnapshotError> {
    let started = Instant::now();
    sink.send(kind::HELLO, &hello.encode())?;
    let mut last = u64::MAX;
    loop {
        let sent = precopy.round(sink)?;
        let rounds = precopy.rounds;
        tracing::debug!("join: round {rounds}: {sent} pages");
        // The guest runs on while the joiner catches up; the next round
        // (or the pause) sends what it wrote meanwhile into an empty pipe.
        sink.wait_applied(rounds)?;
        progress(rounds, precopy.pages_sent);
        if rounds >= 2 && (sent <= opts.small_enough || rounds >= opts.max_rounds || sent >= last) {
            break;
        }
        last = sent;
    }
    let rounds = precopy.rounds;
    let frozen = pause(precopy)?;
    for body in &frozen.pages {
        sink.send(kind::PAGES, body)?;
    }
    sink.send(kind::STATE, &frozen.state.encode())?;
    let stats = JoinStats {
        rounds,
        pages: frozen.precopy.pages_sent,
        final_pages: frozen.final_pages,
        pause_us: frozen.pause.as_micros() as u64,
        total_ms: started.elapsed().as_millis() as u64,
        missed: frozen.precopy.missed,
    };
    let mut w = Writer::default();
    w.u64(stats.pages)
        .u32(stats.rounds)
        .u32(0)
        .u64(stats.pause_us)
        .u64(stats.final_pages);
    sink.send(kind::DONE, &w.buf)?;
    Ok(stats)
}

/// Tells the joiner the copy is given up (best effort).
pub fn send_abort(sink: &mut dyn MessageSink, why: &str) {
    let why = &why.as_bytes()[..why.len().min(1024)];
    let _ = sink.send(kind::ABORT, why);
}

/// Receives a live clone into `mem` (the joiner's fresh VM of the same
/// configuration, checked against `ours` before any page is written);
/// returns the machine state to restore and what the primary reported.
pub fn receive_clone(
    src: &mut dyn MessageSource,
    mem: &GuestMemoryMmap,
    ours: &Hello,
) -> Result<(MachineState, JoinStats), SnapshotError> {
    let order = |what: &str| SnapshotError::Protocol(format!("{what} out of order"));
    let (k, body) = src.recv()?;
    match k {
        kind::HELLO => Hello::decode(&body)?.check(ours)?,
        kind::ABORT => return Err(aborted(&body)),
        _ => return Err(order("a message before Hello")),
    }
    let mut pages = 0u64;
    let mut state = None;
    loop {
        let (k, body) = src.recv()?;
        match k {
            kind::PAGES if state.is_none() => {
                pages = pages.saturating_add(apply_pages(mem, &body)?);
            }
            kind::ROUND if state.is_none() => {
                let mut r = Reader::new(&body, "Round");
                let (round, _, sent) = (r.u32()?, r.u32()?, r.u64()?);
                r.finish()?;
                tracing::debug!("join: round {round} received ({sent} pages)");
                // Every page before it is in memory: say so.
                let mut w = Writer::default();
                w.u32(round).u32(0);
                src.reply(kind::APPLIED, &w.buf)?;
            }
            kind::STATE if state.is_none() => state = Some(MachineState::decode(&body)?),
            kind::DONE => {
                let state = state.ok_or_else(|| order("Done before State"))?;
                let mut r = Reader::new(&body, "Done");
                let stats = JoinStats {
                    pages: r.u64()?,
                    rounds: r.u32()?,
                    pause_us: {
                        r.reserved(4)?;
                        r.u64()?
                    },
                    final_pages: r.u64()?,
                    total_ms: 0,
                    missed: 0,
                };
                r.finish()?;
                if stats.pages != pages {
                    return Err(SnapshotError::Protocol(format!(
                        "{pages} pages received, the primary sent {}",
                        stats.pages
                    )));
                }
                return Ok((state, stats));
            }
            kind::ABORT => return Err(aborted(&body)),
            kind::HELLO => return Err(order("a second Hello")),
            _ => return Err(order("a message after State")),
        }
    }
}

fn aborted(body: &[u8]) -> SnapshotError {
    let text: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    SnapshotError::Aborted(text)
}

/// Puts the joiner's vCPU and devices in the received state (memory is
/// already in place).
pub fn restore(
    state: &MachineState,
    vcpu: &VcpuFd,
    devices: &mut Devices,
    mem: &GuestMemoryMmap,
) -> Result<(), SnapshotError> {
    state.devices.restore(devices, mem)?;
    state.vcpu.restore(vcpu)
}
