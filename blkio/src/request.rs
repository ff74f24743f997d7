//! virtio-blk requests: the owned form that crosses to the I/O thread and
//! back, and the parser that turns a validated descriptor chain into one.
//!
//! `Request` and `Completion` are plain data so the VMM can log them for
//! record/replay and rebuild them from logged bytes (`AlignedBuf::from_slice`).

use vm_memory::{Bytes, GuestAddress, GuestMemory};

use crate::buf::AlignedBuf;
use virtq::Segment;

/// Bytes per sector, the unit of `sector` and `capacity`.
pub const SECTOR_SIZE: u64 = 512;
/// Largest data transfer of one request (read or write), in bytes.
pub const MAX_REQUEST_BYTES: u32 = 1 << 20;
/// Length of the `GET_ID` answer (the serial), in bytes.
pub const ID_BYTES: usize = 20;

/// `VIRTIO_BLK_S_OK`.
pub const STATUS_OK: u8 = 0;
/// `VIRTIO_BLK_S_IOERR`.
pub const STATUS_IOERR: u8 = 1;
/// `VIRTIO_BLK_S_UNSUPP`.
pub const STATUS_UNSUPP: u8 = 2;

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const HEADER_LEN: u64 = 16;

/// A guest request that needs the disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Head index of the guest's descriptor chain; unique among the
    /// device's requests in flight.
    pub id: u16,
    /// What to do.
    pub op: RequestOp,
}

/// The operation of a [`Request`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// Read `len` bytes (a multiple of 512) starting at `sector`.
    Read {
        /// First sector.
        sector: u64,
        /// Bytes to read.
        len: u32,
    },
    /// Write `data` (length a multiple of 512) starting at `sector`; the data
    /// was copied out of guest memory when the request was taken.
    Write {
        /// First sector.
        sector: u64,
        /// The bytes, 4096-aligned for O_DIRECT.
        data: AlignedBuf,
    },
    /// Make completed writes durable (they already are: the image is
    /// O_DSYNC; the engine still issues an fdatasync).
    Flush,
}

impl Request {
    /// Sectors `[start, end)` the request touches; `None` for a flush.
    pub fn sector_range(&self) -> Option<(u64, u64)> {
        match &self.op {
            RequestOp::Read { sector, len } => Some((
                *sector,
                sector.saturating_add(u64::from(*len) / SECTOR_SIZE),
            )),
            RequestOp::Write { sector, data } => Some((
                *sector,
                sector.saturating_add(data.len() as u64 / SECTOR_SIZE),
            )),
            RequestOp::Flush => None,
        }
    }
}

/// The result of a [`Request`], produced by the engine (or from the log on a
/// backup) and applied to guest memory by `BlkDevice::complete`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// The request's `id`.
    pub id: u16,
    /// `STATUS_OK`, `STATUS_IOERR` or `STATUS_UNSUPP`.
    pub status: u8,
    /// For a successful read: exactly the bytes read. Otherwise `None`.
    pub data: Option<AlignedBuf>,
}

impl Completion {
    /// Success without data (write, flush).
    pub fn ok(id: u16) -> Self {
        Self {
            id,
            status: STATUS_OK,
            data: None,
        }
    }

    /// A failure with `status`.
    pub fn error(id: u16, status: u8) -> Self {
        Self {
            id,
            status,
            data: None,
        }
    }

    /// A successful read.
    pub fn read(id: u16, data: AlignedBuf) -> Self {
        Self {
            id,
            status: STATUS_OK,
            data: Some(data),
        }
    }

    /// The data as bytes (empty when there is none), e.g. for hashing.
    pub fn data_bytes(&self) -> &[u8] {
        self.data.as_deref().unwrap_or(&[])
    }
}

/// Every way a request chain can be malformed. The discriminant indexes the
/// per-kind warning limiter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    /// The descriptor chain itself is broken (see `ChainError`).
    Chain = 0,
    /// A buffer of length zero.
    ZeroLengthBuffer,
    /// No device-writable byte for the status.
    NoStatus,
    /// Fewer than 16 device-readable bytes for the header.
    ShortHeader,
    /// Data in the wrong direction for the request type, or data where the
    /// type takes none.
    DataDirection,
    /// A read/write without data, or not a multiple of 512 bytes.
    DataLength,
    /// More than `MAX_REQUEST_BYTES` of data.
    TooLarge,
    /// Sectors beyond the capacity.
    PastCapacity,
    /// A write to a read-only device.
    ReadOnly,
    /// A request type the device does not implement.
    Unsupported,
    /// The head is already in flight (the driver reused it).
    HeadInFlight,
    /// The avail ring index is broken.
    AvailRing,
}

/// Number of `Malformed` kinds.
pub(crate) const MALFORMED_KINDS: usize = Malformed::AvailRing as usize + 1;

/// Where a request's status byte lives: the last byte of the last writable
/// buffer, if that buffer has a byte.
pub(crate) fn status_addr(segs: &[Segment]) -> Option<GuestAddress> {
    let last = segs.last().filter(|s| s.writable && s.len > 0)?;
    Some(GuestAddress(last.addr.0 + u64::from(last.len) - 1))
}

/// What `parse` found in a chain whose status byte is reachable.
#[derive(Debug)]
pub(crate) enum Parsed {
    /// A read: data goes into `dest` (the writable bytes minus the status).
    Read {
        sector: u64,
        len: u32,
        dest: Vec<Segment>,
    },
    /// A write whose data has been copied out.
    Write { sector: u64, data: AlignedBuf },
    /// A flush.
    Flush,
    /// GET_ID: answer with up to `room` bytes of the serial into `dest`.
    GetId { dest: Vec<Segment>, room: u32 },
    /// Complete at once with `status`.
    Reject { status: u8, why: Malformed },
}

/// Splits the writable buffers into data and the trailing status byte.
fn writable_data(segs: &[Segment]) -> Vec<Segment> {
    let mut dest: Vec<Segment> = segs.iter().filter(|s| s.writable).copied().collect();
    if let Some(last) = dest.last_mut() {
        last.len -= 1;
        if last.len == 0 {
            dest.pop();
        }
    }
    dest
}

/// Parses a walked chain. The caller has checked that the status byte is
/// reachable (`status_addr` is `Some`).
pub(crate) fn parse<M: GuestMemory + ?Sized>(
    mem: &M,
    segs: &[Segment],
    capacity_sectors: u64,
    read_only: bool,
) -> Parsed {
    let reject = |status, why| Parsed::Reject { status, why };
    if segs.iter().any(|s| s.len == 0) {
        return reject(STATUS_IOERR, Malformed::ZeroLengthBuffer);
    }
    let readable: u64 = segs
        .iter()
        .filter(|s| !s.writable)
        .map(|s| u64::from(s.len))
        .sum();
    let writable: u64 = segs
        .iter()
        .filter(|s| s.writable)
        .map(|s| u64::from(s.len))
        .sum();
    let mut header = [0u8; HEADER_LEN as usize];
    if readable < HEADER_LEN || !virtq::read_from_segments(mem, segs, 0, &mut header) {
        return reject(STATUS_IOERR, Malformed::ShortHeader);
    }
    let req_type = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    // header[4..8] is `ioprio` (legacy "reserved"): Linux fills it, we ignore it.
    let sector = u64::from_le_bytes([
        header[8], header[9], header[10], header[11], header[12], header[13], header[14],
        header[15],
    ]);
    let data_in = readable - HEADER_LEN; // device-readable payload
    let data_out = writable - 1; // device-writable payload before the status

    match req_type {
        T_IN | T_OUT => {
            let (len, wrong_dir) = if req_type == T_IN {
                (data_out, data_in != 0)
            } else {
                (data_in, data_out != 0)
            };
            if wrong_dir {
                return reject(STATUS_IOERR, Malformed::DataDirection);
            }
            if len == 0 || !len.is_multiple_of(SECTOR_SIZE) {
                return reject(STATUS_IOERR, Malformed::DataLength);
            }
            if len > u64::from(MAX_REQUEST_BYTES) {
                return reject(STATUS_IOERR, Malformed::TooLarge);
            }
            let end = sector.checked_add(len / SECTOR_SIZE);
            if end.is_none_or(|e| e > capacity_sectors) {
                return reject(STATUS_IOERR, Malformed::PastCapacity);
            }
            // Bounded by MAX_REQUEST_BYTES just above.
            let len32 = len as u32;
            if req_type == T_IN {
                return Parsed::Read {
                    sector,
                    len: len32,
                    dest: writable_data(segs),
                };
            }
            if read_only {
                return reject(STATUS_IOERR, Malformed::ReadOnly);
            }
            let mut data = AlignedBuf::zeroed(len as usize);
            if !virtq::read_from_segments(mem, segs, HEADER_LEN, &mut data) {
                // Ranges were checked by the walk; memory that vanished is an IO error.
                return reject(STATUS_IOERR, Malformed::Chain);
            }
            Parsed::Write { sector, data }
        }
        T_FLUSH => {
            if data_in != 0 || data_out != 0 {
                return reject(STATUS_IOERR, Malformed::DataDirection);
            }
            Parsed::Flush
        }
        T_GET_ID => {
            if data_in != 0 || data_out == 0 {
                return reject(STATUS_IOERR, Malformed::DataDirection);
            }
            // data_out < 2^32: it is a sum of writable u32 lengths bounded by
            // the walk's buffer limit, but clamp to be safe.
            let room = data_out.min(ID_BYTES as u64) as u32;
            Parsed::GetId {
                dest: writable_data(segs),
                room,
            }
        }
        _ => reject(STATUS_UNSUPP, Malformed::Unsupported),
    }
}

/// Writes a status byte; failure only means the guest pointed it at memory
/// that vanished, which the walk already excluded.
pub(crate) fn write_status<M: GuestMemory + ?Sized>(mem: &M, at: GuestAddress, status: u8) {
    if mem.write_obj(status, at).is_err() {
        tracing::warn!(addr = at.0, "virtio-blk status byte is not writable");
    }
    virtq::host_writes::note(at.0, 1);
}
