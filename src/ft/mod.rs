//! The fault-tolerant pair: roles, failure detection, go-live, arbitration.

pub mod arbiter;
pub mod backup_io;
pub mod channel_source;
pub mod plane;
pub mod shared;
pub mod supervisor;
