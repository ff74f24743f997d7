//! Inodes and their encoding in a metadata record.
//!
//! Payload: `next_ino u32, count u32`, then per inode `ino u32, kind u8,
//! mode u16, mtime_ns u64, size u64` and, for a file, `runs u32` of
//! `(file_block u32, disk_block u32, len u32)`, for a directory
//! `entries u32` of `(ino u32, name_len u8, name)`. Everything read back is
//! checked: a record that passed its CRC can still come from a buggy
//! writer, and the decoder must not trust it.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

/// The root directory's inode number.
pub const ROOT: u32 = 1;
/// Longest file name.
pub const NAME_MAX: usize = 255;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
}

/// One file or directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub kind: Kind,
    pub mode: u16,
    pub mtime_ns: u64,
    /// Bytes (files); 0 for directories.
    pub size: u64,
    /// File block → disk block; 0 is a hole (reads as zeros).
    pub blocks: Vec<u32>,
    /// Directory entries by name.
    pub entries: BTreeMap<Vec<u8>, u32>,
    /// Directory entries naming this inode (not stored: recounted at mount).
    pub links: u32,
    /// Open file descriptions (in memory only).
    pub opens: u32,
}

impl Inode {
    pub fn new(kind: Kind, mode: u16, now_ns: u64) -> Inode {
        Inode {
            kind,
            mode,
            mtime_ns: now_ns,
            size: 0,
            blocks: Vec::new(),
            entries: BTreeMap::new(),
            links: 0,
            opens: 0,
        }
    }
}

/// Whether `name` can be a directory entry.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name != b"."
        && name != b".."
        && !name.iter().any(|c| *c == b'/' || *c == 0)
}

fn put32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// The payload for these inodes.
pub fn encode(next_ino: u32, inodes: &BTreeMap<u32, Inode>) -> Vec<u8> {
    let mut out = Vec::new();
    put32(&mut out, next_ino);
    let live = inodes.iter().filter(|(_, i)| i.links > 0);
    put32(&mut out, live.clone().count() as u32);
    for (ino, i) in live {
        put32(&mut out, *ino);
        out.push(match i.kind {
            Kind::File => 1,
            Kind::Dir => 2,
        });
        out.extend_from_slice(&i.mode.to_le_bytes());
        out.extend_from_slice(&i.mtime_ns.to_le_bytes());
        out.extend_from_slice(&i.size.to_le_bytes());
        match i.kind {
            Kind::File => {
                let runs = runs(&i.blocks);
                put32(&mut out, runs.len() as u32);
                for (f, d, n) in runs {
                    put32(&mut out, f);
                    put32(&mut out, d);
                    put32(&mut out, n);
                }
            }
            Kind::Dir => {
                put32(&mut out, i.entries.len() as u32);
                for (name, child) in &i.entries {
                    put32(&mut out, *child);
                    out.push(name.len() as u8);
                    out.extend_from_slice(name);
                }
            }
        }
    }
    out
}

/// Maximal runs of consecutive mapped blocks: (file block, disk block, len).
fn runs(blocks: &[u32]) -> Vec<(u32, u32, u32)> {
    let mut out: Vec<(u32, u32, u32)> = Vec::new();
    for (f, &d) in blocks.iter().enumerate() {
        if d == 0 {
            continue;
        }
        match out.last_mut() {
            Some((lf, ld, n)) if *lf + *n == f as u32 && *ld + *n == d => *n += 1,
            _ => out.push((f as u32, d, 1)),
        }
    }
    out
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
    }
}

/// Largest file this file system describes (and so accepts from a record).
pub const MAX_FILE_BLOCKS: u64 = 1 << 24;

/// Reads a payload back; `None` if it is malformed anywhere. Data blocks
/// must lie in `[first_data, blocks)`; that no block is used twice is the
/// caller's check.
pub fn decode(payload: &[u8], first_data: u64, blocks: u64) -> Option<(u32, BTreeMap<u32, Inode>)> {
    let mut r = Reader { b: payload, at: 0 };
    let next_ino = r.u32()?;
    let count = r.u32()?;
    let mut inodes = BTreeMap::new();
    for _ in 0..count {
        let ino = r.u32()?;
        let kind = match r.u8()? {
            1 => Kind::File,
            2 => Kind::Dir,
            _ => return None,
        };
        let mut i = Inode::new(kind, r.u16()?, r.u64()?);
        i.size = r.u64()?;
        let n = r.u32()?;
        match kind {
            Kind::File => {
                if i.size > MAX_FILE_BLOCKS * super::layout::BLOCK as u64 {
                    return None;
                }
                let nblocks = i.size.div_ceil(super::layout::BLOCK as u64) as usize;
                i.blocks = alloc::vec![0; nblocks];
                for _ in 0..n {
                    let (f, d, len) = (r.u32()? as usize, u64::from(r.u32()?), r.u32()? as usize);
                    let end = f.checked_add(len)?;
                    if len == 0 || end > nblocks || d < first_data || d + len as u64 > blocks {
                        return None;
                    }
                    for (k, slot) in i.blocks[f..end].iter_mut().enumerate() {
                        *slot = (d + k as u64) as u32;
                    }
                }
            }
            Kind::Dir => {
                for _ in 0..n {
                    let child = r.u32()?;
                    let len = r.u8()? as usize;
                    let name = r.take(len)?.to_vec();
                    if !valid_name(&name) || i.entries.insert(name, child).is_some() {
                        return None;
                    }
                }
            }
        }
        if ino == 0 || ino >= next_ino || inodes.insert(ino, i).is_some() {
            return None;
        }
    }
    (r.at == payload.len() && inodes.get(&ROOT).is_some_and(|i| i.kind == Kind::Dir))
        .then_some((next_ino, inodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inodes_roundtrip_with_holes_and_runs() {
        let mut inodes = BTreeMap::new();
        let mut root = Inode::new(Kind::Dir, 0o755, 5);
        root.links = 1;
        root.entries.insert(b"aof".to_vec(), 2);
        inodes.insert(ROOT, root);
        let mut f = Inode::new(Kind::File, 0o644, 9);
        f.links = 1;
        f.size = 5 * 4096 + 1;
        f.blocks = alloc::vec![200, 201, 0, 300, 301, 302];
        inodes.insert(2, f);
        let mut orphan = Inode::new(Kind::File, 0o644, 9);
        orphan.opens = 1;
        inodes.insert(3, orphan);
        assert_eq!(runs(&inodes[&2].blocks), [(0, 200, 2), (3, 300, 3)]);
        let bytes = encode(4, &inodes);
        let (next, back) = decode(&bytes, 129, 1000).unwrap();
        assert_eq!(next, 4);
        assert_eq!(back.len(), 2, "an unlinked inode is not committed");
        assert_eq!(back[&2].blocks, inodes[&2].blocks);
        assert_eq!(back[&2].size, inodes[&2].size);
        assert_eq!(back[&ROOT].entries, inodes[&ROOT].entries);
        // Damage anywhere is refused, never a panic.
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], 129, 1000).is_none());
        }
        assert!(decode(&bytes, 129, 301).is_none(), "blocks past the end");
        assert!(
            decode(&bytes, 250, 1000).is_none(),
            "blocks in the fixed area"
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name(b"appendonly.aof.1.incr.aof"));
        for bad in [&b""[..], b".", b"..", b"a/b", b"a\0b", &[b'x'; 256]] {
            assert!(!valid_name(bad));
        }
    }
}
