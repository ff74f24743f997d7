//! The paper's restart of redundancy (§3.1; docs/join.md): a primary that
//! runs alone brings a new backup into lockstep by live clone, over the
//! logging channel's transport and authentication. The clone itself
//! (what is captured, its wire format, the pre-copy) is
//! `lockstep_vmm::snapshot`; this module is the pair's part of it.
//!
//! * [`transport`]: the join stream in the channel's records.
//! * [`primary`]: the copy, the switch to a new pair run, re-protection.
//! * [`control`]: the operator's say over re-protection.

pub mod control;
pub mod primary;
pub mod transport;
