//! What every io_uring engine on the I/O thread shares (the disk and tap
//! engines, the logging channel and the heartbeats): the layout of an SQE's
//! `user_data`, by which the I/O thread hands each completion to its engine,
//! the output gate, where an engine enforces the output rule at the last
//! step before an output leaves the host, and the fence, where the kernel
//! enforces the output lease even on a process that is paused between its
//! check and its system call (docs/architecture.md, docs/failover.md).

mod fence;
mod gate;
mod user_data;

pub use fence::{Fence, FenceError, FenceEvent, FenceState};
pub use gate::{Lease, OutputGate};
pub use user_data::{ID_MASK, user_data, user_data_id, user_data_kind, user_data_tag};
