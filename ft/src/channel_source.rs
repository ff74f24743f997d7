//! The backup's log source: verified stream bytes the I/O thread received,
//! handed to the replaying vCPU thread through an SPSC ring. The replay
//! never runs past what has arrived: with nothing new it waits here.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lockstep_vmm::dataplane::shared::{VmShared, wait_until};
use lockstep_vmm::replay::cursor::{ChunkSource, SourceError};

use crate::shared::FtShared;

/// How long the waiting vCPU spins before it parks.
const SPIN: Duration = Duration::from_micros(20);
/// How often a starved replay looks for new log data. The I/O thread does
/// not wake it (that would cost the I/O thread a cross-CPU wake-up per
/// chunk); a backup only has to keep up, not to be early.
const POLL: Duration = Duration::from_millis(1);

/// The stream as the I/O thread hands it on: the header (re-encoded) as
/// the first chunk, then runs of whole, verified entries.
pub struct ChannelChunks {
    rx: rtrb::Consumer<Vec<u8>>,
    ft: Arc<FtShared>,
    shared: Arc<VmShared>,
}

impl ChannelChunks {
    pub fn new(rx: rtrb::Consumer<Vec<u8>>, ft: Arc<FtShared>, shared: Arc<VmShared>) -> Self {
        ChannelChunks { rx, ft, shared }
    }
}

impl ChunkSource for ChannelChunks {
    fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, SourceError> {
        loop {
            if let Ok(chunk) = self.rx.pop() {
                return Ok(Some(chunk));
            }
            // Everything received has been taken: the stream ends here if
            // the backup is going live or the primary ended the run.
            if FtShared::flag(&self.ft.go_live) || FtShared::flag(&self.ft.stream_ended) {
                return Ok(None);
            }
            if self.shared.forced() {
                return Err(SourceError::Stopping);
            }
            let (rx, ft, shared) = (&self.rx, &self.ft, &self.shared);
            wait_until(Instant::now() + POLL, SPIN, || {
                !rx.is_empty()
                    || shared.forced()
                    || FtShared::flag(&ft.go_live)
                    || FtShared::flag(&ft.stream_ended)
            });
        }
    }
}
