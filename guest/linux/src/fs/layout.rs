//! Where things are in the file system's region of the disk, and the two
//! checksummed records that say what is committed:
//!
//! ```text
//! block 0                  superblock: magic, version, blocks, meta_blocks, crc
//! blocks 1 .. 1+M          metadata slot A
//! blocks 1+M .. 1+2M       metadata slot B
//! blocks 1+2M ..           data
//! ```
//!
//! A commit writes the whole metadata (every inode, block map and
//! directory) into the slot not holding the newest commit, with a higher
//! sequence number; mount takes the valid slot with the highest one. A torn
//! commit leaves its slot invalid and the other slot, the previous commit,
//! in force.

use alloc::vec::Vec;

use lockstep_guest_services::crc32c::crc32c;

/// Bytes per block.
pub const BLOCK: usize = 4096;
/// Blocks per metadata slot (256 KiB: tens of thousands of files).
pub const META_BLOCKS: u64 = 64;
/// The first data block.
pub const FIRST_DATA: u64 = 1 + 2 * META_BLOCKS;
/// Smallest useful file system: the fixed blocks and some data.
pub const MIN_BLOCKS: u64 = FIRST_DATA + 256;

const SUPER_MAGIC: [u8; 8] = *b"LSFS\0v01";
const META_MAGIC: [u8; 8] = *b"LSFSMETA";
/// Bytes before the metadata payload: magic, seq, len, crc.
pub const META_HEADER: usize = 24;
/// Largest metadata payload a slot holds.
pub const META_MAX: usize = META_BLOCKS as usize * BLOCK - META_HEADER;

/// The superblock's contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Super {
    pub blocks: u64,
}

impl Super {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(BLOCK);
        b.extend_from_slice(&SUPER_MAGIC);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&(META_BLOCKS as u32).to_le_bytes());
        b.extend_from_slice(&self.blocks.to_le_bytes());
        let crc = crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b.resize(BLOCK, 0);
        b
    }

    /// `None` for a disk without this file system (or a torn superblock).
    pub fn decode(b: &[u8]) -> Option<Super> {
        if b.len() < 28 || b[..8] != SUPER_MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(b[24..28].try_into().ok()?);
        if crc != crc32c(&b[..24]) {
            return None;
        }
        let version = u32::from_le_bytes(b[8..12].try_into().ok()?);
        let meta = u32::from_le_bytes(b[12..16].try_into().ok()?);
        let blocks = u64::from_le_bytes(b[16..24].try_into().ok()?);
        (version == 1 && u64::from(meta) == META_BLOCKS && blocks >= MIN_BLOCKS)
            .then_some(Super { blocks })
    }
}

/// First block of metadata slot `slot` (0 or 1).
pub fn slot_start(slot: usize) -> u64 {
    1 + META_BLOCKS * slot as u64
}

/// A metadata record: header and payload, padded to whole blocks.
pub fn encode_meta(seq: u64, payload: &[u8]) -> Option<Vec<u8>> {
    if payload.len() > META_MAX {
        return None;
    }
    let mut b = Vec::with_capacity(META_HEADER + payload.len() + BLOCK);
    b.extend_from_slice(&META_MAGIC);
    b.extend_from_slice(&seq.to_le_bytes());
    b.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    b.extend_from_slice(&crc32c(payload).to_le_bytes());
    b.extend_from_slice(payload);
    b.resize(b.len().next_multiple_of(BLOCK), 0);
    Some(b)
}

/// The header of a slot's first block: (seq, payload length), if valid.
pub fn meta_header(b: &[u8]) -> Option<(u64, usize)> {
    if b.len() < META_HEADER || b[..8] != META_MAGIC {
        return None;
    }
    let seq = u64::from_le_bytes(b[8..16].try_into().ok()?);
    let len = u32::from_le_bytes(b[16..20].try_into().ok()?) as usize;
    (len <= META_MAX).then_some((seq, len))
}

/// The payload of a whole record, if its checksum holds.
pub fn meta_payload(b: &[u8]) -> Option<&[u8]> {
    let (_, len) = meta_header(b)?;
    let crc = u32::from_le_bytes(b[20..24].try_into().ok()?);
    let payload = b.get(META_HEADER..META_HEADER + len)?;
    (crc32c(payload) == crc).then_some(payload)
}

/// Blocks a record of `payload_len` bytes occupies.
pub fn meta_blocks_for(payload_len: usize) -> usize {
    (META_HEADER + payload_len).div_ceil(BLOCK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_roundtrip_and_damage_is_detected() {
        let s = Super { blocks: 10_000 };
        assert_eq!(Super::decode(&s.encode()), Some(s));
        let mut torn = s.encode();
        torn[17] ^= 1;
        assert_eq!(Super::decode(&torn), None);
        assert_eq!(Super::decode(&[0u8; BLOCK]), None);

        let rec = encode_meta(7, b"hello").unwrap();
        assert_eq!(rec.len(), BLOCK);
        assert_eq!(meta_header(&rec), Some((7, 5)));
        assert_eq!(meta_payload(&rec), Some(&b"hello"[..]));
        let mut bad = rec.clone();
        bad[META_HEADER] ^= 1;
        assert_eq!(meta_payload(&bad), None);
        assert!(encode_meta(1, &alloc::vec![0; META_MAX + 1]).is_none());
        assert_eq!(meta_blocks_for(BLOCK - META_HEADER), 1);
        assert_eq!(meta_blocks_for(BLOCK - META_HEADER + 1), 2);
    }
}
