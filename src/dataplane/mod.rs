//! The dataplane: the vCPU thread's live side of the sync call and the I/O
//! thread behind it (DESIGN.md §3).

pub mod io_thread;
pub mod live;
pub mod shared;
