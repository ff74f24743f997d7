//! Which data blocks are free: a bitmap rebuilt at mount from the block
//! maps (it is never written). A block freed by a truncate or an unlink is
//! only *pending* until the next commit: the committed metadata may still
//! point at it, and a crash before that commit must find its old contents.

use alloc::vec;
use alloc::vec::Vec;

pub struct Space {
    /// Bit set = in use (or a fixed block).
    used: Vec<u64>,
    blocks: u64,
    free: u64,
    pending: Vec<u32>,
}

impl Space {
    /// All of `[first_data, blocks)` free.
    pub fn new(first_data: u64, blocks: u64) -> Space {
        let mut s = Space {
            used: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            free: 0,
            pending: Vec::new(),
        };
        for b in 0..first_data.min(blocks) {
            s.set(b, true);
        }
        s.free = blocks.saturating_sub(first_data);
        s
    }

    fn get(&self, b: u64) -> bool {
        self.used[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    fn set(&mut self, b: u64, on: bool) {
        let w = &mut self.used[(b / 64) as usize];
        if on {
            *w |= 1 << (b % 64);
        } else {
            *w &= !(1 << (b % 64));
        }
    }

    /// Marks a block of the committed metadata as used; false if it already
    /// was (two files claim it: the metadata is damaged).
    pub fn claim(&mut self, b: u32) -> bool {
        let b = u64::from(b);
        if b >= self.blocks || self.get(b) {
            return false;
        }
        self.set(b, true);
        self.free -= 1;
        true
    }

    /// A free block, the first at or after `hint` (so a growing file stays
    /// contiguous), wrapping around.
    pub fn alloc(&mut self, hint: u64) -> Option<u32> {
        if self.free == 0 {
            return None;
        }
        let start = if hint < self.blocks { hint } else { 0 };
        let b = self
            .find_from(start, self.blocks)
            .or_else(|| self.find_from(0, start))?;
        self.set(b, true);
        self.free -= 1;
        Some(b as u32)
    }

    fn find_from(&self, from: u64, to: u64) -> Option<u64> {
        let mut b = from;
        while b < to {
            let w = self.used[(b / 64) as usize] | ((1u64 << (b % 64)) - 1);
            if w != u64::MAX {
                let hit = (b / 64) * 64 + u64::from(w.trailing_ones());
                return (hit < to).then_some(hit);
            }
            b = (b / 64 + 1) * 64;
        }
        None
    }

    /// Frees `b` once the next commit is durable.
    pub fn release_later(&mut self, b: u32) {
        if b != 0 {
            self.pending.push(b);
        }
    }

    /// The commit that no longer names the pending blocks is durable.
    pub fn committed(&mut self) {
        for b in core::mem::take(&mut self.pending) {
            let b = u64::from(b);
            if b < self.blocks && self.get(b) {
                self.set(b, false);
                self.free += 1;
            }
        }
    }

    /// Free blocks (not counting pending ones).
    pub fn free(&self) -> u64 {
        self.free
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_is_contiguous_wraps_and_frees_only_after_a_commit() {
        let mut s = Space::new(10, 200);
        assert_eq!(s.free(), 190);
        assert_eq!(s.alloc(0), Some(10));
        assert_eq!(s.alloc(11), Some(11));
        assert!(s.claim(70));
        assert!(!s.claim(70), "claimed twice");
        assert!(!s.claim(5), "a fixed block");
        assert_eq!(s.alloc(70), Some(71));
        assert_eq!(s.alloc(199), Some(199));
        assert_eq!(s.alloc(199), Some(12), "wraps around");
        s.release_later(10);
        assert_eq!(s.alloc(0), Some(13), "pending blocks stay in use");
        s.committed();
        assert_eq!(s.alloc(0), Some(10));
        let mut full = Space::new(1, 3);
        assert!(full.alloc(0).is_some() && full.alloc(0).is_some());
        assert_eq!(full.alloc(0), None);
    }
}
