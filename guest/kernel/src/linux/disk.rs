//! The virtio disk for the personality: synchronous block I/O for the file
//! system (the thread that called `fsync` or `read` waits, and so does
//! every other: the personality runs nothing else meanwhile), and the app
//! area the VMM wrote at the start of the disk.

use alloc::vec::Vec;

use lockstep_guest_abi::EV_STOP;
use lockstep_guest_abi::linux::{APP_AREA_BYTES, APP_HEADER_BYTES, AppHeader};
use lockstep_guest_linux::fs::{BlockDev, IoError, layout::BLOCK};
use lockstep_guest_services::crc32c::crc32c;

use super::kernel::MAX_WAIT_NS;
use crate::blk::{Disk, Done};
use crate::ports;

const SECTOR: u64 = 512;

/// The disk, with what its waits saw for the kernel to pick up.
pub struct BlkDev {
    disk: Disk,
    /// First sector of the file system.
    base: u64,
    pub now: u64,
    pub stop: bool,
    syncs: u64,
    done: Vec<Done>,
}

impl BlkDev {
    pub fn new(disk: Disk, now: u64) -> BlkDev {
        BlkDev {
            disk,
            base: APP_AREA_BYTES / SECTOR,
            now,
            stop: false,
            syncs: 0,
            done: Vec::new(),
        }
    }

    pub fn read_only(&self) -> bool {
        self.disk.read_only()
    }

    /// File-system blocks behind the app area.
    pub fn fs_blocks(&self) -> u64 {
        (self.disk.capacity().saturating_sub(self.base) * SECTOR) / BLOCK as u64
    }

    pub fn take_syncs(&mut self) -> u64 {
        core::mem::take(&mut self.syncs)
    }

    /// Sync calls until every submitted job is done; false if one failed.
    fn wait_all(&mut self, jobs: usize, mut got: impl FnMut(Done)) -> bool {
        let mut ok = true;
        let mut left = jobs;
        while left > 0 {
            let s = ports::sync(true, self.now.saturating_add(MAX_WAIT_NS));
            self.now = self.now.max(s.now_ns);
            self.stop |= s.events & EV_STOP != 0;
            self.syncs += 1;
            self.disk.reap(&mut self.done);
            for d in self.done.drain(..) {
                ok &= d.ok;
                left = left.saturating_sub(1);
                got(d);
            }
        }
        ok
    }

    /// Reads `len` bytes (whole sectors) at `sector`.
    pub fn read_sectors(&mut self, sector: u64, len: usize) -> Option<Vec<u8>> {
        self.disk.read(sector, len, 0);
        let mut data = None;
        let ok = self.wait_all(1, |d| data = Some(d.data));
        if ok { data } else { None }
    }

    /// The app header block and the ELF bytes it describes, checked
    /// against their CRCs (and `want_crc`, the `app=` boot word).
    pub fn app(
        &mut self,
        want_crc: Option<u32>,
    ) -> Result<(AppHeader, Vec<u8>, Vec<u8>), &'static str> {
        let block = self
            .read_sectors(0, APP_HEADER_BYTES)
            .ok_or("cannot read the app area")?;
        let arr: &[u8; APP_HEADER_BYTES] = block.as_slice().try_into().map_err(|_| "short read")?;
        let h =
            AppHeader::decode(arr).map_err(|_| "the disk holds no app (run with --app PATH)")?;
        let mut zeroed = block.clone();
        zeroed[8..12].fill(0);
        if crc32c(&zeroed) != h.header_crc {
            return Err("the app header's checksum does not match");
        }
        if want_crc.is_some_and(|c| c != h.elf_crc) {
            return Err("the app on the disk is not the one the boot line names (app=)");
        }
        let len = h.elf_len as usize;
        let mut elf = self
            .read_sectors(
                APP_HEADER_BYTES as u64 / SECTOR,
                len.next_multiple_of(SECTOR as usize),
            )
            .ok_or("cannot read the app")?;
        elf.truncate(len);
        if crc32c(&elf) != h.elf_crc {
            return Err("the app's checksum does not match its header");
        }
        let strings = h.strings(arr).ok_or("bad app header")?.to_vec();
        Ok((h, strings, elf))
    }
}

impl BlockDev for BlkDev {
    fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), IoError> {
        let sector = self.base + block * (BLOCK as u64 / SECTOR);
        let data = self.read_sectors(sector, out.len()).ok_or(IoError)?;
        out.copy_from_slice(&data);
        Ok(())
    }

    fn write(&mut self, writes: &[(u64, &[u8])]) -> Result<(), IoError> {
        if self.disk.read_only() {
            return Err(IoError);
        }
        for (block, data) in writes {
            let sector = self.base + block * (BLOCK as u64 / SECTOR);
            self.disk.write(sector, data.to_vec(), 0);
        }
        if self.wait_all(writes.len(), |_| {}) {
            Ok(())
        } else {
            Err(IoError)
        }
    }
}
