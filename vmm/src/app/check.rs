//! What a program must be before the guest's Linux personality runs it: a
//! static, non-PIE ELF64 x86-64 executable, linked above the personality,
//! without writable+executable segments, and without an instruction whose
//! result this host cannot control.
//!
//! The instruction check runs here, on the host, when the operator names the
//! program: it is an admission decision with a precise message and exit
//! code before anything boots; it reads the symbol table, which never goes
//! to the guest (only the loadable prefix does); and iced-x86 and its tables
//! stay out of the guest binary. A replay or a backup gets the program's
//! bytes from the log (they are disk reads) and needs no second check.

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic};
use object::elf::{
    ET_DYN, ET_EXEC, FileHeader64, PF_W, PF_X, PT_DYNAMIC, PT_INTERP, PT_LOAD, SHF_EXECINSTR,
    STT_FUNC,
};
use object::read::elf::{FileHeader, ProgramHeader, SectionHeader, Sym};
use object::{LittleEndian, StringTable};

use lockstep_guest_abi::linux::APP_ELF_MAX;

use super::rewrite::Sites;
use crate::kvm::elf::ElfHeaders;

/// Lowest address an app segment may use: the personality lives below.
pub const APP_MIN_ADDR: u64 = 0x40_0000;

/// Instructions the app must not contain: this host does not trap them at
/// ring 3 (DESIGN.md §2), so they would return the host's values and a
/// replay would diverge.
pub const FORBIDDEN: [Mnemonic; 7] = [
    Mnemonic::Cpuid,
    Mnemonic::Rdtsc,
    Mnemonic::Rdtscp,
    Mnemonic::Rdrand,
    Mnemonic::Rdseed,
    Mnemonic::Rdpid,
    Mnemonic::Xgetbv,
];

/// Why a program cannot run in the guest.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("not an ELF64 little-endian x86-64 executable ({0})")]
    NotElf(String),
    #[error("a position-independent executable; link it with -static -no-pie (musl-gcc -static)")]
    Pie,
    #[error("ELF type {0} is not an executable")]
    NotExec(u16),
    #[error("dynamically linked ({0}); link it statically (musl-gcc -static)")]
    Dynamic(&'static str),
    #[error(
        "segment {index} at {addr:#x} lies below {APP_MIN_ADDR:#x}, where the guest's personality lives"
    )]
    TooLow { index: usize, addr: u64 },
    #[error(
        "segment {index} at {addr:#x} is writable and executable: code that changes at run time cannot be checked"
    )]
    WritableCode { index: usize, addr: u64 },
    #[error("segment {index}'s file range is outside the file")]
    Truncated { index: usize },
    #[error("its loadable part is {len} bytes; the disk's app area holds {APP_ELF_MAX}")]
    TooBig { len: u64 },
    #[error("it has no loadable segment")]
    NoSegments,
    #[error(
        "it contains {} instruction(s) the guest cannot make deterministic \
         (this host does not trap them at ring 3): {}{}",
        .found.len(),
        .found.iter().take(5).map(|f| f.to_string()).collect::<Vec<_>>().join("; "),
        if .found.len() > 5 { "; ..." } else { "" }
    )]
    Forbidden { found: Vec<Found> },
}

/// One forbidden instruction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub mnemonic: String,
    pub addr: u64,
    /// The function it is in and the offset, if the file has symbols.
    pub symbol: Option<(String, u64)>,
}

impl std::fmt::Display for Found {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.symbol {
            Some((name, off)) => write!(
                f,
                "`{}` in {name}+{off:#x} ({:#x})",
                self.mnemonic, self.addr
            ),
            None => write!(f, "`{}` at {:#x}", self.mnemonic, self.addr),
        }
    }
}

/// A program that passed every check.
#[derive(Debug)]
pub struct Checked {
    /// Bytes of the file the guest needs: headers and every `PT_LOAD`'s
    /// file range (symbols and debug information stay behind).
    pub prefix_len: u64,
    /// Function symbols decoded (0: no symbol table; whole code sections
    /// were decoded instead).
    pub functions: usize,
    /// `syscall` instructions found.
    pub syscalls: usize,
    /// File offsets of the `syscall`s that may become `call rax`
    /// ([`super::rewrite`]), all inside the loadable prefix.
    pub rewritable: Vec<u64>,
}

type Header = FileHeader64<LittleEndian>;

/// Checks `elf` (a whole file).
pub fn check(elf: &[u8]) -> Result<Checked, CheckError> {
    let ElfHeaders {
        header,
        endian: e,
        phdrs,
    } = ElfHeaders::parse(elf).map_err(CheckError::NotElf)?;
    match header.e_type(e) {
        ET_EXEC => {}
        ET_DYN if phdrs.iter().any(|p| p.p_type(e) == PT_INTERP) => {
            return Err(CheckError::Dynamic("it names an interpreter"));
        }
        ET_DYN => return Err(CheckError::Pie),
        t => return Err(CheckError::NotExec(t)),
    }
    let phdr_end = header
        .e_phoff(e)
        .saturating_add(u64::from(header.e_phnum(e)) * u64::from(header.e_phentsize(e)));
    let mut prefix_len = phdr_end;
    let mut loads = 0;
    for (index, ph) in phdrs.iter().enumerate() {
        match ph.p_type(e) {
            PT_INTERP => return Err(CheckError::Dynamic("it names an interpreter")),
            PT_DYNAMIC => return Err(CheckError::Dynamic("it has a dynamic section")),
            PT_LOAD => {}
            _ => continue,
        }
        loads += 1;
        let addr = ph.p_vaddr(e);
        if addr < APP_MIN_ADDR {
            return Err(CheckError::TooLow { index, addr });
        }
        let flags = ph.p_flags(e);
        if flags & PF_W != 0 && flags & PF_X != 0 {
            return Err(CheckError::WritableCode { index, addr });
        }
        let end = ph.p_offset(e).saturating_add(ph.p_filesz(e));
        if end > elf.len() as u64 {
            return Err(CheckError::Truncated { index });
        }
        prefix_len = prefix_len.max(end);
    }
    if loads == 0 {
        return Err(CheckError::NoSegments);
    }
    if prefix_len > APP_ELF_MAX {
        return Err(CheckError::TooBig { len: prefix_len });
    }
    let scan = scan(elf, header, e)?;
    if !scan.found.is_empty() {
        return Err(CheckError::Forbidden { found: scan.found });
    }
    Ok(Checked {
        prefix_len,
        functions: scan.functions,
        syscalls: scan.syscalls,
        rewritable: scan.rewritable,
    })
}

/// A code range to decode: address, bytes, the symbol it belongs to, and
/// the file offset of its first byte.
struct Range<'a> {
    addr: u64,
    bytes: &'a [u8],
    name: Option<String>,
    file_offset: u64,
}

/// What decoding the program's code found.
struct Scan {
    found: Vec<Found>,
    functions: usize,
    syscalls: usize,
    rewritable: Vec<u64>,
}

/// Decodes the code inside every function symbol, or, without symbols,
/// every executable section from its start. A function symbol without a
/// size (hand-written assembly, such as musl's `__syscall_cp_asm`) runs to
/// the next function symbol.
fn scan(elf: &[u8], header: &Header, e: LittleEndian) -> Result<Scan, CheckError> {
    let bad = |err: object::Error| CheckError::NotElf(err.to_string());
    let sections = header.sections(e, elf).map_err(bad)?;
    // (address, bytes, file offset) of each piece of code.
    let mut code: Vec<(u64, &[u8], u64)> = sections
        .iter()
        .filter(|s| s.sh_flags(e) & u64::from(SHF_EXECINSTR) != 0)
        .filter_map(|s| Some((s.sh_addr(e), s.data(e, elf).ok()?, s.sh_offset(e))))
        .collect();
    if code.is_empty() {
        // No section headers (stripped hard): the executable segments.
        code = header
            .program_headers(e, elf)
            .map_err(bad)?
            .iter()
            .filter(|p| p.p_type(e) == PT_LOAD && p.p_flags(e) & PF_X != 0)
            .filter_map(|p| Some((p.p_vaddr(e), p.data(e, elf).ok()?, p.p_offset(e))))
            .collect();
    }
    let symbols = sections
        .symbols(e, elf, object::elf::SHT_SYMTAB)
        .map_err(bad)?;
    let strings: StringTable<'_> = symbols.strings();
    let mut starts: Vec<u64> = symbols
        .iter()
        .filter(|s| s.st_type() == STT_FUNC)
        .map(|s| s.st_value(e))
        .collect();
    starts.sort_unstable();
    let mut ranges: Vec<Range<'_>> = Vec::new();
    for sym in symbols.iter() {
        if sym.st_type() != STT_FUNC {
            continue;
        }
        let addr = sym.st_value(e);
        let Some((base, bytes, offset)) = code
            .iter()
            .find(|(b, d, _)| addr >= *b && addr - *b < d.len() as u64)
        else {
            continue;
        };
        let start = (addr - base) as usize;
        let size = match sym.st_size(e) {
            0 => starts
                .get(starts.partition_point(|s| *s <= addr))
                .map_or(u64::MAX, |next| next - addr),
            n => n,
        };
        let end = usize::try_from(size)
            .map_or(bytes.len(), |n| start.saturating_add(n))
            .min(bytes.len());
        let name = sym
            .name(e, strings)
            .map(|n| String::from_utf8_lossy(n).into_owned())
            .ok();
        ranges.push(Range {
            addr,
            bytes: &bytes[start..end],
            name,
            file_offset: offset.saturating_add(start as u64),
        });
    }
    let functions = ranges.len();
    if ranges.is_empty() {
        ranges = code
            .iter()
            .map(|(addr, bytes, file_offset)| Range {
                addr: *addr,
                bytes,
                name: None,
                file_offset: *file_offset,
            })
            .collect();
    }
    let mut found = Vec::new();
    let mut syscalls = Vec::new();
    let mut rewritable = Vec::new();
    // Sites some range says to keep: a site inside two ranges (a size-less
    // symbol inside a sized function, aliases) changes only if both agree.
    let mut kept = Vec::new();
    let mut insn = Instruction::default();
    for range in ranges {
        let mut decoder = Decoder::with_ip(64, range.bytes, range.addr, DecoderOptions::NONE);
        let mut sites = Sites::default();
        while decoder.can_decode() {
            decoder.decode_out(&mut insn);
            if insn.code() == Code::INVALID {
                continue;
            }
            sites.see(&insn);
            if !FORBIDDEN.contains(&insn.mnemonic()) {
                continue;
            }
            found.push(Found {
                mnemonic: format!("{:?}", insn.mnemonic()).to_lowercase(),
                addr: insn.ip(),
                symbol: range
                    .name
                    .clone()
                    .map(|n| (n, insn.ip().saturating_sub(range.addr))),
            });
        }
        syscalls.extend_from_slice(&sites.syscalls);
        let to_file = |site: &u64| range.file_offset.saturating_add(site - range.addr);
        // Only inside a named function: without symbols, a linear sweep
        // of whole sections could take data for code.
        let ok = sites.rewritable(range.name.as_deref());
        if range.name.is_some() && !ok.is_empty() {
            rewritable.extend(ok.iter().map(to_file));
        } else {
            kept.extend(sites.syscalls.iter().map(to_file));
        }
    }
    rewritable.retain(|o| !kept.contains(o));
    found.sort_by_key(|f| f.addr);
    found.dedup();
    syscalls.sort_unstable();
    syscalls.dedup();
    rewritable.sort_unstable();
    rewritable.dedup();
    Ok(Scan {
        found,
        functions,
        syscalls: syscalls.len(),
        rewritable,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kvm::elf::tests::tiny_elf;

    #[test]
    fn forbidden_instructions_and_unloadable_files_are_refused() {
        // nop; cpuid; xgetbv; ret
        let code = [0x90, 0x0f, 0xa2, 0x0f, 0x01, 0xd0, 0xc3];
        let bad = tiny_elf(ET_EXEC, APP_MIN_ADDR, &code, None);
        match check(&bad) {
            Err(CheckError::Forbidden { found }) => {
                let names: Vec<&str> = found.iter().map(|f| f.mnemonic.as_str()).collect();
                assert_eq!(names, ["cpuid", "xgetbv"]);
                assert_eq!(found[0].addr, APP_MIN_ADDR + 1);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let good = tiny_elf(ET_EXEC, APP_MIN_ADDR, &[0x90, 0xc3], None);
        let ok = check(&good).unwrap();
        assert_eq!(ok.prefix_len, good.len() as u64);
        let low = tiny_elf(ET_EXEC, 0x20_0000, &[0xc3], None);
        assert!(matches!(check(&low), Err(CheckError::TooLow { .. })));
        let pie = tiny_elf(ET_DYN, APP_MIN_ADDR, &[0xc3], None);
        assert!(matches!(check(&pie), Err(CheckError::Pie)));
        let dynamic = tiny_elf(ET_EXEC, APP_MIN_ADDR, &[0xc3], Some(PT_INTERP));
        assert!(matches!(check(&dynamic), Err(CheckError::Dynamic(_))));
        assert!(matches!(check(b"#!/bin/sh"), Err(CheckError::NotElf(_))));
    }
}
