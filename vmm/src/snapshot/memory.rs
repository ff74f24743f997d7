//! Guest memory for a live clone: iterative pre-copy with KVM's dirty-page
//! log while the guest runs, the final pass at the pause, and the joiner's
//! side that writes received pages into its own memory.
//!
//! KVM logs only the guest's own writes; the VMM's writes through its
//! mapping (received frames, disk read data, status bytes, sync results)
//! are noted as they are made (`virtq::host_writes`), and the used rings
//! are added by the caller: the pause resends exactly those pages and the
//! dirty ones. With `verify`, the pause also compares every other page's
//! hash with the hash it was sent with and counts what tracking missed
//! (tests; docs/join.md, "What must be cloned").

use std::sync::Arc;

use kvm_bindings::{KVM_MEM_LOG_DIRTY_PAGES, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use super::SnapshotError;
use super::wire::{MessageSink, Reader, Writer, kind};

/// Bytes of a page.
pub const PAGE: usize = 4096;
/// Pages in one `Pages` message at most (4 MiB of data).
pub const BATCH_PAGES: u32 = 1024;
/// `Pages.flags` bit 0: every page of the run is zero (no data follows).
const ZERO: u32 = 1;
/// Bytes of a `Pages` body before its data.
const PAGES_HEADER: usize = 16;

/// One page's contents hashed (xxh3, as the log's hashes).
fn page_hash(data: &[u8]) -> u64 {
    logchan::content_hash(data)
}

/// The guest memory of a running VM being copied.
pub struct PreCopy {
    vm: Arc<VmFd>,
    mem: GuestMemoryMmap,
    region: kvm_userspace_memory_region,
    pages: u64,
    /// The hash each page was last sent with.
    hashes: Vec<u64>,
    logging: bool,
    /// Rounds done so far (the first, whole-memory pass included).
    pub rounds: u32,
    /// Pages sent so far, zero pages included.
    pub pages_sent: u64,
    /// At the pause, also compare every page's hash (O(memory)): a check
    /// of the tracking, for tests.
    pub verify: bool,
    /// Pages the verification found changed that neither KVM's log nor
    /// the VMM's tracking reported (sent anyway); 0 is the expectation.
    pub missed: u64,
}

/// Page numbers, ascending, grouped into `Pages` messages.
struct Batcher<'a> {
    mem: &'a GuestMemoryMmap,
    hashes: &'a mut [u64],
    zero_hash: u64,
    run: Option<(u64, u32, bool, Vec<u8>)>,
    page: Vec<u8>,
}

impl<'a> Batcher<'a> {
    fn add(
        &mut self,
        p: u64,
        out: &mut dyn FnMut(Vec<u8>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        self.mem
            .read_slice(&mut self.page, GuestAddress(p * PAGE as u64))
            .map_err(|_| SnapshotError::Memory(p))?;
        let zero = self.page.iter().all(|b| *b == 0);
        let hash = if zero {
            self.zero_hash
        } else {
            page_hash(&self.page)
        };
        if let Some(slot) = self.hashes.get_mut(p as usize) {
            *slot = hash;
        }
        let extends = matches!(&self.run, Some((first, n, z, _))
            if *z == zero && first + u64::from(*n) == p && *n < BATCH_PAGES);
        if !extends {
            self.flush(out)?;
            self.run = Some((p, 0, zero, Vec::new()));
        }
        if let Some((_, n, z, data)) = self.run.as_mut() {
            *n += 1;
            if !*z {
                data.extend_from_slice(&self.page);
            }
        }
        Ok(())
    }

    fn flush(
        &mut self,
        out: &mut dyn FnMut(Vec<u8>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        if let Some((first, n, zero, data)) = self.run.take() {
            let mut w = Writer {
                buf: Vec::with_capacity(PAGES_HEADER + data.len()),
            };
            w.u64(first).u32(n).u32(if zero { ZERO } else { 0 });
            w.bytes(&data);
            out(w.buf)?;
        }
        Ok(())
    }
}

impl PreCopy {
    /// Turns on dirty-page logging for the guest's memory (slot 0, as
    /// `kvm::vm` registers it). From here every guest write is seen.
    pub fn start(vm: Arc<VmFd>, mem: GuestMemoryMmap) -> Result<PreCopy, SnapshotError> {
        let size = mem
            .last_addr()
            .0
            .checked_add(1)
            .ok_or(SnapshotError::Memory(0))?;
        // Before the log and the first round: a VMM write from here on is
        // either seen by the first round or noted.
        virtq::host_writes::start();
        let host = mem
            .get_host_address(GuestAddress(0))
            .map_err(|_| SnapshotError::Memory(0))?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: KVM_MEM_LOG_DIRTY_PAGES,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host as u64,
        };
        // SAFETY: the same slot, address and size `kvm::vm` registered for
        // this mapping, which `mem` keeps alive; only the flags change.
        unsafe { vm.set_user_memory_region(region) }.map_err(|source| SnapshotError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION (dirty logging on)",
            source,
        })?;
        let pages = size / PAGE as u64;
        Ok(PreCopy {
            vm,
            mem,
            region,
            pages,
            hashes: vec![0; pages as usize],
            logging: true,
            rounds: 0,
            pages_sent: 0,
            verify: false,
            missed: 0,
        })
    }

    /// Guest memory in pages.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The pages KVM saw written since the last call (the call clears
    /// the log).
    fn dirty(&self) -> Result<Vec<u64>, SnapshotError> {
        let bitmap = self
            .vm
            .get_dirty_log(0, self.region.memory_size as usize)
            .map_err(|source| SnapshotError::Kvm {
                what: "KVM_GET_DIRTY_LOG",
                source,
            })?;
        let mut out = Vec::new();
        for (w, word) in bitmap.iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let b = bits.trailing_zeros() as u64;
                let p = w as u64 * 64 + b;
                if p < self.pages {
                    out.push(p);
                }
                bits &= bits - 1;
            }
        }
        Ok(out)
    }

    fn send_pages(
        &mut self,
        pages: &[u64],
        out: &mut dyn FnMut(Vec<u8>) -> Result<(), SnapshotError>,
    ) -> Result<(), SnapshotError> {
        let mut b = Batcher {
            mem: &self.mem,
            hashes: &mut self.hashes,
            zero_hash: page_hash(&[0u8; PAGE]),
            run: None,
            page: vec![0u8; PAGE],
        };
        for &p in pages {
            b.add(p, out)?;
        }
        b.flush(out)?;
        self.pages_sent += pages.len() as u64;
        Ok(())
    }

    /// One pre-copy round while the guest runs: the whole memory the first
    /// time, then every page dirtied since the round before. Returns the
    /// pages sent.
    pub fn round(&mut self, sink: &mut dyn MessageSink) -> Result<u64, SnapshotError> {
        let pages: Vec<u64> = if self.rounds == 0 {
            // Clear what the log gathered before the copy began: all of it
            // is sent now.
            self.dirty()?;
            (0..self.pages).collect()
        } else {
            self.dirty()?
        };
        self.send_pages(&pages, &mut |body| sink.send(kind::PAGES, &body))?;
        self.rounds += 1;
        let mut w = Writer::default();
        w.u32(self.rounds).u32(0).u64(pages.len() as u64);
        sink.send(kind::ROUND, &w.buf)?;
        Ok(pages.len() as u64)
    }

    /// At the pause (guest stopped at an exit boundary, on the vCPU
    /// thread): the `Pages` bodies of every page not yet sent as it is now
    /// — dirty in KVM's log, written by the VMM since the copy began, or
    /// in `extra` (the used rings). Copied here, so the guest may run
    /// again before they are sent.
    pub fn final_pass(&mut self, extra: &[u64]) -> Result<(Vec<Vec<u8>>, u64), SnapshotError> {
        let mut pages = self.dirty()?;
        let dirty = pages.len();
        let host = virtq::host_writes::take();
        let host_written = host.len();
        pages.extend(host);
        pages.extend(extra.iter().copied().filter(|p| *p < self.pages));
        pages.sort_unstable();
        pages.dedup();
        if self.verify {
            let mut page = vec![0u8; PAGE];
            let mut missed = Vec::new();
            let mut known = pages.iter().copied().peekable();
            for p in 0..self.pages {
                if known.peek() == Some(&p) {
                    known.next();
                    continue;
                }
                self.mem
                    .read_slice(&mut page, GuestAddress(p * PAGE as u64))
                    .map_err(|_| SnapshotError::Memory(p))?;
                if self.hashes.get(p as usize) != Some(&page_hash(&page)) {
                    missed.push(p);
                }
            }
            if !missed.is_empty() {
                tracing::error!(
                    "join: {} changed pages were neither dirty nor tracked, e.g. {:?}",
                    missed.len(),
                    &missed[..missed.len().min(8)]
                );
            }
            self.missed += missed.len() as u64;
            pages.extend(missed);
            pages.sort_unstable();
        }
        let mut bodies = Vec::new();
        self.send_pages(&pages, &mut |body| {
            bodies.push(body);
            Ok(())
        })?;
        tracing::debug!(
            "join: final pass {dirty} dirty pages, {host_written} written by the VMM, {} in all",
            pages.len()
        );
        Ok((bodies, pages.len() as u64))
    }

    /// Turns dirty logging off again (also when dropped).
    pub fn stop(&mut self) {
        if !self.logging {
            return;
        }
        self.logging = false;
        virtq::host_writes::stop();
        let region = kvm_userspace_memory_region {
            flags: 0,
            ..self.region
        };
        // SAFETY: as in `start`: the same live mapping; flags back to 0.
        if let Err(e) = unsafe { self.vm.set_user_memory_region(region) } {
            tracing::warn!("turning dirty-page logging off: {e}");
        }
    }
}

impl Drop for PreCopy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The joiner: writes one `Pages` message into its memory; returns the
/// pages written. Every field is checked before a byte is written.
pub fn apply_pages(mem: &GuestMemoryMmap, body: &[u8]) -> Result<u64, SnapshotError> {
    let mut r = Reader::new(body, "Pages");
    let first = r.u64()?;
    let count = r.u32()?;
    let flags = r.u32()?;
    let bad = |why: String| SnapshotError::Bad { what: "Pages", why };
    if flags & !ZERO != 0 {
        return Err(bad(format!("unknown flags {flags:#x}")));
    }
    if count == 0 || count > BATCH_PAGES {
        return Err(bad(format!("{count} pages in one message")));
    }
    let mem_pages = mem.last_addr().0.checked_add(1).unwrap_or(0) / PAGE as u64;
    let end = first.checked_add(u64::from(count));
    if end.is_none_or(|e| e > mem_pages) {
        return Err(bad(format!(
            "pages {first}+{count} lie outside the guest's {mem_pages} pages"
        )));
    }
    let zero = flags & ZERO != 0;
    let data = r.take(if zero { 0 } else { count as usize * PAGE })?;
    r.finish()?;
    let zeros = [0u8; PAGE];
    for i in 0..u64::from(count) {
        let addr = GuestAddress((first + i) * PAGE as u64);
        let src = if zero {
            &zeros[..]
        } else {
            let at = i as usize * PAGE;
            &data[at..at + PAGE]
        };
        mem.write_slice(src, addr)
            .map_err(|_| SnapshotError::Memory(first + i))?;
    }
    Ok(u64::from(count))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem(pages: usize) -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), pages * PAGE)]).unwrap()
    }

    #[test]
    fn pages_messages_are_bounds_checked() {
        let m = mem(16);
        let mut w = Writer::default();
        w.u64(15).u32(1).u32(0).bytes(&[0xab; PAGE]);
        assert_eq!(apply_pages(&m, &w.buf).unwrap(), 1);
        let mut b = [0u8; 1];
        m.read_slice(&mut b, GuestAddress(15 * PAGE as u64))
            .unwrap();
        assert_eq!(b[0], 0xab);
        let mut w = Writer::default();
        w.u64(15).u32(1).u32(ZERO);
        apply_pages(&m, &w.buf).unwrap();
        m.read_slice(&mut b, GuestAddress(15 * PAGE as u64))
            .unwrap();
        assert_eq!(b[0], 0);
        for (first, count, flags, data) in [
            (16u64, 1u32, 0u32, PAGE),     // past the end
            (15, 2, 0, 2 * PAGE),          // runs past the end
            (u64::MAX, 2, ZERO, 0),        // overflows
            (0, 0, ZERO, 0),               // empty
            (0, BATCH_PAGES + 1, ZERO, 0), // too many
            (0, 1, 2, PAGE),               // unknown flag
            (0, 1, 0, PAGE - 1),           // short data
            (0, 1, ZERO, 1),               // data after a zero run
        ] {
            let mut w = Writer::default();
            w.u64(first).u32(count).u32(flags).bytes(&vec![1u8; data]);
            assert!(
                apply_pages(&m, &w.buf).is_err(),
                "{first} {count} {flags} {data}"
            );
        }
    }
}
