//! What a running VMM shows operators and monitoring: [`StatusCounters`]
//! that the VMM's threads update with relaxed atomics, a [`StatusServer`]
//! that serves them as JSON (`GET /status`, [`StatusSnapshot`]) and as
//! Prometheus text (`GET /metrics`), and the client half of
//! `lockstep status` with the minimal HTTP/1.1 client it shares with the
//! etcd arbiter. Field and metric meanings: `docs/operations.md`.
//!
//! It depends on no other lockstep crate: the VMM and the FT layer update
//! the counters, the binary serves and reads them.

mod access;
pub mod actions;
pub mod client;
pub mod counters;
pub mod http;
pub mod metrics;
pub mod protection;
pub mod rate;
pub mod sanitize;
pub mod server;
pub mod snapshot;
pub mod summary;

pub use actions::{Action, ActionHandler, Answered, Outcome};
pub use counters::{Role, StatusCounters};
pub use server::{ServerError, ServerOptions, StatusServer};
pub use snapshot::StatusSnapshot;
