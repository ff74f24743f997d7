//! Go-live (the paper's §2.3): the backup becomes the primary. The whole
//! hand-over, in order:
//!
//! 1. the I/O thread declares the primary dead (`failure`), and the main
//!    thread wins the arbiter for the pair's epoch (`supervisor`,
//!    `arbiter`); it raises `FtShared::go_live`;
//! 2. the replay consumes every entry received (`channel_source` ends the
//!    stream once nothing more is there), and at the sync exit where the
//!    log runs out [`take_over`] runs on the vCPU thread:
//! 3. the virtual clock continues from the last logged time;
//! 4. the I/O thread is told to let outputs out ([`outputs_become_real`],
//!    through `ToIo::GoLive`, in order with the frames behind it);
//! 5. a gratuitous ARP moves the guest's address to this host;
//! 6. frames the dead primary may not have sent are sent again, and disk
//!    requests whose completions never reached the log are reissued, in the
//!    order the guest issued them;
//! 7. the live devices serve the exit, and every exit after it.

use std::net::Ipv4Addr;
use std::sync::Arc;

use lockstep_status::Role;
use lockstep_vmm::dataplane::io_thread::{IoChannels, ToIo};
use lockstep_vmm::dataplane::live::{LiveError, LiveIo};
use lockstep_vmm::dataplane::plane::Dataplane;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::devices::clock::VirtualClock;
use lockstep_vmm::replay::replayer::ReplayIo;

/// What the backup knows about the guest's address, for the gratuitous ARP.
#[derive(Clone, Copy, Debug)]
pub struct Announce {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
}

/// The I/O thread's part (step 4): outputs are no longer dropped, and
/// received frames go to the guest.
pub fn outputs_become_real(dp: &mut Dataplane<'_>) {
    *dp.deliver_rx = true;
    dp.set_drop_outputs(false);
}

/// The vCPU thread's part (steps 3–6), at sync exit `exit` where the log
/// reached the backup's cut. `primary_released` is the last release
/// watermark the primary announced (in its heartbeats): frames tagged above
/// it may not have left the primary, and are sent again (TCP drops a
/// duplicate); every other frame did leave, or is lost like any packet.
pub fn take_over(
    replay: ReplayIo,
    mut io: IoChannels,
    shared: Arc<VmShared>,
    announce: Option<Announce>,
    primary_released: u64,
    exit: u64,
) -> Result<LiveIo, LiveError> {
    let parts = replay.into_live_parts();
    let mut frames = parts.recent.unsent(primary_released);
    let reissued = parts.inflight.len();
    // Said before the first output, so that whoever reads the log knows
    // everything this side sent came after it.
    tracing::info!(
        exit,
        "going live: sending {} frames again, reissuing {reissued} disk requests",
        frames.len() + parts.current.frames.len()
    );
    // From here the I/O thread delivers received frames and lets outputs
    // out; the guest's address moves to this host first.
    let mut sent = io.send(ToIo::GoLive);
    if let Some(a) = announce {
        sent &= io.send(ToIo::Tx {
            frame: netio::gratuitous_arp(a.mac, a.ip),
            seq: 0,
        });
    }
    if !sent {
        return Err(LiveError::IoThreadGone);
    }
    let mut live = LiveIo::new(shared.clone(), parts.devices, Some(io));
    live.clock = VirtualClock::starting_at(parts.last_now_ns);
    frames.extend(parts.current.frames);
    let mut requests = parts.inflight;
    requests.extend(parts.current.requests);
    live.queue_outputs(frames, requests);
    live.queue_events(parts.events);
    shared.status.set_role(Role::PrimaryAlone);
    Ok(live)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use lockstep_vmm::devices::virtio::Devices;
    use lockstep_vmm::replay::cursor::{ChunkSource, LogCursor, SourceError};
    use logchan::{GuestIdentity, StreamHeader};

    use super::*;

    /// A log that is only its header: the backup replayed nothing yet.
    struct Chunks(VecDeque<Vec<u8>>);

    impl ChunkSource for Chunks {
        fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
            Ok(self.0.pop_front())
        }
    }

    fn replay() -> ReplayIo {
        let id = GuestIdentity {
            kernel_hash: 1,
            boot_hash: 2,
            mem_size: 4 << 20,
        };
        let header = StreamHeader::new(id, 0, 1).encode().to_vec();
        let cursor = LogCursor::new(Box::new(Chunks(VecDeque::from([header])))).unwrap();
        ReplayIo::new(Devices::new(None, None), cursor, None)
    }

    #[test]
    fn going_live_lets_outputs_out_then_announces_the_guest_first() {
        let (io, mut to_io, _from_io) = IoChannels::detached(16).unwrap();
        let shared = Arc::new(VmShared::default());
        let announce = Announce {
            mac: [0x52, 0x54, 0, 1, 2, 3],
            ip: Ipv4Addr::new(10, 77, 0, 2),
        };
        let live = take_over(replay(), io, shared.clone(), Some(announce), 0, 7).unwrap();
        assert!(
            matches!(to_io.pop(), Ok(ToIo::GoLive)),
            "the switch comes first"
        );
        match to_io.pop() {
            Ok(ToIo::Tx { frame, seq }) => {
                assert_eq!(frame, netio::gratuitous_arp(announce.mac, announce.ip));
                assert_eq!(seq, 0, "nothing of a live side waits for an ack");
            }
            _ => panic!("the gratuitous ARP follows the switch"),
        }
        assert!(to_io.pop().is_err(), "nothing to resend or reissue");
        assert_eq!(shared.status.role(), Role::PrimaryAlone);
        assert!(live.recorder.is_none(), "a backup gone live logs nothing");
    }

    #[test]
    fn without_the_io_thread_there_is_no_going_live() {
        let (io, to_io, _from_io) = IoChannels::detached(1).unwrap();
        drop(to_io);
        let announce = Announce {
            mac: [0x52, 0x54, 0, 1, 2, 3],
            ip: Ipv4Addr::new(10, 77, 0, 2),
        };
        let shared = Arc::new(VmShared::default());
        let got = take_over(replay(), io, shared, Some(announce), 0, 7);
        assert!(matches!(got, Err(LiveError::IoThreadGone)));
    }

    #[test]
    fn outputs_become_real_and_frames_reach_the_guest() {
        let mut deliver = false;
        let (mut disk, mut tap) = (None, None);
        let mut dp = Dataplane::new(&mut disk, &mut tap, &mut deliver);
        outputs_become_real(&mut dp);
        assert!(deliver);
    }
}
