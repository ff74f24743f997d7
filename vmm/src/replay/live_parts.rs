//! What a backup going live takes over from its replay: the device models
//! as the log left them, the time, the outputs of the exit the log ended
//! in, the frames replayed lately (the dead primary may not have sent
//! them), and the disk requests whose completions never reached the log.

use crate::devices::virtio::{Devices, Outputs};

/// How many recent frames a replaying backup keeps for go-live.
const RECENT_FRAMES: usize = 512;

/// The frames a backup took most recently, with the seq of their `Output`
/// entries: at go-live it sends again those the dead primary may not have
/// sent (duplicates are harmless; TCP drops them).
#[derive(Default)]
pub struct RecentFrames {
    frames: std::collections::VecDeque<(u64, Vec<u8>)>,
}

impl RecentFrames {
    pub(crate) fn push(&mut self, seq: u64, frame: Vec<u8>) {
        if self.frames.len() == RECENT_FRAMES {
            self.frames.pop_front();
        }
        self.frames.push_back((seq, frame));
    }

    /// Frames the primary may not have sent: tagged above `released`, the
    /// last release watermark it announced.
    pub fn unsent(&self, released: u64) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .filter(|(seq, _)| *seq > released)
            .map(|(_, f)| f.clone())
            .collect()
    }
}

/// What a backup going live takes over from its replay.
pub struct LiveParts {
    pub devices: Devices,
    pub last_now_ns: u64,
    /// Outputs of the exit the log ended in, not yet sent by anyone.
    pub current: Outputs,
    /// Event bits that exit collected before the log ended.
    pub events: u32,
    pub recent: RecentFrames,
    /// Disk requests whose completions never reached the log: reissued.
    pub inflight: Vec<blkio::Request>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsent_frames_are_those_above_the_primarys_release_watermark() {
        let mut recent = RecentFrames::default();
        recent.push(3, vec![3]);
        recent.push(5, vec![5]);
        recent.push(8, vec![8]);
        assert_eq!(recent.unsent(5), vec![vec![8]]);
        assert_eq!(recent.unsent(8), Vec::<Vec<u8>>::new());
        assert_eq!(recent.unsent(0).len(), 3);
        for seq in 0..RECENT_FRAMES as u64 {
            recent.push(100 + seq, vec![0]);
        }
        assert_eq!(recent.unsent(0).len(), RECENT_FRAMES, "the oldest go first");
    }
}
