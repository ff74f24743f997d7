//! virtio-net for lockstep: the device model that runs on the vCPU thread,
//! and the tap engine that runs on the I/O thread (docs/architecture.md).
//!
//! * [`NetDevice`] takes the guest's TX frames and places received frames
//!   into its RX buffers, only at sync-call exits; everything it does to
//!   guest memory is a deterministic function of guest memory, the call order
//!   and the frames passed in, so record/replay reproduces it exactly.
//! * [`Tap`] opens a tap interface (`IFF_TAP | IFF_NO_PI`, no vnet header).
//! * [`TapEngine`] reads and writes the tap through an io_uring owned by the
//!   I/O thread, and holds TX frames behind the output gate.
//!
//! `docs/devices.md` describes the behaviour in prose.

mod device;
mod engine;
mod error;
mod frame;
mod tap;

pub use device::{DEVICE_TYPE_NET, NetDevice, NetStats, QUEUE_MAX_SIZE, RX_QUEUE, TX_QUEUE};
pub use engine::{MAX_HELD_FRAMES, RX_BUF_LEN, TX_DEPTH, TapEngine, TapStats};
pub use error::NetError;
pub use frame::{MAX_FRAME_LEN, MIN_FRAME_LEN, MIN_RX_BUFFER, NET_HDR_LEN, gratuitous_arp};
pub use tap::{Tap, TapError};

/// The engines' shared `user_data` layout and output gate.
pub use ioengine::{Lease, OutputGate, user_data_tag};
