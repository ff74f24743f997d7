//! The fault-tolerant pair: roles, failure detection, go-live, arbitration.

pub mod arbiter;
