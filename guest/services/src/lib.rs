//! The lockstep guest's services as pure, deterministic logic: no I/O, no
//! clock, no randomness of their own. The guest kernel feeds them bytes and
//! virtual time and performs the disk writes they ask for; the host runs
//! their unit tests.
//!
//! * [`resp`], [`commands`]: the Redis protocol and its commands;
//! * [`http`]: a small HTTP/1.1 front end to the same store;
//! * [`store`], [`engine`]: the key-value store and the group-commit rule;
//! * [`journal`], [`journal_format`]: the checksummed on-disk log, recovery
//!   and compaction;
//! * [`session`]: per-connection state with durability-tagged output;
//! * [`iperf`]: an iperf3-compatible throughput server (port 5201).
#![no_std]

extern crate alloc;

pub mod commands;
pub mod crc32c;
pub mod engine;
pub mod glob;
pub mod http;
pub mod intfmt;
pub mod iperf;
pub mod journal;
pub mod journal_format;
pub mod limits;
pub mod resp;
pub mod session;
pub mod stats;
pub mod store;

pub use engine::Engine;
pub use session::{HttpSession, RespSession};
