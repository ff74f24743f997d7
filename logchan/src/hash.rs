//! The hashes both sides of an FT pair compute the same way: identity hashes
//! for the stream header, output hashes for divergence checks, and a memory
//! hash for digests. All are xxh3-64 (fast, good dispersion; not a MAC: the
//! log is trusted, the hashes only catch divergence and mismatched setups).

use xxhash_rust::xxh3::{xxh3_64, xxh3_64_with_seed};

/// Hash of a blob whose identity matters (guest kernel ELF, boot/device
/// configuration): goes into [`crate::GuestIdentity`].
pub fn content_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Hash of one output the guest produced (a frame, a disk write's data):
/// goes into an `Output` entry and into [`RunningHash`].
pub fn output_hash(bytes: &[u8]) -> u64 {
    xxh3_64(bytes)
}

/// Hash of a guest memory region (whole-region xxh3; ~10+ GB/s, so a digest
/// of a few hundred MiB costs tens of ms and is taken only now and then).
pub fn mem_hash(mem: &[u8]) -> u64 {
    xxh3_64(mem)
}

/// Order-sensitive fold of output hashes: after the same outputs in the same
/// order both sides hold the same value (`Digest::output_hash`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunningHash {
    value: u64,
    count: u64,
}

impl RunningHash {
    pub fn new() -> Self {
        Self::default()
    }

    /// Folds in one output's hash (from [`output_hash`]).
    pub fn push(&mut self, hash: u64) {
        // The previous value seeds the next hash: order matters, and a fold
        // of n hashes costs n short xxh3 calls.
        self.value = xxh3_64_with_seed(&hash.to_le_bytes(), self.value);
        self.count += 1;
    }

    /// Hashes `bytes`, folds the hash in and returns it (for the `Output`
    /// entry of the same output).
    pub fn push_output(&mut self, bytes: &[u8]) -> u64 {
        let h = output_hash(bytes);
        self.push(h);
        h
    }

    /// The fold so far (0 before any output).
    pub fn value(&self) -> u64 {
        self.value
    }

    /// Outputs folded in so far.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// The checksum of entries and stream headers (CRC-32C, hardware-assisted
/// where the CPU has SSE4.2).
pub fn checksum(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}
