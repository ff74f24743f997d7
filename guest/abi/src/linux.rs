//! The Linux personality's part of the ABI (`docs/linux-personality.md`):
//! where the VMM's `SYSCALL` stub hands a system call to the guest, and the
//! app area at the start of the disk that carries the program to run.
//!
//! The stub is three ring-0 instructions (ring 0 is emulated here at
//! ~0.5 µs an instruction): save the app's RSP in [`SYSCALL_RSP_SLOT`],
//! point RSP at the frame at [`SYSCALL_FRAME_ADDR`], `iretq`. The frame,
//! filled by the guest, names the personality's ring-3 entry point and
//! stack, so the system call continues at ring 3 with the app's registers
//! untouched (RCX = return RIP, R11 = RFLAGS, as `SYSCALL` left them).

use crate::{BOOT_PARAMS_ADDR, STUBS_ADDR};

/// Where LSTAR points: the ring-0 stub, in the supervisor-only stubs page
/// after the fault stubs.
pub const SYSCALL_STUB_ADDR: u64 = STUBS_ADDR + 0x800;
/// The `iretq` frame the stub loads (RIP, CS, RFLAGS, RSP, SS), in the boot
/// parameters page after `BootParams`. Zero until the guest fills it: a
/// `SYSCALL` before that faults and is reported like any fault.
pub const SYSCALL_FRAME_ADDR: u64 = BOOT_PARAMS_ADDR + 0x800;
/// The app's RSP at its `SYSCALL`, written by the stub.
pub const SYSCALL_RSP_SLOT: u64 = SYSCALL_FRAME_ADDR + 0x30;

/// The ring-0 stub's machine code, at [`SYSCALL_STUB_ADDR`].
pub const fn syscall_stub() -> [u8; 17] {
    let slot = (SYSCALL_RSP_SLOT as u32).to_le_bytes();
    let frame = (SYSCALL_FRAME_ADDR as u32).to_le_bytes();
    [
        // mov [SYSCALL_RSP_SLOT], rsp
        0x48, 0x89, 0x24, 0x25, slot[0], slot[1], slot[2], slot[3],
        // mov rsp, SYSCALL_FRAME_ADDR
        0x48, 0xc7, 0xc4, frame[0], frame[1], frame[2], frame[3], // iretq
        0x48, 0xcf,
    ]
}

/// IA32_STAR: SYSCALL enters with CS = 0x10 (SS = 0x18); SYSRET (unused:
/// it faults in this host's emulator) would return to CS 0x2b, SS 0x23.
pub const MSR_STAR: u32 = 0xc000_0081;
/// IA32_LSTAR: the 64-bit SYSCALL target.
pub const MSR_LSTAR: u32 = 0xc000_0082;
/// IA32_FMASK: RFLAGS bits SYSCALL clears.
pub const MSR_FMASK: u32 = 0xc000_0084;
/// STAR value for the ABI's selectors.
pub const STAR_VALUE: u64 = (0x1b << 48) | (0x10 << 32);
/// TF, IF, DF, NT, AC: the stub runs with none of them.
pub const FMASK_VALUE: u64 = 0x4_7700;
/// CR4.FSGSBASE: lets ring 3 set its own FS base (the app's thread pointer)
/// with `WRFSBASE` on hosts with hardware virtualization; on this host's
/// software virtualizer ring 3 runs with the host's CR4 and `WRFSBASE`
/// works either way (`../shared/probes`).
pub const CR4_FSGSBASE: u64 = 1 << 16;

// ---------------------------------------------------------------------------
// The app area: the first APP_AREA_BYTES of the disk in app mode.
// ---------------------------------------------------------------------------

/// `AppHeader::magic`.
pub const APP_MAGIC: [u8; 8] = *b"LSAPP\0v1";
/// Bytes at the start of the disk reserved for the app: header, then the
/// loadable prefix of the ELF file. The personality's file system starts
/// right after, at the same place whatever the app's size, so a new build
/// of the app keeps the data.
pub const APP_AREA_BYTES: u64 = 32 << 20;
/// The header block; the ELF bytes start here.
pub const APP_HEADER_BYTES: usize = 4096;
/// Largest ELF prefix the area holds.
pub const APP_ELF_MAX: u64 = APP_AREA_BYTES - APP_HEADER_BYTES as u64;
/// Bytes of the fixed header fields; the strings follow.
pub const APP_FIXED_BYTES: usize = 40;
/// Room for argv and envp strings (NUL-terminated, argv first).
pub const APP_STRINGS_MAX: usize = APP_HEADER_BYTES - APP_FIXED_BYTES;

/// The app header, little-endian at offset 0 of the disk:
/// `magic [8], header_crc u32, elf_crc u32, elf_len u64, argc u32, envc u32,
/// strings_len u32, reserved u32`, then `strings_len` bytes of
/// NUL-terminated strings. `header_crc` is the CRC-32C of the whole header
/// block with that field zero; `elf_crc` that of the `elf_len` ELF bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppHeader {
    pub header_crc: u32,
    pub elf_crc: u32,
    pub elf_len: u64,
    pub argc: u32,
    pub envc: u32,
    pub strings_len: u32,
}

/// Why an app header cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppHeaderError {
    /// No app on this disk.
    Magic,
    /// The strings do not fit or do not match the counts.
    Strings,
    /// The ELF would not fit in the app area.
    ElfLen,
}

impl AppHeader {
    /// Reads the fixed fields of a header block (the CRC is checked by the
    /// caller, which has a CRC-32C).
    pub fn decode(b: &[u8; APP_HEADER_BYTES]) -> Result<AppHeader, AppHeaderError> {
        if b[..8] != APP_MAGIC {
            return Err(AppHeaderError::Magic);
        }
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let mut l = [0u8; 8];
        l.copy_from_slice(&b[16..24]);
        let h = AppHeader {
            header_crc: u32_at(8),
            elf_crc: u32_at(12),
            elf_len: u64::from_le_bytes(l),
            argc: u32_at(24),
            envc: u32_at(28),
            strings_len: u32_at(32),
        };
        if h.elf_len == 0 || h.elf_len > APP_ELF_MAX {
            return Err(AppHeaderError::ElfLen);
        }
        let strings = h.strings(b).ok_or(AppHeaderError::Strings)?;
        let nul = strings.iter().filter(|c| **c == 0).count();
        let want = h.argc as usize + h.envc as usize;
        if h.argc == 0 || nul != want || strings.last().is_some_and(|c| *c != 0) {
            return Err(AppHeaderError::Strings);
        }
        Ok(h)
    }

    /// The string bytes of `block` (argv, then envp, each NUL-terminated).
    pub fn strings<'a>(&self, block: &'a [u8; APP_HEADER_BYTES]) -> Option<&'a [u8]> {
        let n = self.strings_len as usize;
        (n <= APP_STRINGS_MAX).then(|| &block[APP_FIXED_BYTES..APP_FIXED_BYTES + n])
    }

    /// Writes the fixed fields into `b` (the strings are the caller's).
    pub fn encode(&self, b: &mut [u8; APP_HEADER_BYTES]) {
        b[..8].copy_from_slice(&APP_MAGIC);
        b[8..12].copy_from_slice(&self.header_crc.to_le_bytes());
        b[12..16].copy_from_slice(&self.elf_crc.to_le_bytes());
        b[16..24].copy_from_slice(&self.elf_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.argc.to_le_bytes());
        b[28..32].copy_from_slice(&self.envc.to_le_bytes());
        b[32..36].copy_from_slice(&self.strings_len.to_le_bytes());
        b[36..40].fill(0);
    }
}

const _: () = assert!(core::mem::size_of::<crate::BootParams>() <= 0x800);
const _: () = assert!(SYSCALL_RSP_SLOT + 8 <= BOOT_PARAMS_ADDR + 0x1000);
const _: () = assert!(SYSCALL_STUB_ADDR + 17 <= STUBS_ADDR + 0x1000);

#[cfg(test)]
mod tests {
    use super::*;

    fn block(argv: &[&str], env: &[&str]) -> [u8; APP_HEADER_BYTES] {
        let mut b = [0u8; APP_HEADER_BYTES];
        let mut s = std::vec::Vec::new();
        for a in argv.iter().chain(env) {
            s.extend_from_slice(a.as_bytes());
            s.push(0);
        }
        AppHeader {
            header_crc: 7,
            elf_crc: 9,
            elf_len: 1234,
            argc: argv.len() as u32,
            envc: env.len() as u32,
            strings_len: s.len() as u32,
        }
        .encode(&mut b);
        b[APP_FIXED_BYTES..APP_FIXED_BYTES + s.len()].copy_from_slice(&s);
        b
    }

    #[test]
    fn headers_roundtrip_and_bad_ones_are_refused() {
        let b = block(&["redis-server", "--save", ""], &["HOME=/"]);
        let h = AppHeader::decode(&b).unwrap();
        assert_eq!((h.argc, h.envc, h.elf_len, h.elf_crc), (3, 1, 1234, 9));
        assert_eq!(h.strings(&b).unwrap(), b"redis-server\0--save\0\0HOME=/\0");
        let mut bad = b;
        bad[0] = b'X';
        assert_eq!(AppHeader::decode(&bad), Err(AppHeaderError::Magic));
        let mut bad = b;
        bad[24] = 5; // argc beyond the strings
        assert_eq!(AppHeader::decode(&bad), Err(AppHeaderError::Strings));
        let mut bad = b;
        bad[32..36].copy_from_slice(&5000u32.to_le_bytes());
        assert_eq!(AppHeader::decode(&bad), Err(AppHeaderError::Strings));
        let mut bad = b;
        bad[16..24].copy_from_slice(&APP_AREA_BYTES.to_le_bytes());
        assert_eq!(AppHeader::decode(&bad), Err(AppHeaderError::ElfLen));
        let none = block(&[], &[]);
        assert_eq!(AppHeader::decode(&none), Err(AppHeaderError::Strings));
    }

    #[test]
    fn the_stub_encodes_the_abi_addresses() {
        let s = syscall_stub();
        assert_eq!(&s[..4], &[0x48, 0x89, 0x24, 0x25]);
        assert_eq!(
            u32::from_le_bytes(s[4..8].try_into().unwrap()) as u64,
            SYSCALL_RSP_SLOT
        );
        assert_eq!(
            u32::from_le_bytes(s[11..15].try_into().unwrap()) as u64,
            SYSCALL_FRAME_ADDR
        );
        assert_eq!(&s[15..], &[0x48, 0xcf]);
    }
}
