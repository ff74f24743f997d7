//! Every size limit of the services, in one place.

/// Largest bulk string in a RESP request (Redis's `proto-max-bulk-len` is
/// 512 MiB; the guest has far less memory).
pub const MAX_BULK: usize = 1 << 20;
/// Most arguments in one RESP multibulk request.
pub const MAX_ARGS: usize = 65_536;
/// Longest inline request line, and longest `*N` / `$N` header line.
pub const MAX_INLINE: usize = 64 * 1024;
/// Largest RESP request in total (all arguments): bounds one client's memory.
pub const MAX_REQUEST: usize = 4 << 20;

/// Largest HTTP request head (request line + headers).
pub const HTTP_MAX_HEAD: usize = 8 * 1024;
/// Largest HTTP request body.
pub const HTTP_MAX_BODY: usize = 1 << 20;

/// A session stops executing requests while this many reply bytes wait to
/// be sent (the client is not reading): back-pressure instead of memory.
pub const OUT_HIGH_WATER: usize = 1 << 20;
/// A session stops taking bytes from its socket while this many unparsed
/// bytes are buffered (enough for one maximal bulk plus its header).
pub const IN_HIGH_WATER: usize = MAX_BULK + 1024;

/// Most commands one session executes per event-loop iteration, so one busy
/// pipelining client cannot starve the others.
pub const MAX_CMDS_PER_TURN: usize = 512;

/// Keys examined per periodic expiry sweep.
pub const SWEEP_BUDGET: usize = 256;

/// Remembered SCAN cursors (oldest forgotten first).
pub const MAX_SCAN_CURSORS: usize = 1024;

/// Largest commit the journal builds for a snapshot chunk; ordinary group
/// commits are one per loop iteration, whatever their size.
pub const SNAPSHOT_COMMIT_BYTES: usize = 1 << 20;

/// RESP clients served at once (more are refused with
/// `-ERR max number of clients reached`).
pub const MAX_RESP_CLIENTS: usize = 256;
/// HTTP clients served at once.
pub const MAX_HTTP_CLIENTS: usize = 32;
/// The RESP port.
pub const RESP_PORT: u16 = 6379;
/// The HTTP port.
pub const HTTP_PORT: u16 = 80;
