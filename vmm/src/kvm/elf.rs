//! Loading the guest kernel: a static ELF64 `EXEC` image for x86-64.
//!
//! rust-vmm's `linux-loader` targets Linux kernels (PVH notes, bzImage) and
//! accepts images lockstep must refuse (dynamic, position-independent,
//! segments outside RAM or over the system area), so the image is parsed with
//! the `object` crate and checked here before a byte reaches guest memory.

use object::LittleEndian;
use object::elf::{ET_EXEC, FileHeader64, PT_DYNAMIC, PT_INTERP, PT_LOAD, ProgramHeader64};
use object::read::elf::{FileHeader, ProgramHeader};

use lockstep_guest_abi as abi;

/// Why a kernel image cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF64 little-endian x86-64 image ({0})")]
    NotElf64(String),
    #[error("not an executable (ELF type {0}); link the guest with -static -no-pie")]
    NotExec(u16),
    #[error("not static: it has {0}; link the guest with -static -no-pie")]
    NotStatic(&'static str),
    #[error("has no loadable segment")]
    NoSegments,
    #[error(
        "segment {index} at {start:#x}..{end:#x} does not fit in guest memory \
         {low:#x}..{high:#x} ({mem_mib} MiB; the guest is linked at {low:#x})"
    )]
    SegmentOutOfRange {
        index: usize,
        start: u64,
        end: u64,
        low: u64,
        high: u64,
        mem_mib: u64,
    },
    #[error("segment {index}: file range {offset:#x}+{size:#x} is outside the {len}-byte image")]
    TruncatedSegment {
        index: usize,
        offset: u64,
        size: u64,
        len: usize,
    },
    #[error("entry point {0:#x} is not inside a loadable segment")]
    BadEntry(u64),
}

/// One loadable segment: where it goes and what it holds (the rest up to
/// `mem_size` is zero).
pub struct Segment<'a> {
    pub addr: u64,
    pub data: &'a [u8],
    pub mem_size: u64,
}

/// A checked kernel image.
pub struct KernelImage<'a> {
    pub entry: u64,
    pub segments: Vec<Segment<'a>>,
    /// First byte above the highest segment.
    pub end: u64,
}

/// The headers of an ELF64 little-endian x86-64 file: what the kernel's
/// loader and the app check (`crate::app::check`) both start from.
pub struct ElfHeaders<'a> {
    pub header: &'a FileHeader64<LittleEndian>,
    pub endian: LittleEndian,
    pub phdrs: &'a [ProgramHeader64<LittleEndian>],
}

impl<'a> ElfHeaders<'a> {
    /// Reads the file header and the program headers of `image`, or says
    /// why it is not an ELF64 little-endian x86-64 file.
    pub fn parse(image: &'a [u8]) -> Result<ElfHeaders<'a>, String> {
        let header = FileHeader64::<LittleEndian>::parse(image).map_err(|e| e.to_string())?;
        let endian = header.endian().map_err(|e| e.to_string())?;
        if header.e_machine(endian) != object::elf::EM_X86_64 {
            return Err(format!("machine {}", header.e_machine(endian)));
        }
        let phdrs = header
            .program_headers(endian, image)
            .map_err(|e| e.to_string())?;
        Ok(ElfHeaders {
            header,
            endian,
            phdrs,
        })
    }
}

/// Parses and checks `image` for a guest of `mem_size` bytes whose top
/// `reserved_top` bytes (the stack) must stay free.
pub fn parse(image: &[u8], mem_size: u64, reserved_top: u64) -> Result<KernelImage<'_>, ElfError> {
    let ElfHeaders {
        header,
        endian,
        phdrs,
    } = ElfHeaders::parse(image).map_err(ElfError::NotElf64)?;
    let kind = header.e_type(endian);
    if kind != ET_EXEC {
        return Err(ElfError::NotExec(kind));
    }
    let low = abi::KERNEL_BASE;
    let high = mem_size.saturating_sub(reserved_top);
    let mut segments = Vec::new();
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type(endian) {
            PT_INTERP => return Err(ElfError::NotStatic("an interpreter (PT_INTERP)")),
            PT_DYNAMIC => return Err(ElfError::NotStatic("a dynamic section (PT_DYNAMIC)")),
            PT_LOAD => {}
            _ => continue,
        }
        let start = ph.p_paddr(endian);
        let mem_len = ph.p_memsz(endian);
        let end = start.saturating_add(mem_len);
        if start < low || end > high || ph.p_filesz(endian) > mem_len {
            return Err(ElfError::SegmentOutOfRange {
                index,
                start,
                end,
                low,
                high,
                mem_mib: mem_size >> 20,
            });
        }
        let data = ph
            .data(endian, image)
            .map_err(|_| ElfError::TruncatedSegment {
                index,
                offset: ph.p_offset(endian),
                size: ph.p_filesz(endian),
                len: image.len(),
            })?;
        segments.push(Segment {
            addr: start,
            data,
            mem_size: mem_len,
        });
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let entry = header.e_entry(endian);
    if !segments
        .iter()
        .any(|s| entry >= s.addr && entry < s.addr + s.mem_size)
    {
        return Err(ElfError::BadEntry(entry));
    }
    let end = segments
        .iter()
        .map(|s| s.addr + s.mem_size)
        .max()
        .unwrap_or(low);
    Ok(KernelImage {
        entry,
        segments,
        end,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A minimal ELF64 EXEC with one PT_LOAD segment, built by hand.
    pub(crate) fn tiny_elf(kind: u16, paddr: u64, code: &[u8], extra_phdr: Option<u32>) -> Vec<u8> {
        let phnum: u16 = if extra_phdr.is_some() { 2 } else { 1 };
        let code_off = 64 + 56 * phnum as u64;
        let mut v = Vec::new();
        v.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&kind.to_le_bytes());
        v.extend_from_slice(&62u16.to_le_bytes()); // EM_X86_64
        v.extend_from_slice(&1u32.to_le_bytes());
        v.extend_from_slice(&paddr.to_le_bytes()); // entry
        v.extend_from_slice(&64u64.to_le_bytes()); // phoff
        v.extend_from_slice(&0u64.to_le_bytes()); // shoff
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&64u16.to_le_bytes());
        v.extend_from_slice(&56u16.to_le_bytes());
        v.extend_from_slice(&phnum.to_le_bytes());
        v.extend_from_slice(&[0; 6]);
        let mut phdr = |ty: u32, off: u64, addr: u64, size: u64| {
            v.extend_from_slice(&ty.to_le_bytes());
            v.extend_from_slice(&5u32.to_le_bytes());
            v.extend_from_slice(&off.to_le_bytes());
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&addr.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&size.to_le_bytes());
            v.extend_from_slice(&0x1000u64.to_le_bytes());
        };
        phdr(PT_LOAD, code_off, paddr, code.len() as u64);
        if let Some(ty) = extra_phdr {
            phdr(ty, code_off, paddr, 0);
        }
        v.extend_from_slice(code);
        v
    }

    #[test]
    fn accepts_a_static_exec() {
        let elf = tiny_elf(ET_EXEC, abi::KERNEL_BASE, &[0x90; 16], None);
        let k = parse(&elf, 64 << 20, abi::STACK_SIZE).unwrap();
        assert_eq!(k.entry, abi::KERNEL_BASE);
        assert_eq!(k.segments.len(), 1);
        assert_eq!(k.end, abi::KERNEL_BASE + 16);
    }

    #[test]
    fn refuses_what_it_cannot_run() {
        let mem = 64 << 20;
        assert!(matches!(
            parse(b"#!/bin/sh\n", mem, 0),
            Err(ElfError::NotElf64(_))
        ));
        assert!(matches!(parse(&[], mem, 0), Err(ElfError::NotElf64(_))));
        let pie = tiny_elf(object::elf::ET_DYN, abi::KERNEL_BASE, &[0x90], None);
        assert!(matches!(parse(&pie, mem, 0), Err(ElfError::NotExec(3))));
        let dynamic = tiny_elf(ET_EXEC, abi::KERNEL_BASE, &[0x90], Some(PT_INTERP));
        assert!(matches!(
            parse(&dynamic, mem, 0),
            Err(ElfError::NotStatic(_))
        ));
        let low = tiny_elf(ET_EXEC, 0x1000, &[0x90], None);
        assert!(matches!(
            parse(&low, mem, 0),
            Err(ElfError::SegmentOutOfRange { .. })
        ));
        let high = tiny_elf(ET_EXEC, mem - 8, &[0x90; 16], None);
        assert!(matches!(
            parse(&high, mem, 0),
            Err(ElfError::SegmentOutOfRange { .. })
        ));
        let mut truncated = tiny_elf(ET_EXEC, abi::KERNEL_BASE, &[0x90; 64], None);
        truncated.truncate(truncated.len() - 32);
        assert!(parse(&truncated, mem, 0).is_err());
    }
}
