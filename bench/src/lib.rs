//! The benchmark harness's reusable pieces: a RESP client that knows
//! exactly which writes the server acknowledged (used by the harness, the
//! demo's client and the integration tests).

pub mod kvclient;
pub mod resp;
