//! IO serialization: which requests may not run at the same time.
//!
//! The paper's rule: racing IOs to the same sectors are serialized. If two
//! requests in flight overlap and at least one writes, the disk may execute
//! them in either order (io_uring and the block layer promise nothing), and
//! the primary and a backup re-executing them could disagree about the data.
//! So the later one (in take order, which the log records) starts only after
//! the earlier one has completed. Flushes are barriers for writes: a flush
//! waits for every earlier write and every later write waits for it.

/// What a request touches, for conflict checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Footprint {
    /// Reads sectors `[start, end)`.
    Read(u64, u64),
    /// Writes sectors `[start, end)`.
    Write(u64, u64),
    /// Flushes the whole disk.
    Flush,
    /// Touches nothing (a request that fails without IO).
    None,
}

impl Footprint {
    /// True if a request with footprint `later` must wait for an unfinished
    /// earlier request with footprint `self`.
    pub fn blocks(self, later: Footprint) -> bool {
        use Footprint::*;
        match (self, later) {
            (None, _) | (_, None) => false,
            (Read(..), Read(..)) => false,
            (Flush, Read(..)) | (Read(..), Flush) => false,
            (Flush, _) | (_, Flush) => true,
            (Read(a, b) | Write(a, b), Read(c, d) | Write(c, d)) => a < d && c < b,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Footprint::*;

    #[test]
    fn overlap_with_a_write_blocks() {
        assert!(Write(0, 8).blocks(Read(7, 9)));
        assert!(Read(0, 8).blocks(Write(7, 9)));
        assert!(Write(0, 8).blocks(Write(0, 8)));
        assert!(!Write(0, 8).blocks(Read(8, 9)));
        assert!(!Read(0, 8).blocks(Read(0, 8)));
        assert!(Flush.blocks(Write(100, 101)));
        assert!(Write(100, 101).blocks(Flush));
        assert!(!Flush.blocks(Read(0, 1)));
        assert!(!None.blocks(Write(0, 1)));
        assert!(!Write(0, 1).blocks(None));
    }
}
