//! Which guest pages the VMM itself writes while a live clone runs
//! (docs/join.md). KVM's dirty log sees only the guest's writes; the VMM's
//! writes into guest memory (frames and disk data into buffers, status
//! bytes, the sync call's results) all go through a few helpers, which
//! note them here. The used rings, written by `virtio-queue`, are added by
//! the clone from the queues' addresses. Off (one atomic load per write)
//! unless a copy is tracking.
//!
//! A write is noted *after* it is made, with a sequentially consistent
//! fence between: a tracker that starts (its own fence) and then reads a
//! page either sees the write in the page, or the writer sees the tracker
//! on and notes the page.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering, fence};

const PAGE_SHIFT: u32 = 12;

static TRACKING: AtomicBool = AtomicBool::new(false);
static PAGES: Mutex<Vec<u64>> = Mutex::new(Vec::new());

/// Starts tracking (forgets what an earlier copy noted).
pub fn start() {
    if let Ok(mut p) = PAGES.lock() {
        p.clear();
    }
    TRACKING.store(true, Ordering::SeqCst);
    fence(Ordering::SeqCst);
}

/// Stops tracking; returns every page noted since [`start`] or the last
/// [`take`].
pub fn stop() -> Vec<u64> {
    TRACKING.store(false, Ordering::SeqCst);
    take()
}

/// The pages noted so far, sorted, each once; tracking goes on.
pub fn take() -> Vec<u64> {
    let mut pages = PAGES
        .lock()
        .map(|mut p| std::mem::take(&mut *p))
        .unwrap_or_default();
    pages.sort_unstable();
    pages.dedup();
    pages
}

/// Notes that the VMM wrote `len` bytes at guest address `addr`.
pub fn note(addr: u64, len: usize) {
    fence(Ordering::SeqCst);
    if len == 0 || !TRACKING.load(Ordering::SeqCst) {
        return;
    }
    let first = addr >> PAGE_SHIFT;
    let last = addr.saturating_add(len as u64 - 1) >> PAGE_SHIFT;
    if let Ok(mut p) = PAGES.lock() {
        p.extend(first..=last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_are_noted_only_while_tracking_and_by_page() {
        note(0x1000, 1);
        start();
        note(0x1ff0, 0x20);
        note(0x5000, 0);
        note(0x1ff0, 1);
        assert_eq!(take(), vec![1, 2]);
        note(0x9000, 4096);
        assert_eq!(stop(), vec![9]);
        note(0xa000, 1);
        assert!(take().is_empty());
    }
}
