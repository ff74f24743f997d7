//! Reading a static ELF64 executable's program headers from the app area.
//! The VMM has checked the file when the operator named it, but the bytes
//! come from the disk: every field is checked again before it is used.

use alloc::vec::Vec;

/// A loadable segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub vaddr: u64,
    pub memsz: u64,
    pub offset: u64,
    pub filesz: u64,
    pub writable: bool,
    pub executable: bool,
}

/// What the loader needs from the file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Program {
    pub entry: u64,
    /// Where the program headers are in memory (AT_PHDR).
    pub phdr: u64,
    pub phnum: u16,
    pub phent: u16,
    pub segments: Vec<Segment>,
}

impl Program {
    /// Lowest and highest (exclusive) addresses the segments occupy.
    pub fn span(&self) -> (u64, u64) {
        let lo = self.segments.iter().map(|s| s.vaddr).min().unwrap_or(0);
        let hi = self
            .segments
            .iter()
            .map(|s| s.vaddr + s.memsz)
            .max()
            .unwrap_or(0);
        (lo, hi)
    }
}

/// Why a file cannot be loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ElfError {
    NotElf,
    NotExec,
    Dynamic,
    BadSegment(usize),
    WritableCode(usize),
    NoSegments,
    PhdrsNotLoaded,
    BadEntry,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const PF_X: u32 = 1;
const PF_W: u32 = 2;

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// Parses and checks `image` (at least the loadable prefix of the file).
pub fn parse(image: &[u8]) -> Result<Program, ElfError> {
    let ok = image.get(..6) == Some(&b"\x7fELF\x02\x01"[..]);
    let machine = u16_at(image, 18);
    if !ok || machine != Some(62) {
        return Err(ElfError::NotElf);
    }
    if u16_at(image, 16) != Some(2) {
        return Err(ElfError::NotExec);
    }
    let entry = u64_at(image, 24).ok_or(ElfError::NotElf)?;
    let phoff = u64_at(image, 32).ok_or(ElfError::NotElf)?;
    let phent = u16_at(image, 54).ok_or(ElfError::NotElf)?;
    let phnum = u16_at(image, 56).ok_or(ElfError::NotElf)?;
    if phent < 56 || phnum == 0 {
        return Err(ElfError::NotElf);
    }
    let table_len = u64::from(phent) * u64::from(phnum);
    let table_end = phoff.checked_add(table_len).ok_or(ElfError::NotElf)?;
    if table_end > image.len() as u64 {
        return Err(ElfError::NotElf);
    }
    let mut segments = Vec::new();
    for i in 0..phnum as usize {
        let p = phoff as usize + i * phent as usize;
        let field = |o: usize| u64_at(image, p + o).ok_or(ElfError::BadSegment(i));
        let kind = u32_at(image, p).ok_or(ElfError::BadSegment(i))?;
        let flags = u32_at(image, p + 4).ok_or(ElfError::BadSegment(i))?;
        match kind {
            PT_INTERP | PT_DYNAMIC => return Err(ElfError::Dynamic),
            PT_LOAD => {}
            _ => continue,
        }
        let s = Segment {
            offset: field(8)?,
            vaddr: field(16)?,
            filesz: field(32)?,
            memsz: field(40)?,
            writable: flags & PF_W != 0,
            executable: flags & PF_X != 0,
        };
        let file_end = s.offset.checked_add(s.filesz);
        let mem_end = s.vaddr.checked_add(s.memsz);
        if s.filesz > s.memsz
            || file_end.is_none_or(|e| e > image.len() as u64)
            || mem_end.is_none()
        {
            return Err(ElfError::BadSegment(i));
        }
        if s.writable && s.executable {
            return Err(ElfError::WritableCode(i));
        }
        segments.push(s);
    }
    if segments.is_empty() {
        return Err(ElfError::NoSegments);
    }
    let phdr = segments
        .iter()
        .find(|s| phoff >= s.offset && table_end <= s.offset + s.filesz)
        .map(|s| s.vaddr + (phoff - s.offset))
        .ok_or(ElfError::PhdrsNotLoaded)?;
    if !segments
        .iter()
        .any(|s| s.executable && entry >= s.vaddr && entry < s.vaddr + s.memsz)
    {
        return Err(ElfError::BadEntry);
    }
    Ok(Program {
        entry,
        phdr,
        phnum,
        phent,
        segments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    /// An ELF header and `segs` (type, flags, offset, vaddr, filesz, memsz).
    pub fn image(entry: u64, segs: &[(u32, u32, u64, u64, u64, u64)]) -> Vec<u8> {
        let mut v = vec![0u8; 64];
        v[..6].copy_from_slice(b"\x7fELF\x02\x01");
        v[16..18].copy_from_slice(&2u16.to_le_bytes());
        v[18..20].copy_from_slice(&62u16.to_le_bytes());
        v[24..32].copy_from_slice(&entry.to_le_bytes());
        v[32..40].copy_from_slice(&64u64.to_le_bytes());
        v[54..56].copy_from_slice(&56u16.to_le_bytes());
        v[56..58].copy_from_slice(&(segs.len() as u16).to_le_bytes());
        for &(t, f, off, va, fs, ms) in segs {
            for x in [
                u64::from(t) | u64::from(f) << 32,
                off,
                va,
                va,
                fs,
                ms,
                0x1000,
            ] {
                v.extend_from_slice(&x.to_le_bytes());
            }
        }
        v.resize(0x2000, 0x90);
        v
    }

    #[test]
    fn a_static_executable_loads_and_bad_ones_do_not() {
        let ok = image(
            0x401000,
            &[
                (1, 4, 0, 0x400000, 0x200, 0x200),
                (1, 5, 0x1000, 0x401000, 0x100, 0x100),
                (1, 6, 0x1100, 0x402100, 0x10, 0x5000),
            ],
        );
        let p = parse(&ok).unwrap();
        assert_eq!((p.entry, p.phdr, p.phnum), (0x401000, 0x400040, 3));
        assert_eq!(p.span(), (0x400000, 0x407100));
        assert!(p.segments[2].writable && !p.segments[2].executable);
        let wx = image(
            0x401000,
            &[
                (1, 4, 0, 0x400000, 0x200, 0x200),
                (1, 7, 0x1000, 0x401000, 0x100, 0x100),
            ],
        );
        assert_eq!(parse(&wx), Err(ElfError::WritableCode(1)));
        let dynamic = image(0x401000, &[(3, 4, 0, 0, 0, 0)]);
        assert_eq!(parse(&dynamic), Err(ElfError::Dynamic));
        let past = image(0x401000, &[(1, 5, 0, 0x400000, 0x9000, 0x9000)]);
        assert_eq!(parse(&past), Err(ElfError::BadSegment(0)));
        let wrap = image(0x401000, &[(1, 5, 0, u64::MAX - 4, 0x10, 0x10)]);
        assert_eq!(parse(&wrap), Err(ElfError::BadSegment(0)));
        let entry = image(0x500000, &[(1, 5, 0, 0x400000, 0x200, 0x200)]);
        assert_eq!(parse(&entry), Err(ElfError::BadEntry));
        for cut in 0..200 {
            assert!(parse(&ok[..cut]).is_err());
        }
    }
}
