//! The non-service workloads: CPU, disk and idle exercises for the VMM's
//! record/replay and FT tests.

pub mod compute;
pub mod disk;
pub mod hostile;
pub mod idle;
