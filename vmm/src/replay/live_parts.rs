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
    frames: std::collections::VecDeque<(u64, std::time::Instant, Vec<u8>)>,
}

impl RecentFrames {
    pub(crate) fn push(&mut self, seq: u64, frame: Vec<u8>) {
        if self.frames.len() == RECENT_FRAMES {
            self.frames.pop_front();
        }
        self.frames
            .push_back((seq, std::time::Instant::now(), frame));
    }

    /// Frames the primary cannot have sent (tag above the last ack the
    /// backup sent) or may not have sent yet (taken within `window`).
    pub fn unsent(&self, last_ack_sent: u64, window: std::time::Duration) -> Vec<Vec<u8>> {
        self.frames
            .iter()
            .filter(|(seq, at, _)| *seq > last_ack_sent || at.elapsed() < window)
            .map(|(_, _, f)| f.clone())
            .collect()
    }
}

/// What a backup going live takes over from its replay.
pub struct LiveParts {
    pub devices: Devices,
    pub last_now_ns: u64,
    /// Outputs of the exit the log ended in, not yet sent by anyone.
    pub current: Outputs,
    pub recent: RecentFrames,
    /// Disk requests whose completions never reached the log: reissued.
    pub inflight: Vec<blkio::Request>,
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn unsent_frames_are_those_past_the_last_ack_or_within_the_window() {
        let mut recent = RecentFrames::default();
        recent.push(3, vec![3]);
        recent.push(5, vec![5]);
        recent.push(8, vec![8]);
        assert_eq!(recent.unsent(5, Duration::ZERO), vec![vec![8]]);
        assert_eq!(recent.unsent(8, Duration::ZERO), Vec::<Vec<u8>>::new());
        assert_eq!(recent.unsent(8, Duration::from_secs(60)).len(), 3);
        for seq in 0..RECENT_FRAMES as u64 {
            recent.push(100 + seq, vec![0]);
        }
        assert_eq!(
            recent.unsent(0, Duration::ZERO).len(),
            RECENT_FRAMES,
            "the oldest go first"
        );
    }
}
