//! The virtio-drivers HAL: guest virtual = guest physical (identity map), so
//! DMA memory is page-aligned heap memory and sharing a buffer is free.

use core::alloc::Layout;
use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PAGE_SIZE, PhysAddr};

pub struct GuestHal;

fn layout(pages: usize) -> Layout {
    match Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE) {
        Ok(l) => l,
        Err(_) => panic!("DMA allocation of {pages} pages is too large"),
    }
}

// SAFETY: dma_alloc returns zeroed, page-aligned memory owned by the caller
// until dma_dealloc; addresses are identical for the device and the guest
// (identity map), so share/unshare need no copies.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _dir: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc::alloc_zeroed(layout(pages)) };
        let Some(p) = NonNull::new(p) else {
            panic!("out of memory allocating {pages} DMA pages");
        };
        (p.as_ptr() as PhysAddr, p)
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, vaddr: NonNull<u8>, pages: usize) -> i32 {
        // SAFETY: the caller passes back what dma_alloc returned.
        unsafe { alloc::alloc::dealloc(vaddr.as_ptr(), layout(pages)) };
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        match NonNull::new(paddr as *mut u8) {
            Some(p) => p,
            None => panic!("MMIO at address 0"),
        }
    }

    unsafe fn share(buffer: NonNull<[u8]>, _dir: BufferDirection) -> PhysAddr {
        buffer.as_ptr() as *mut u8 as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _dir: BufferDirection) {}
}
