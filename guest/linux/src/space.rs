//! The app's address space: its brk area and its anonymous mappings.
//!
//! Memory for mappings comes from the guest's heap through [`Pages`] (one
//! allocation per `mmap`); `munmap` may cut any page range out of
//! mappings, and an allocation is given back when its last page is
//! unmapped. Guest addresses are identity-mapped and the pages stay
//! accessible (no page tables of our own), so unmapping only ends
//! ownership; zeroing on map and `MADV_DONTNEED` keep Linux's contents.

use alloc::collections::BTreeMap;

pub const PAGE: u64 = 4096;

/// Where the memory comes from.
pub trait Pages {
    /// `len` (page multiple) bytes, page aligned and zeroed.
    fn alloc(&mut self, len: u64) -> Option<u64>;
    /// Gives back an allocation returned by `alloc`.
    fn free(&mut self, base: u64, len: u64);
    fn zero(&mut self, addr: u64, len: u64);
    fn copy(&mut self, from: u64, to: u64, len: u64);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapError {
    /// ENOMEM
    NoMem,
    /// EINVAL
    Invalid,
}

#[derive(Clone, Copy, Debug)]
struct Map {
    len: u64,
    /// The allocation it belongs to.
    alloc: u64,
}

/// The brk area and every mapping.
pub struct AddressSpace {
    brk_start: u64,
    brk: u64,
    brk_max: u64,
    maps: BTreeMap<u64, Map>,
    /// Allocation base → (length, bytes still mapped).
    allocs: BTreeMap<u64, (u64, u64)>,
}

fn pages(len: u64) -> Option<u64> {
    len.checked_add(PAGE - 1).map(|l| l & !(PAGE - 1))
}

impl AddressSpace {
    /// brk starts at `brk_start` and may grow to `brk_max`.
    pub fn new(brk_start: u64, brk_max: u64) -> AddressSpace {
        AddressSpace {
            brk_start,
            brk: brk_start,
            brk_max,
            maps: BTreeMap::new(),
            allocs: BTreeMap::new(),
        }
    }

    /// `brk(2)`: moves the break if `want` is inside the area (new memory
    /// is zeroed); returns the break.
    pub fn brk(&mut self, want: u64, p: &mut impl Pages) -> u64 {
        if want >= self.brk_start && want <= self.brk_max {
            if want > self.brk {
                p.zero(self.brk, want - self.brk);
            }
            self.brk = want;
        }
        self.brk
    }

    /// Bytes mapped (brk included).
    pub fn mapped(&self) -> u64 {
        self.maps.values().map(|m| m.len).sum::<u64>() + (self.brk - self.brk_start)
    }

    /// An anonymous mapping anywhere.
    pub fn map(&mut self, len: u64, p: &mut impl Pages) -> Result<u64, MapError> {
        let len = pages(len).filter(|l| *l > 0).ok_or(MapError::Invalid)?;
        let base = p.alloc(len).ok_or(MapError::NoMem)?;
        self.maps.insert(base, Map { len, alloc: base });
        self.allocs.insert(base, (len, len));
        Ok(base)
    }

    /// `MAP_FIXED`: only over memory the app already owns (its brk area or
    /// its mappings), which is zeroed as Linux would replace it.
    pub fn map_fixed(&mut self, addr: u64, len: u64, p: &mut impl Pages) -> Result<u64, MapError> {
        let len = pages(len).filter(|l| *l > 0).ok_or(MapError::Invalid)?;
        let end = addr.checked_add(len).ok_or(MapError::Invalid)?;
        if !addr.is_multiple_of(PAGE) {
            return Err(MapError::Invalid);
        }
        if (addr >= self.brk_start && end <= self.brk_max) || self.covered(addr, end) {
            p.zero(addr, len);
            return Ok(addr);
        }
        Err(MapError::NoMem)
    }

    /// Whether `[addr, end)` lies entirely in mappings.
    fn covered(&self, mut addr: u64, end: u64) -> bool {
        while addr < end {
            match self.maps.range(..=addr).next_back() {
                Some((s, m)) if s + m.len > addr => addr = s + m.len,
                _ => return false,
            }
        }
        true
    }

    /// `munmap(2)`: unmaps whatever of `[addr, addr+len)` is mapped.
    pub fn unmap(&mut self, addr: u64, len: u64, p: &mut impl Pages) -> Result<(), MapError> {
        let len = pages(len).filter(|l| *l > 0).ok_or(MapError::Invalid)?;
        let end = addr.checked_add(len).ok_or(MapError::Invalid)?;
        if !addr.is_multiple_of(PAGE) {
            return Err(MapError::Invalid);
        }
        let hit: alloc::vec::Vec<(u64, Map)> = self
            .maps
            .range(..end)
            .filter(|(s, m)| *s + m.len > addr)
            .map(|(s, m)| (*s, *m))
            .collect();
        for (s, m) in hit {
            self.maps.remove(&s);
            let cut_lo = s.max(addr);
            let cut_hi = (s + m.len).min(end);
            if s < cut_lo {
                self.maps.insert(
                    s,
                    Map {
                        len: cut_lo - s,
                        alloc: m.alloc,
                    },
                );
            }
            if cut_hi < s + m.len {
                self.maps.insert(
                    cut_hi,
                    Map {
                        len: s + m.len - cut_hi,
                        alloc: m.alloc,
                    },
                );
            }
            if let Some((alen, live)) = self.allocs.get_mut(&m.alloc) {
                *live = live.saturating_sub(cut_hi - cut_lo);
                if *live == 0 {
                    let alen = *alen;
                    self.allocs.remove(&m.alloc);
                    p.free(m.alloc, alen);
                }
            }
        }
        Ok(())
    }

    /// `mremap(2)` of one whole mapping: shrinks in place, or grows by
    /// moving (with `may_move`).
    pub fn remap(
        &mut self,
        old: u64,
        old_len: u64,
        new_len: u64,
        may_move: bool,
        p: &mut impl Pages,
    ) -> Result<u64, MapError> {
        let old_len = pages(old_len).ok_or(MapError::Invalid)?;
        let new_len = pages(new_len).filter(|l| *l > 0).ok_or(MapError::Invalid)?;
        match self.maps.get(&old) {
            Some(m) if m.len == old_len => {}
            _ => return Err(MapError::Invalid),
        }
        if new_len <= old_len {
            self.unmap(old + new_len, old_len - new_len, p)?;
            return Ok(old);
        }
        if !may_move {
            return Err(MapError::NoMem);
        }
        let new = self.map(new_len, p)?;
        p.copy(old, new, old_len);
        self.unmap(old, old_len, p)?;
        Ok(new)
    }

    /// `MADV_DONTNEED`: the pages read as zeros afterwards, as on Linux.
    pub fn discard(&mut self, addr: u64, len: u64, p: &mut impl Pages) {
        let Some(len) = pages(len) else { return };
        let Some(end) = addr.checked_add(len) else {
            return;
        };
        let hit: alloc::vec::Vec<(u64, u64)> = self
            .maps
            .range(..end)
            .filter(|(s, m)| *s + m.len > addr)
            .map(|(s, m)| ((*s).max(addr), (*s + m.len).min(end)))
            .collect();
        for (lo, hi) in hit {
            p.zero(lo, hi - lo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Hands out ascending addresses and remembers frees and zeroings.
    #[derive(Default)]
    struct Fake {
        next: u64,
        freed: Vec<(u64, u64)>,
        zeroed: Vec<(u64, u64)>,
        copied: Vec<(u64, u64, u64)>,
    }

    impl Pages for Fake {
        fn alloc(&mut self, len: u64) -> Option<u64> {
            let a = 0x1000_0000 + self.next;
            self.next += len + PAGE;
            Some(a)
        }
        fn free(&mut self, base: u64, len: u64) {
            self.freed.push((base, len));
        }
        fn zero(&mut self, addr: u64, len: u64) {
            self.zeroed.push((addr, len));
        }
        fn copy(&mut self, from: u64, to: u64, len: u64) {
            self.copied.push((from, to, len));
        }
    }

    #[test]
    fn partial_unmaps_free_an_allocation_when_its_last_page_goes() {
        let mut p = Fake::default();
        let mut s = AddressSpace::new(0x80_0000, 0x100_0000);
        let a = s.map(5 * PAGE, &mut p).unwrap();
        s.unmap(a + PAGE, PAGE, &mut p).unwrap();
        assert!(p.freed.is_empty());
        s.unmap(a, PAGE, &mut p).unwrap();
        s.unmap(a + 2 * PAGE, 3 * PAGE, &mut p).unwrap();
        assert_eq!(p.freed, [(a, 5 * PAGE)]);
        assert_eq!(s.mapped(), 0);
        assert_eq!(s.unmap(a + 1, PAGE, &mut p), Err(MapError::Invalid));
    }

    #[test]
    fn brk_fixed_maps_and_remap() {
        let mut p = Fake::default();
        let mut s = AddressSpace::new(0x80_0000, 0x100_0000);
        assert_eq!(s.brk(0, &mut p), 0x80_0000);
        assert_eq!(s.brk(0x80_2000, &mut p), 0x80_2000);
        assert_eq!(s.brk(0x200_0000, &mut p), 0x80_2000, "beyond the area");
        // musl puts a guard page at the break with MAP_FIXED
        assert_eq!(s.map_fixed(0x80_2000, PAGE, &mut p), Ok(0x80_2000));
        assert_eq!(s.map_fixed(0x300_0000, PAGE, &mut p), Err(MapError::NoMem));
        let a = s.map(2 * PAGE, &mut p).unwrap();
        assert_eq!(s.map_fixed(a + PAGE, PAGE, &mut p), Ok(a + PAGE));
        let b = s.remap(a, 2 * PAGE, 8 * PAGE, true, &mut p).unwrap();
        assert_ne!(a, b);
        assert_eq!(p.copied, [(a, b, 2 * PAGE)]);
        assert_eq!(s.remap(b, 8 * PAGE, PAGE, false, &mut p), Ok(b));
        assert_eq!(
            s.remap(b, PAGE, 2 * PAGE, false, &mut p),
            Err(MapError::NoMem)
        );
        assert_eq!(
            s.remap(b + PAGE, PAGE, PAGE, true, &mut p),
            Err(MapError::Invalid)
        );
        s.discard(b, PAGE, &mut p);
        assert_eq!(p.zeroed.last(), Some(&(b, PAGE)));
    }
}
