//! The dataplane (docs/architecture.md, "Threads"): the vCPU thread's live
//! side of the sync call, the I/O thread behind it, the state they share,
//! and the interface through which an FT role joins the I/O thread.

pub mod io_thread;
pub mod join_point;
pub mod live;
pub mod pace;
pub mod plane;
pub mod shared;
