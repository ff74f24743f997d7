//! virtio-blk for lockstep: the device model that runs on the vCPU thread
//! and the io_uring engine that runs on the I/O thread (docs/architecture.md).
//!
//! * [`BlkDevice`] parses the guest's requests at sync-call exits and applies
//!   completions; everything it does to guest memory is a deterministic
//!   function of guest memory, the call order and the completions passed in,
//!   so record/replay reproduces it exactly.
//! * [`DiskImage`] opens the image write-through (`O_DIRECT | O_DSYNC`).
//! * [`DiskEngine`] executes [`Request`]s on an io_uring owned by the I/O
//!   thread, with IO serialization and the output gate.
//!
//! `docs/devices.md` describes the behaviour in prose.

mod buf;
mod device;
mod engine;
mod error;
mod image;
mod request;
mod serial;

pub use buf::{AlignedBuf, BUF_ALIGN};
pub use device::{
    BlkConfig, BlkDevice, BlkStats, DEVICE_TYPE_BLOCK, MAX_CHAIN_BUFFERS, QUEUE_MAX_SIZE, SEG_MAX,
    SIZE_MAX,
};
pub use engine::{DiskEngine, EngineStats};
pub use error::BlkError;
pub use image::{DiskImage, DiskOpenOptions};
pub use request::{
    Completion, ID_BYTES, MAX_REQUEST_BYTES, Request, RequestOp, SECTOR_SIZE, STATUS_IOERR,
    STATUS_OK, STATUS_UNSUPP,
};
pub use serial::Footprint;

/// The engines' shared `user_data` layout and output gate.
pub use ioengine::{Lease, OutputGate, user_data_tag};
