//! Driver-side plumbing shared by the virtio queue targets: fuzz bytes
//! become descriptors and avail ring entries in guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Bytes of guest memory the targets create.
pub const MEM: u64 = 0x10000;
/// Descriptor addresses reach a bit beyond guest memory, so buffers outside
/// it are exercised too.
const ADDR_SPAN: u64 = 0x12000;

/// The fuzz bytes, read front to back; zeros once they run out.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn byte(&mut self) -> u8 {
        let Some((b, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        *b
    }
    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.byte(), self.byte()])
    }
    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.byte(), self.byte(), self.byte(), self.byte()])
    }
}

/// Writes descriptor `i` of the table at `table` from the input.
pub fn write_desc(mem: &GuestMemoryMmap<()>, table: u64, i: u16, inp: &mut Input<'_>) {
    let addr = u64::from(inp.u32()) % ADDR_SPAN;
    // Mostly small lengths, sometimes huge ones.
    let len = match inp.byte() {
        0..=200 => u32::from(inp.u16()) % 4200,
        _ => inp.u32(),
    };
    let flags = u16::from(inp.byte()) & 0x1F;
    let next = u16::from(inp.byte());
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&addr.to_le_bytes());
    raw[8..12].copy_from_slice(&len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.to_le_bytes());
    let _ = mem.write_slice(&raw, GuestAddress(table + u64::from(i) * 16));
}

/// Publishes a fuzzed number of fuzzed heads (some outside the table) on
/// the avail ring at `avail`.
pub fn publish(mem: &GuestMemoryMmap<()>, avail: u64, size: u16, inp: &mut Input<'_>) {
    let n = u16::from(inp.byte()) % (2 * size + 2);
    let old = mem.read_obj::<u16>(GuestAddress(avail + 2)).unwrap_or(0);
    for k in 0..n {
        let head = u16::from(inp.byte()) % (size + 2);
        let slot = u64::from(old.wrapping_add(k) % size);
        let _ = mem.write_obj(head, GuestAddress(avail + 4 + slot * 2));
    }
    let _ = mem.write_obj(old.wrapping_add(n), GuestAddress(avail + 2));
}
