//! lockstep: fault-tolerant virtual machines on Linux/KVM.
//!
//! The library holds the VMM (`vmm`), the device models the vCPU thread runs
//! (`devices`), the per-exit dispatch (`machine`) and the dataplane threads;
//! the `lockstep` binary wires them to the command line.

pub mod app;
pub mod cli;
pub mod commands;
pub mod dataplane;
pub mod devices;
pub mod ft;
pub mod launch;
pub mod machine;
pub mod replay;
pub mod spec;
pub mod status;
pub mod vmm;
