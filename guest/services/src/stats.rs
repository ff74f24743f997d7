//! Counters shown by INFO and `GET /stats`.

/// Service counters. The kernel maintains the connection counts; the
/// executors maintain the rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// RESP clients connected now.
    pub connected_clients: u64,
    /// HTTP clients connected now.
    pub http_clients: u64,
    /// RESP connections accepted since boot.
    pub total_connections: u64,
    /// Connections refused because the client limit was reached.
    pub rejected_connections: u64,
    /// RESP commands executed.
    pub commands: u64,
    /// HTTP requests answered.
    pub http_requests: u64,
    /// Reads that found their key.
    pub keyspace_hits: u64,
    /// Reads that did not.
    pub keyspace_misses: u64,
    /// Connections closed for a protocol error.
    pub protocol_errors: u64,
    /// Write commands refused (disk full, read-only, failed).
    pub refused_writes: u64,
}
