//! Non-blocking disk I/O over `VirtIOBlk`: jobs of any size are split into
//! chunks, as many chunks are in flight as the queue has descriptors, and
//! completions are collected after each sync call (the only time the
//! device touches the ring). Never a blocking virtio-drivers call: the used
//! ring only changes at sync calls, so a busy-wait would spin forever.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec;
use alloc::vec::Vec;

use virtio_drivers::device::blk::{BlkReq, BlkResp, RespStatus, SECTOR_SIZE, VirtIOBlk};
use virtio_drivers::transport::DeviceType;
use virtio_drivers::transport::mmio::MmioTransport;

use crate::devices;
use crate::hal::GuestHal;

/// Largest single request handed to the device.
pub const CHUNK: usize = 256 * 1024;

type Dev = VirtIOBlk<GuestHal, MmioTransport<'static>>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

struct Job {
    kind: Kind,
    sector: u64,
    data: Vec<u8>,
    /// Chunks not yet completed.
    outstanding: usize,
    ok: bool,
    user: u64,
}

/// One request on the ring. The request header and status live in boxes
/// so their addresses stay fixed while the device may write them.
struct Slot {
    job: u64,
    off: usize,
    len: usize,
    req: Box<BlkReq>,
    resp: Box<BlkResp>,
}

/// A finished job.
pub struct Done {
    pub user: u64,
    pub ok: bool,
    /// The bytes read (reads) or written (writes).
    pub data: Vec<u8>,
}

/// The disk.
pub struct Disk {
    dev: Dev,
    slots: BTreeMap<u16, Slot>,
    jobs: BTreeMap<u64, Job>,
    /// Chunks waiting for descriptors: (job, offset, length).
    waiting: VecDeque<(u64, usize, usize)>,
    next_job: u64,
    capacity: u64,
    read_only: bool,
}

impl Disk {
    /// Initializes the device in the window at `mmio`.
    pub fn open(mmio: u64) -> Result<Disk, &'static str> {
        let t = devices::open(mmio, DeviceType::Block)?;
        let dev = Dev::new(t).map_err(|_| "virtio-blk init failed")?;
        let capacity = dev.capacity();
        let read_only = dev.readonly();
        Ok(Disk {
            dev,
            slots: BTreeMap::new(),
            jobs: BTreeMap::new(),
            waiting: VecDeque::new(),
            next_job: 1,
            capacity,
            read_only,
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether the device is read-only.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Whether any job is unfinished.
    pub fn busy(&self) -> bool {
        !self.jobs.is_empty()
    }

    /// Number of unfinished jobs.
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    fn add(&mut self, kind: Kind, sector: u64, data: Vec<u8>, user: u64) {
        let id = self.next_job;
        self.next_job += 1;
        let len = data.len();
        let mut n = 0;
        let mut off = 0;
        while off < len {
            let l = CHUNK.min(len - off);
            self.waiting.push_back((id, off, l));
            off += l;
            n += 1;
        }
        self.jobs.insert(
            id,
            Job {
                kind,
                sector,
                data,
                outstanding: n,
                ok: true,
                user,
            },
        );
        self.pump();
    }

    /// Starts writing `data` (a whole number of sectors) at `sector`.
    pub fn write(&mut self, sector: u64, data: Vec<u8>, user: u64) {
        debug_assert!(data.len().is_multiple_of(SECTOR_SIZE) && !data.is_empty());
        self.add(Kind::Write, sector, data, user);
    }

    /// Starts reading `len` bytes (a whole number of sectors) at `sector`.
    pub fn read(&mut self, sector: u64, len: usize, user: u64) {
        self.add(Kind::Read, sector, vec![0u8; len], user);
    }

    /// Puts waiting chunks on the ring while descriptors last.
    fn pump(&mut self) {
        while let Some(&(id, off, len)) = self.waiting.front() {
            let Some(job) = self.jobs.get_mut(&id) else {
                self.waiting.pop_front();
                continue;
            };
            let mut req = Box::new(BlkReq::default());
            let mut resp = Box::new(BlkResp::default());
            let block = (job.sector + (off / SECTOR_SIZE) as u64) as usize;
            let buf = &mut job.data[off..off + len];
            // SAFETY: the job's data, the request and the status stay in
            // place (heap, owned by `jobs` / `slots`) and untouched until the
            // token shows up in the used ring and is completed in `reap`.
            let r = unsafe {
                match job.kind {
                    Kind::Write => self.dev.write_blocks_nb(block, &mut req, buf, &mut resp),
                    Kind::Read => self.dev.read_blocks_nb(block, &mut req, buf, &mut resp),
                }
            };
            match r {
                Ok(tok) => {
                    self.waiting.pop_front();
                    self.slots.insert(
                        tok,
                        Slot {
                            job: id,
                            off,
                            len,
                            req,
                            resp,
                        },
                    );
                }
                // Queue full: the rest waits for completions.
                Err(_) => break,
            }
        }
    }

    /// Collects completions (call after each sync call) into `done`.
    pub fn reap(&mut self, done: &mut Vec<Done>) {
        while let Some(tok) = self.dev.peek_used() {
            let Some(mut s) = self.slots.remove(&tok) else {
                panic!("virtio-blk: used token {tok} unknown");
            };
            let Some(job) = self.jobs.get_mut(&s.job) else {
                panic!("virtio-blk: completion for a finished job");
            };
            let buf = &mut job.data[s.off..s.off + s.len];
            // SAFETY: the same request, buffer and status the token was
            // submitted with.
            let r = unsafe {
                match job.kind {
                    Kind::Write => self
                        .dev
                        .complete_write_blocks(tok, &s.req, buf, &mut s.resp),
                    Kind::Read => self.dev.complete_read_blocks(tok, &s.req, buf, &mut s.resp),
                }
            };
            job.ok &= r.is_ok() && s.resp.status() == RespStatus::OK;
            job.outstanding -= 1;
            if job.outstanding == 0 {
                let id = s.job;
                if let Some(j) = self.jobs.remove(&id) {
                    done.push(Done {
                        user: j.user,
                        ok: j.ok,
                        data: j.data,
                    });
                }
            }
        }
        self.pump();
    }
}
