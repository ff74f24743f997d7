//! The global allocator over `[heap_start, heap_end)` from BootParams.
//!
//! Talc: a maintained `no_std` allocator that is fast (bucketed free lists,
//! O(1) typical alloc/free, in-place realloc — the services grow `Vec`s
//! constantly) and compact, and it needs no OS. The guest is
//! single-threaded with no interrupts, so the lock-free `TalcSyncCell` is
//! sound here. The heap region is only known at boot, so a tiny `Source`
//! claims it on the first allocation.

use core::alloc::Layout;
use core::sync::atomic::{AtomicUsize, Ordering};

use talc::DefaultBinning;
use talc::base::Talc;
use talc::base::binning::Binning;
use talc::cell::{TalcCell, TalcSyncCell};
use talc::source::Source;

static HEAP_BASE: AtomicUsize = AtomicUsize::new(0);
static HEAP_SIZE: AtomicUsize = AtomicUsize::new(0);
/// A second region, claimed when the first runs out (the Linux
/// personality adds what the app's brk area leaves free).
static EXTRA_BASE: AtomicUsize = AtomicUsize::new(0);
static EXTRA_SIZE: AtomicUsize = AtomicUsize::new(0);

/// Claims the boot heap once, on the first allocation.
#[derive(Debug)]
pub struct BootHeap;

// SAFETY: `acquire` touches only the `Talc` it is handed and two atomics;
// it never allocates.
unsafe impl Source for BootHeap {
    fn acquire<B: Binning>(talc: &mut Talc<Self, B>, _layout: Layout) -> Result<(), ()> {
        let (mut base, mut size) = (
            HEAP_BASE.swap(0, Ordering::Relaxed),
            HEAP_SIZE.swap(0, Ordering::Relaxed),
        );
        if base == 0 || size == 0 {
            base = EXTRA_BASE.swap(0, Ordering::Relaxed);
            size = EXTRA_SIZE.swap(0, Ordering::Relaxed);
        }
        if base == 0 || size == 0 {
            return Err(());
        }
        // SAFETY: `init` was given the heap the VMM reserved for us; nothing
        // else uses it, and it is claimed only once (the atomics are zeroed).
        match unsafe { talc.claim(base as *mut u8, size) } {
            Some(_) => Ok(()),
            None => Err(()),
        }
    }
}

#[global_allocator]
// SAFETY: single-threaded, no interrupts or signals: no concurrent use.
static ALLOC: TalcSyncCell<BootHeap, DefaultBinning> =
    unsafe { TalcSyncCell::new(TalcCell::new(BootHeap)) };

/// Makes `[start, end)` the heap. Call once, before the first allocation.
pub fn init(start: u64, end: u64) {
    HEAP_BASE.store(start as usize, Ordering::Relaxed);
    HEAP_SIZE.store(end.saturating_sub(start) as usize, Ordering::Relaxed);
}

/// Adds `[start, end)` to the heap, claimed once the first region is used up.
pub fn add(start: u64, end: u64) {
    EXTRA_BASE.store(start as usize, Ordering::Relaxed);
    EXTRA_SIZE.store(end.saturating_sub(start) as usize, Ordering::Relaxed);
}
