//! The benchmark harness's reusable pieces: a RESP client that knows
//! exactly which writes the server acknowledged (used by the harness, the
//! demo's client and the integration tests), the drivers of the logging
//! channel's engines against raw TCP (used by the `log_channel` bench on
//! loopback and by `lockstep-bench channel` across namespaces), and test
//! hosts and VMM processes, and the stock programs of the guest's Linux
//! personality (used by the harness and the integration tests).

pub mod apps;
pub mod channel;
pub mod kvclient;
pub mod netns;
pub mod pair;
pub mod resp;
pub mod vm;
