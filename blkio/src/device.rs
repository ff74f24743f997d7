//! The virtio-blk device model. It runs on the vCPU thread, only while the
//! VMM handles an exit, and is the only code that touches the guest's blk
//! queue. Every change it makes to guest memory is a function of guest
//! memory, the order of calls, and the `Completion`s passed in, so a backup
//! that repeats the calls with logged completions ends with identical memory.

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemory;

use crate::BlkError;
use crate::request::{
    self, Completion, ID_BYTES, MALFORMED_KINDS, MAX_REQUEST_BYTES, Malformed, Parsed, Request,
    RequestOp, SECTOR_SIZE, STATUS_IOERR, STATUS_OK,
};
use virtq::{Segment, WarnLimiter};

/// virtio device type of a block device.
pub const DEVICE_TYPE_BLOCK: u32 = 2;
/// Largest queue the device accepts (the transport's `QueueMaxSize`).
pub const QUEUE_MAX_SIZE: u16 = 256;
/// Largest number of buffers in one chain (header, data, status).
pub const MAX_CHAIN_BUFFERS: usize = 256;
/// Advertised `seg_max`: data buffers per request.
pub const SEG_MAX: u32 = MAX_CHAIN_BUFFERS as u32 - 2;
/// Advertised `size_max`: a guest that keeps each buffer within a page and
/// uses at most `SEG_MAX` of them stays under `MAX_REQUEST_BYTES`.
pub const SIZE_MAX: u32 = 4096;

const VIRTIO_F_VERSION_1: u32 = 32;
const VIRTIO_RING_F_INDIRECT_DESC: u32 = 28;
const VIRTIO_BLK_F_SIZE_MAX: u32 = 1;
const VIRTIO_BLK_F_SEG_MAX: u32 = 2;
const VIRTIO_BLK_F_RO: u32 = 5;
const VIRTIO_BLK_F_BLK_SIZE: u32 = 6;
/// Bytes of configuration space (`virtio_blk_config` up to `opt_io_size`).
const CONFIG_LEN: usize = 36;

/// What the VMM tells the device about its disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors (`DiskImage::capacity_sectors`).
    pub capacity_sectors: u64,
    /// Offer `VIRTIO_BLK_F_RO` and fail every write.
    pub read_only: bool,
    /// The `GET_ID` answer (NUL-padded).
    pub serial: [u8; ID_BYTES],
}

/// Counters the VMM can read at any time (plain fields; the vCPU thread
/// owns the device).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Valid reads handed out.
    pub reads: u64,
    /// Valid writes handed out.
    pub writes: u64,
    /// Flushes handed out.
    pub flushes: u64,
    /// GET_ID requests answered.
    pub get_ids: u64,
    /// Bytes of valid reads.
    pub read_bytes: u64,
    /// Bytes of valid writes.
    pub write_bytes: u64,
    /// Chains rejected as malformed (all kinds but `Unsupported`).
    pub malformed: u64,
    /// Requests of types the device does not implement.
    pub unsupported: u64,
    /// Completions applied (from the engine or the log).
    pub completed: u64,
    /// Completions that came back with an error status.
    pub completed_errors: u64,
}

/// What the device remembers about a request it handed out, to complete it.
#[derive(Debug)]
struct InFlight {
    /// Read destination (writable bytes minus the status); empty otherwise.
    dest: Vec<Segment>,
    /// Expected read length; 0 for writes and flushes.
    read_len: u32,
    status_at: vm_memory::GuestAddress,
}

/// The virtio-blk device model.
#[derive(Debug)]
pub struct BlkDevice {
    config: BlkConfig,
    queue: Option<Queue>,
    in_flight: Vec<Option<InFlight>>,
    in_flight_count: usize,
    stats: BlkStats,
    warn: WarnLimiter,
    used_event: bool,
    segs: Vec<Segment>,
}

impl BlkDevice {
    /// A device that is not activated yet.
    pub fn new(config: BlkConfig) -> Self {
        Self {
            config,
            queue: None,
            in_flight: Vec::new(),
            in_flight_count: 0,
            stats: BlkStats::default(),
            warn: WarnLimiter::new(MALFORMED_KINDS),
            used_event: false,
            segs: Vec::with_capacity(MAX_CHAIN_BUFFERS),
        }
    }

    /// `VIRTIO_ID_BLOCK`.
    pub fn device_type(&self) -> u32 {
        DEVICE_TYPE_BLOCK
    }

    /// Number of queues (one request queue).
    pub fn num_queues(&self) -> usize {
        1
    }

    /// Largest queue size the transport may offer.
    pub fn queue_max_size(&self) -> u16 {
        QUEUE_MAX_SIZE
    }

    /// Offered features. No FLUSH: the image is write-through (O_DSYNC), so
    /// the guest has no volatile cache to flush; no EVENT_IDX: the guest never
    /// kicks and takes no interrupts.
    pub fn features(&self) -> u64 {
        let mut f = (1u64 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_BLK_F_SIZE_MAX)
            | (1 << VIRTIO_BLK_F_SEG_MAX)
            | (1 << VIRTIO_BLK_F_BLK_SIZE);
        if self.config.read_only {
            f |= 1 << VIRTIO_BLK_F_RO;
        }
        f
    }

    /// The device's configuration.
    pub fn config(&self) -> &BlkConfig {
        &self.config
    }

    fn config_bytes(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        c[0..8].copy_from_slice(&self.config.capacity_sectors.to_le_bytes());
        c[8..12].copy_from_slice(&SIZE_MAX.to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        // 16..20: geometry, unused.
        c[20..24].copy_from_slice(&(SECTOR_SIZE as u32).to_le_bytes());
        // 24..36: topology (physical_block_exp, alignment, min/opt io), zero.
        c
    }

    /// Reads configuration space at `offset`; bytes outside it read as 0.
    pub fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtq::read_config(&self.config_bytes(), offset, data);
    }

    /// Configuration space is read-only; writes are ignored (and logged).
    pub fn write_config(&mut self, offset: u64, data: &[u8]) {
        tracing::warn!(
            offset,
            len = data.len(),
            "virtio-blk: ignoring config write"
        );
    }

    /// Starts the device on `queue` (configured and marked ready by the
    /// transport). Tells the driver not to notify: the device looks at the
    /// queue at every sync call anyway.
    pub fn activate<M: GuestMemory>(&mut self, mut queue: Queue, mem: &M) -> Result<(), BlkError> {
        if self.queue.is_some() {
            return Err(BlkError::AlreadyActive);
        }
        if !queue.ready() {
            return Err(BlkError::QueueNotReady);
        }
        if !queue.is_valid(mem) {
            return Err(BlkError::QueueInvalid);
        }
        queue.set_event_idx(false);
        queue
            .disable_notification(mem)
            .map_err(|_| BlkError::QueueInvalid)?;
        self.in_flight = (0..queue.size()).map(|_| None).collect();
        self.in_flight_count = 0;
        self.queue = Some(queue);
        Ok(())
    }

    /// Back to the pre-activation state. Requests still in the engine are
    /// forgotten: their completions will be refused with `UnknownId` (the VMM
    /// should let the engine finish them first; see docs/devices.md).
    pub fn reset(&mut self) {
        self.queue = None;
        self.in_flight.clear();
        self.in_flight_count = 0;
        self.used_event = false;
    }

    /// True between `activate` and `reset`.
    pub fn is_active(&self) -> bool {
        self.queue.is_some()
    }

    /// The active queue's state, for a live clone (docs/join.md); the
    /// clone is taken only with no request in flight.
    pub fn queue_state(&self) -> Option<virtio_queue::QueueState> {
        self.queue.as_ref().map(|q| q.state())
    }

    /// Requests handed out and not completed yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight_count
    }

    /// Counters.
    pub fn stats(&self) -> &BlkStats {
        &self.stats
    }

    /// True if used entries were published since the last call (the VMM
    /// sets `EV_BLK` in the sync call's event mask).
    pub fn take_used_event(&mut self) -> bool {
        std::mem::take(&mut self.used_event)
    }

    fn note(&mut self, why: Malformed, head: u16, detail: &dyn std::fmt::Display) {
        if why == Malformed::Unsupported {
            self.stats.unsupported += 1;
        } else {
            self.stats.malformed += 1;
        }
        if let Some(n) = self.warn.hit(why as usize) {
            tracing::warn!(head, kind = ?why, count = n, "virtio-blk: rejected request: {detail}");
        }
    }

    fn add_used<M: GuestMemory>(&mut self, mem: &M, head: u16, len: u32) {
        let Some(q) = self.queue.as_mut() else { return };
        if head >= q.size() {
            return; // an impossible head has no used entry to give back
        }
        match q.add_used(mem, head, len) {
            Ok(()) => self.used_event = true,
            Err(e) => tracing::warn!(head, "virtio-blk: cannot add used entry: {e}"),
        }
    }

    /// Pops every new chain from the avail ring. Valid requests go to `out`
    /// (write data copied out of guest memory now); invalid ones are
    /// completed at once with an error status if their status byte is
    /// reachable, with a zero-length used entry otherwise. GET_ID is answered
    /// here: it needs no disk. Returns the number of requests added to `out`.
    pub fn take_requests<M: GuestMemory>(&mut self, mem: &M, out: &mut Vec<Request>) -> usize {
        let before = out.len();
        while let Some(queue) = self.queue.as_mut() {
            let head = match virtq::pop_head(queue, mem) {
                Ok(Some(h)) => h,
                Ok(None) => break,
                Err(e) => {
                    // Nothing can be consumed until the driver fixes avail.idx.
                    self.note(Malformed::AvailRing, 0, &e);
                    break;
                }
            };
            self.take_one(mem, head, out);
        }
        out.len() - before
    }

    fn take_one<M: GuestMemory>(&mut self, mem: &M, head: u16, out: &mut Vec<Request>) {
        let Some(queue) = self.queue.as_ref() else {
            return;
        };
        let (table, size) = (vm_memory::GuestAddress(queue.desc_table()), queue.size());
        if self
            .in_flight
            .get(usize::from(head))
            .is_some_and(Option::is_some)
        {
            // Completing it would hand the guest two used entries for one head;
            // ignoring it keeps the in-flight request's completion intact.
            self.note(Malformed::HeadInFlight, head, &"head already in flight");
            return;
        }
        let mut segs = std::mem::take(&mut self.segs);
        let walked = virtq::walk_chain(mem, table, size, head, MAX_CHAIN_BUFFERS, &mut segs);
        let result = match walked {
            Err(e) => {
                self.note(Malformed::Chain, head, &e);
                self.add_used(mem, head, 0);
                None
            }
            Ok(()) => match request::status_addr(&segs) {
                None => {
                    self.note(Malformed::NoStatus, head, &"no writable status byte");
                    self.add_used(mem, head, 0);
                    None
                }
                Some(status_at) => self.dispatch(mem, head, &segs, status_at),
            },
        };
        self.segs = segs;
        if let Some(req) = result {
            out.push(req);
        }
    }

    fn dispatch<M: GuestMemory>(
        &mut self,
        mem: &M,
        head: u16,
        segs: &[Segment],
        status_at: vm_memory::GuestAddress,
    ) -> Option<Request> {
        let cfg = self.config;
        let (op, dest, read_len) =
            match request::parse(mem, segs, cfg.capacity_sectors, cfg.read_only) {
                Parsed::Reject { status, why } => {
                    self.note(why, head, &"malformed or unsupported request");
                    request::write_status(mem, status_at, status);
                    self.add_used(mem, head, 1);
                    return None;
                }
                Parsed::GetId { dest, room } => {
                    let n = room as usize;
                    let ok = virtq::write_to_segments(mem, &dest, 0, &cfg.serial[..n]);
                    let status = if ok { STATUS_OK } else { STATUS_IOERR };
                    request::write_status(mem, status_at, status);
                    self.add_used(mem, head, room + 1);
                    self.stats.get_ids += 1;
                    return None;
                }
                Parsed::Read { sector, len, dest } => {
                    self.stats.reads += 1;
                    self.stats.read_bytes += u64::from(len);
                    (RequestOp::Read { sector, len }, dest, len)
                }
                Parsed::Write { sector, data } => {
                    self.stats.writes += 1;
                    self.stats.write_bytes += data.len() as u64;
                    (RequestOp::Write { sector, data }, Vec::new(), 0)
                }
                Parsed::Flush => {
                    self.stats.flushes += 1;
                    (RequestOp::Flush, Vec::new(), 0)
                }
            };
        let slot = self.in_flight.get_mut(usize::from(head))?;
        *slot = Some(InFlight {
            dest,
            read_len,
            status_at,
        });
        self.in_flight_count += 1;
        Some(Request { id: head, op })
    }

    /// Applies a completion: copies read data into the buffers remembered at
    /// take time, writes the status byte, publishes the used entry.
    ///
    /// An id that is not in flight is refused without touching memory. A
    /// successful read whose data length differs from the request is a VMM
    /// bug: the guest gets `IOERR` (so it does not hang) and the call
    /// returns `BadCompletion`.
    pub fn complete<M: GuestMemory>(&mut self, mem: &M, c: &Completion) -> Result<(), BlkError> {
        if self.queue.is_none() {
            return Err(BlkError::NotActivated);
        }
        let f = self
            .in_flight
            .get_mut(usize::from(c.id))
            .and_then(Option::take)
            .ok_or(BlkError::UnknownId(c.id))?;
        self.in_flight_count -= 1;
        let mut status = c.status;
        let mut used = 1u32;
        let mut bad = None;
        if f.read_len > 0 && status == STATUS_OK {
            let got = c.data.as_ref().map_or(0, |d| d.len());
            if got != f.read_len as usize {
                bad = Some(got);
                status = STATUS_IOERR;
            } else if virtq::write_to_segments(mem, &f.dest, 0, c.data_bytes()) {
                used += f.read_len;
            } else {
                status = STATUS_IOERR;
            }
        }
        request::write_status(mem, f.status_at, status);
        self.add_used(mem, c.id, used);
        self.stats.completed += 1;
        if status != STATUS_OK {
            self.stats.completed_errors += 1;
        }
        match bad {
            Some(got) => Err(BlkError::BadCompletion {
                id: c.id,
                expected: f.read_len,
                got,
            }),
            None => Ok(()),
        }
    }
}

// The read length bound keeps `used` (data + status) inside u32.
const _: () = assert!(MAX_REQUEST_BYTES < u32::MAX);
