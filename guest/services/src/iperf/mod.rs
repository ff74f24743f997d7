//! An iperf3-compatible TCP throughput server (port 5201), as pure logic:
//! the guest kernel hands it connections, received bytes and the virtual
//! time of the sync call, and sends what it asks for. Stock `iperf3 -c`
//! (Debian's) measures the guest's receive throughput against it, and with
//! `-R` its transmit throughput.
//!
//! The protocol (iperf3's `iperf_api.c`, `iperf_server_api.c`): a control
//! connection opens with a 37-byte cookie; the server answers with state
//! bytes (`PARAM_EXCHANGE`, `CREATE_STREAMS`, `TEST_START`, `TEST_RUNNING`,
//! `EXCHANGE_RESULTS`, `DISPLAY_RESULTS`), the client with its parameters
//! and results as length-prefixed JSON and with `TEST_END` and `IPERF_DONE`.
//! Data connections open with the same cookie and then carry the stream.
//! One test at a time; TCP only, forward or reverse, 1 to [`MAX_STREAMS`]
//! parallel streams, time- or byte-bounded by the client (reverse tests
//! only time-bounded: the client's timer ends them). Anything else is
//! refused with `ACCESS_DENIED`.

mod json;
mod server;
#[cfg(test)]
mod tests;

pub use json::{StreamResult, Value, field, results};
pub use server::{ConnId, Report, Server};

/// The port iperf3 listens on.
pub const PORT: u16 = 5201;
/// A connection's first bytes: 36 characters and a NUL.
pub const COOKIE_LEN: usize = 37;
/// Most parallel streams (`-P`) one test may ask for.
pub const MAX_STREAMS: usize = 8;
/// Largest JSON message (parameters, the client's results) accepted.
pub const MAX_JSON: usize = 64 * 1024;

/// iperf3's state bytes (`iperf_api.h`).
pub mod state {
    pub const TEST_START: u8 = 1;
    pub const TEST_RUNNING: u8 = 2;
    pub const TEST_END: u8 = 4;
    pub const PARAM_EXCHANGE: u8 = 9;
    pub const CREATE_STREAMS: u8 = 10;
    pub const CLIENT_TERMINATE: u8 = 12;
    pub const EXCHANGE_RESULTS: u8 = 13;
    pub const DISPLAY_RESULTS: u8 = 14;
    pub const IPERF_DONE: u8 = 16;
    /// -1 as the signed char iperf3 sends: "the server is busy" (also
    /// used here for tests this server does not run).
    pub const ACCESS_DENIED: u8 = 0xff;
}
