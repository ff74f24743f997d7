//! The guest console: one exit writes a whole buffer (`PORT_CONSOLE`).

use std::io::Write;

use lockstep_guest_abi::{self as abi, ConsoleWrite};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::GuestError;

/// Where console output goes, and how much of it there was.
pub struct Console {
    out: Box<dyn Write + Send>,
    /// Bytes written so far.
    pub bytes: u64,
    /// Running hash of everything written, so a replay can compare output.
    pub hash: u64,
}

impl Console {
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Console {
            out,
            bytes: 0,
            hash: 0,
        }
    }

    /// Handles `out PORT_CONSOLE` with the descriptor's address in `arg`.
    pub fn write_from_guest(&mut self, mem: &GuestMemoryMmap, arg: u32) -> Result<(), GuestError> {
        let desc_addr = GuestAddress(arg as u64);
        let mut raw = [0u8; 16];
        mem.read_slice(&mut raw, desc_addr)
            .map_err(|_| GuestError::BadAddress {
                what: "console descriptor",
                addr: arg as u64,
                len: 16,
            })?;
        let desc = ConsoleWrite {
            addr: u64::from_le_bytes(raw[..8].try_into().unwrap_or_default()),
            len: u64::from_le_bytes(raw[8..].try_into().unwrap_or_default()),
        };
        if desc.len > abi::CONSOLE_MAX {
            return Err(GuestError::TooLong {
                what: "console write",
                len: desc.len,
                max: abi::CONSOLE_MAX,
            });
        }
        let mut buf = vec![0u8; desc.len as usize];
        mem.read_slice(&mut buf, GuestAddress(desc.addr))
            .map_err(|_| GuestError::BadAddress {
                what: "console buffer",
                addr: desc.addr,
                len: desc.len,
            })?;
        self.bytes += buf.len() as u64;
        self.hash = fold_hash(self.hash, &buf);
        // A console that cannot be written (closed pipe) must not stop the VM.
        if self
            .out
            .write_all(&buf)
            .and_then(|_| self.out.flush())
            .is_err()
        {
            tracing::debug!("console output dropped");
        }
        Ok(())
    }
}

/// FNV-1a over the bytes, continuing from `state`: cheap, and equal
/// outputs give equal values on both sides of a replay.
fn fold_hash(mut state: u64, bytes: &[u8]) -> u64 {
    if state == 0 {
        state = 0xcbf2_9ce4_8422_2325;
    }
    for b in bytes {
        state ^= *b as u64;
        state = state.wrapping_mul(0x100_0000_01b3);
    }
    state
}
