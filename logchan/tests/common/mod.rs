//! Shared test helpers: a deterministic RNG, one sample entry of every kind,
//! and a reference encoder for whole streams.
#![allow(dead_code)]

pub mod chan;

use logchan::{
    EndReason, Entry, ExitKind, GuestIdentity, OutputKind, StreamHeader, encode_into, encoded_len,
};

/// xorshift64*: deterministic, seedable, no dependency.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

pub const FRAME: [u8; 60] = [0xab; 60];
pub const SECTOR: [u8; 512] = [0x5a; 512];

/// One entry of every kind (and the edge shapes of the variable ones).
pub fn samples() -> Vec<Entry<'static>> {
    let mut regs = [0u64; logchan::DIGEST_REGS];
    for (i, r) in regs.iter_mut().enumerate() {
        *r = 0x1111_1111_1111_1111u64.wrapping_mul(i as u64 + 1);
    }
    vec![
        Entry::Sync {
            flags: 3,
            events: 0x8000_0001,
            now_ns: 123_456_789_012,
            deadline_ns: 123_456_799_012,
        },
        Entry::Boot {
            config: b"mem=256 cmdline=workload=kv",
        },
        Entry::NetRx { frame: &FRAME },
        Entry::NetRx { frame: &[] },
        Entry::BlkDone {
            id: 7,
            status: 0,
            data: &SECTOR,
        },
        Entry::BlkDone {
            id: 65535,
            status: 2,
            data: &[],
        },
        Entry::Output {
            what: OutputKind::NetFrame,
            len: 1514,
            hash: 0xdead_beef_cafe_f00d,
        },
        Entry::Output {
            what: OutputKind::DiskWrite,
            len: 4096,
            hash: 1,
        },
        Entry::Digest {
            regs,
            output_hash: 42,
            mem_hash: 0,
        },
        Entry::KeepAlive,
        Entry::End {
            reason: EndReason::GuestExit,
            status: -1,
        },
        Entry::End {
            reason: EndReason::Error,
            status: 17,
        },
    ]
}

pub fn exit_kind_for(i: usize) -> ExitKind {
    [
        ExitKind::None,
        ExitKind::SyncPort,
        ExitKind::PioOut,
        ExitKind::PioIn,
        ExitKind::MmioRead,
        ExitKind::MmioWrite,
    ][i % 6]
}

pub fn encode(seq: u64, exit_index: u64, exit_kind: ExitKind, e: &Entry<'_>) -> Vec<u8> {
    let mut v = vec![0xee; encoded_len(e)];
    let n = encode_into(&mut v, seq, exit_index, exit_kind, e).expect("encodes");
    assert_eq!(n, v.len());
    v
}

pub fn header() -> StreamHeader {
    StreamHeader::new(
        GuestIdentity {
            kernel_hash: 0x0123_4567_89ab_cdef,
            boot_hash: 0xfeed_face,
            mem_size: 64 << 20,
        },
        logchan::header::flags::READ_DATA_LOGGED,
        0,
    )
}

/// A whole stream: header, then `entries` with seqs 1.. and exit index = 2*seq.
/// Returns the bytes and the offset of every entry.
pub fn stream(entries: &[Entry<'_>]) -> (Vec<u8>, Vec<usize>) {
    let mut out = header().encode().to_vec();
    let mut offs = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        offs.push(out.len());
        let seq = i as u64 + 1;
        out.extend(encode(seq, 2 * seq, exit_kind_for(i), e));
    }
    (out, offs)
}

/// A pseudo-random entry borrowing from `pool` (a large random byte pool).
pub fn random_entry<'a>(rng: &mut Rng, pool: &'a [u8], max_blob: usize) -> Entry<'a> {
    let blob = |rng: &mut Rng| {
        let n = rng.below(max_blob + 1);
        let start = rng.below(pool.len() - n + 1);
        &pool[start..start + n]
    };
    match rng.below(8) {
        0 => Entry::Sync {
            flags: rng.next_u64() as u32,
            events: rng.next_u64() as u32,
            now_ns: rng.next_u64(),
            deadline_ns: rng.next_u64(),
        },
        1 => Entry::NetRx { frame: blob(rng) },
        2 => Entry::BlkDone {
            id: rng.next_u64() as u16,
            status: rng.next_u64() as u8,
            data: blob(rng),
        },
        3 => Entry::Boot { config: blob(rng) },
        4 => Entry::Output {
            what: OutputKind::NetFrame,
            len: rng.next_u64() as u32,
            hash: rng.next_u64(),
        },
        5 => Entry::Digest {
            regs: [rng.next_u64(); logchan::DIGEST_REGS],
            output_hash: rng.next_u64(),
            mem_hash: rng.next_u64(),
        },
        6 => Entry::KeepAlive,
        _ => Entry::End {
            reason: EndReason::HostStop,
            status: rng.next_u64() as i32,
        },
    }
}
