//! Per-connection state: buffered input, the protocol parser, and output
//! whose bytes are held until the batch they depend on is durable.
//!
//! The kernel moves bytes between these sessions and TCP sockets:
//! `push_input` what arrived, `process` to execute, `sendable` /
//! `consume` to send what may leave, `finished` to close.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use crate::commands::{self, Client};
use crate::engine::Engine;
use crate::http::parser::HttpParser;
use crate::http::router;
use crate::limits::{IN_HIGH_WATER, MAX_CMDS_PER_TURN, OUT_HIGH_WATER};
use crate::resp::reply;
use crate::resp::{RespParser, Step};

/// Output bytes with durability tags. Tags never decrease (they are the
/// engine's newest batch holding a write), so the held bytes are a suffix
/// split into regions by the tag they wait for.
#[derive(Debug, Default)]
pub struct OutQueue {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed to the socket.
    sent: usize,
    /// Stream offset of `buf[0]`.
    base: u64,
    /// (stream offset where a held region starts, tag it waits for).
    holds: VecDeque<(u64, u64)>,
}

impl OutQueue {
    /// Where the next reply starts (pass to [`tag_from`](Self::tag_from)).
    pub fn mark(&self) -> usize {
        self.buf.len()
    }

    /// The buffer replies are appended to.
    pub fn buf_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    /// The bytes from `start` on were generated under `tag`; hold them
    /// unless `tag` is already durable.
    pub fn tag_from(&mut self, start: usize, tag: u64, durable: u64) {
        if tag <= durable || start >= self.buf.len() {
            return;
        }
        if self.holds.back().is_none_or(|&(_, t)| t < tag) {
            self.holds.push_back((self.base + start as u64, tag));
        }
    }

    /// The bytes that may be sent now.
    pub fn sendable(&mut self, durable: u64) -> &[u8] {
        while self.holds.front().is_some_and(|&(_, t)| t <= durable) {
            self.holds.pop_front();
        }
        let limit = match self.holds.front() {
            Some(&(at, _)) => (at - self.base) as usize,
            None => self.buf.len(),
        };
        &self.buf[self.sent..limit.max(self.sent)]
    }

    /// `n` bytes of [`sendable`](Self::sendable) went to the socket.
    pub fn consume(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.buf.len());
        if self.sent == self.buf.len() {
            self.base += self.buf.len() as u64;
            self.buf.clear();
            self.sent = 0;
        } else if self.sent >= 64 * 1024 && self.sent * 2 >= self.buf.len() {
            self.buf.drain(..self.sent);
            self.base += self.sent as u64;
            self.sent = 0;
        }
    }

    /// Bytes not yet sent (held or not).
    pub fn pending(&self) -> usize {
        self.buf.len() - self.sent
    }

    /// Whether bytes wait for a batch to become durable.
    pub fn has_held(&self) -> bool {
        !self.holds.is_empty()
    }
}

/// Input bytes not yet parsed.
#[derive(Debug, Default)]
struct InBuf {
    buf: Vec<u8>,
    pos: usize,
}

impl InBuf {
    fn unparsed(&self) -> &[u8] {
        &self.buf[self.pos..]
    }
    fn len(&self) -> usize {
        self.buf.len() - self.pos
    }
    fn advance(&mut self, n: usize) {
        self.pos += n;
    }
    fn push(&mut self, data: &[u8]) {
        self.compact();
        self.buf.extend_from_slice(data);
    }
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos >= 64 * 1024 || self.pos * 2 >= self.buf.len() {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
    }
}

/// What one `process` call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Requests executed.
    pub requests: usize,
    /// It stopped at its per-turn budget with input left: call again soon.
    pub more: bool,
}

/// What one protocol step did with the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// More bytes are needed.
    Incomplete,
    /// Bytes were consumed without completing a request: step again.
    Progress,
    /// A request was answered; with `close`, the session ends after it.
    Answered { close: bool },
    /// A protocol error was answered: the session ends.
    Error,
}

/// What RESP and HTTP sessions do differently: parse and answer requests,
/// and say goodbye to an evicted client.
pub trait Protocol {
    /// Parses from `input` (the unparsed bytes) and answers at most one
    /// request into `out`. Returns the bytes consumed and what happened.
    fn step(&mut self, e: &mut Engine, input: &[u8], out: &mut Vec<u8>) -> (usize, Outcome);

    /// Bytes of a partial request the protocol holds outside the input.
    fn buffered(&self) -> usize;

    /// Drops what the protocol holds and writes the reply of a connection
    /// closed for its memory.
    fn evict(&mut self, out: &mut Vec<u8>);
}

/// The RESP (Redis protocol) half of a session.
#[derive(Debug)]
pub struct Resp {
    client: Client,
    parser: RespParser,
}

impl Protocol for Resp {
    fn step(&mut self, e: &mut Engine, input: &[u8], out: &mut Vec<u8>) -> (usize, Outcome) {
        match self.parser.next(input) {
            Err(pe) => {
                reply::error(out, &pe.line());
                (0, Outcome::Error)
            }
            Ok((n, Step::Incomplete)) => (n, Outcome::Incomplete),
            Ok((n, Step::Progress)) => (n, Outcome::Progress),
            Ok((n, Step::Command(argv))) => {
                commands::execute(e, &mut self.client, &argv, out);
                let close = self.client.close_after_reply;
                (n, Outcome::Answered { close })
            }
        }
    }

    fn buffered(&self) -> usize {
        self.parser.buffered()
    }

    /// Redis's error for a client over its buffer limit.
    fn evict(&mut self, out: &mut Vec<u8>) {
        self.parser = RespParser::new();
        reply::error(
            out,
            b"ERR client buffer limit exceeded: closing the connection",
        );
    }
}

/// The HTTP half of a session.
#[derive(Debug, Default)]
pub struct Http {
    parser: HttpParser,
}

impl Protocol for Http {
    fn step(&mut self, e: &mut Engine, input: &[u8], out: &mut Vec<u8>) -> (usize, Outcome) {
        match self.parser.next(input) {
            Err(he) => {
                router::text(out, he.status, he.detail, false);
                (0, Outcome::Error)
            }
            Ok((n, req)) => {
                if self.parser.take_continue() {
                    out.extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                match req {
                    None if n == 0 => (n, Outcome::Incomplete),
                    None => (n, Outcome::Progress),
                    Some(req) => {
                        router::handle(e, &req, out);
                        let close = !req.keep_alive;
                        (n, Outcome::Answered { close })
                    }
                }
            }
        }
    }

    /// The parser keeps no request bytes of its own.
    fn buffered(&self) -> usize {
        0
    }

    /// 503: the connection's buffers are over the server's limit.
    fn evict(&mut self, out: &mut Vec<u8>) {
        router::text(
            out,
            503,
            "connection buffers over the server's limit",
            false,
        );
    }
}

/// A connection: buffered input, a protocol, and output held for
/// durability.
#[derive(Debug, Default)]
pub struct Session<P> {
    proto: P,
    input: InBuf,
    out: OutQueue,
    /// No more input is processed; close once the output is sent.
    closing: bool,
}

/// A RESP (Redis protocol) connection.
pub type RespSession = Session<Resp>;
/// An HTTP connection.
pub type HttpSession = Session<Http>;

impl RespSession {
    /// A session for an accepted connection.
    pub fn new(e: &mut Engine, addr: Vec<u8>, laddr: Vec<u8>) -> Self {
        let client = Client {
            id: e.new_client_id(),
            addr,
            laddr,
            created_ms: e.now_ms(),
            ..Client::default()
        };
        Session {
            proto: Resp {
                client,
                parser: RespParser::new(),
            },
            input: InBuf::default(),
            out: OutQueue::default(),
            closing: false,
        }
    }

    /// A session over the client limit: it answers the Redis error and closes.
    pub fn refused(e: &mut Engine) -> Self {
        let mut s = Self::new(e, Vec::new(), Vec::new());
        reply::error(s.out.buf_mut(), b"ERR max number of clients reached");
        s.closing = true;
        s
    }
}

impl HttpSession {
    /// A session for an accepted connection.
    pub fn new() -> Self {
        Self::default()
    }

    /// A session over the client limit: 503 and close.
    pub fn refused() -> Self {
        let mut s = Self::new();
        router::text(s.out.buf_mut(), 503, "too many connections", false);
        s.closing = true;
        s
    }
}

impl<P: Protocol> Session<P> {
    /// How many more input bytes the session takes now (0 = apply
    /// back-pressure: leave them in the socket).
    pub fn input_room(&self) -> usize {
        if self.closing || self.out.pending() >= OUT_HIGH_WATER {
            return 0;
        }
        IN_HIGH_WATER.saturating_sub(self.input.len())
    }

    /// Bytes received from the client.
    pub fn push_input(&mut self, data: &[u8]) {
        if !self.closing {
            self.input.push(data);
        }
    }

    /// Memory this connection holds: unparsed input, the partial request
    /// and replies not yet sent.
    pub fn memory(&self) -> usize {
        self.input.len() + self.proto.buffered() + self.out.pending()
    }

    /// Drops the connection's buffers and closes it with the protocol's
    /// error for a client over its buffer limit (the guest's memory is
    /// shared by all connections; one may not take it all).
    pub fn evict(&mut self) {
        // Unsent replies go too: the client never saw them, so nothing it
        // was told is lost, and the memory is what must be freed.
        self.input = InBuf::default();
        self.out = OutQueue::default();
        self.proto.evict(self.out.buf_mut());
        self.closing = true;
    }

    /// Executes buffered requests (at most a per-turn budget).
    pub fn process(&mut self, e: &mut Engine) -> Progress {
        let mut p = Progress::default();
        while !self.closing && self.out.pending() < OUT_HIGH_WATER {
            if p.requests == MAX_CMDS_PER_TURN {
                p.more = self.input.len() > 0;
                break;
            }
            let start = self.out.mark();
            let (n, outcome) = self
                .proto
                .step(e, self.input.unparsed(), self.out.buf_mut());
            // Whatever the step wrote waits for the batch it depends on.
            self.out.tag_from(start, e.reply_tag(), e.durable());
            self.input.advance(n);
            match outcome {
                Outcome::Incomplete => break,
                Outcome::Progress => {}
                Outcome::Answered { close } => {
                    p.requests += 1;
                    self.closing |= close;
                }
                Outcome::Error => {
                    e.stats.protocol_errors += 1;
                    self.closing = true;
                }
            }
        }
        self.input.compact();
        p
    }

    /// Output that may be sent now.
    pub fn sendable(&mut self, durable: u64) -> &[u8] {
        self.out.sendable(durable)
    }

    /// `n` bytes were sent.
    pub fn consume(&mut self, n: usize) {
        self.out.consume(n);
    }

    /// Whether output waits for durability.
    pub fn has_held_output(&self) -> bool {
        self.out.has_held()
    }

    /// Output bytes not yet sent (held or not).
    pub fn output_pending(&self) -> usize {
        self.out.pending()
    }

    /// Whether the connection should be closed now (closing, all sent).
    pub fn finished(&self) -> bool {
        self.closing && self.out.pending() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn held_regions_release_in_order() {
        let mut q = OutQueue::default();
        let s = q.mark();
        q.buf_mut().extend_from_slice(b"a");
        q.tag_from(s, 0, 0);
        let s = q.mark();
        q.buf_mut().extend_from_slice(b"b");
        q.tag_from(s, 1, 0);
        let s = q.mark();
        q.buf_mut().extend_from_slice(b"c");
        q.tag_from(s, 1, 0);
        let s = q.mark();
        q.buf_mut().extend_from_slice(b"d");
        q.tag_from(s, 2, 0);
        assert_eq!(q.sendable(0), b"a");
        q.consume(1);
        assert_eq!(q.sendable(0), b"");
        assert_eq!(q.sendable(1), b"bc");
        assert_eq!(q.sendable(2), b"bcd");
        q.consume(2);
        assert_eq!(q.sendable(2), b"d");
        q.consume(1);
        assert_eq!(q.pending(), 0);
        assert!(!q.has_held());
    }
}

#[cfg(test)]
mod session_tests {
    extern crate std;
    use super::*;
    use crate::journal::Layout;

    const T0: u64 = 1_700_000_000_000_000_000;

    fn durable_engine() -> Engine {
        let layout = Layout::for_capacity(4096).expect("layout");
        let mut e = Engine::format(layout, T0);
        // Complete the format write.
        assert!(e.next_write().is_some());
        e.write_done(true);
        e
    }

    fn drain(s: &mut RespSession, e: &Engine) -> Vec<u8> {
        let d = e.durable();
        let v = s.sendable(d).to_vec();
        s.consume(v.len());
        v
    }

    #[test]
    fn replies_wait_for_their_batch() {
        let mut e = durable_engine();
        let mut s = RespSession::new(&mut e, b"a:1".to_vec(), b"b:2".to_vec());
        s.push_input(b"PING\r\n");
        s.process(&mut e);
        assert_eq!(
            drain(&mut s, &e),
            b"+PONG\r\n",
            "nothing written yet: free to go"
        );
        s.push_input(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\nGET k\r\n");
        assert_eq!(s.process(&mut e).requests, 2);
        assert_eq!(drain(&mut s, &e), b"", "SET and the read after it are held");
        assert!(s.has_held_output());
        let w = e.next_write().expect("a commit");
        assert!(w.data.len() >= 512);
        // Writes of the next batch accumulate while the commit is in flight.
        let mut s2 = RespSession::new(&mut e, Vec::new(), Vec::new());
        s2.push_input(b"INCR n\r\n");
        s2.process(&mut e);
        assert!(e.next_write().is_none(), "one commit in flight at a time");
        e.write_done(true);
        assert_eq!(drain(&mut s, &e), b"+OK\r\n$1\r\nv\r\n");
        assert_eq!(drain(&mut s2, &e), b"", "its batch is not durable yet");
        assert!(e.next_write().is_some());
        e.write_done(true);
        assert_eq!(drain(&mut s2, &e), b":1\r\n");
    }

    #[test]
    fn protocol_error_closes_only_that_session() {
        let mut e = Engine::volatile(T0);
        let mut bad = RespSession::new(&mut e, Vec::new(), Vec::new());
        let mut good = RespSession::new(&mut e, Vec::new(), Vec::new());
        bad.push_input(b"PING\r\n*1\r\n$x\r\nPING\r\n");
        good.push_input(b"PING\r\n");
        bad.process(&mut e);
        good.process(&mut e);
        assert_eq!(
            drain(&mut bad, &e),
            b"+PONG\r\n-ERR Protocol error: invalid bulk length\r\n"
        );
        assert!(bad.finished());
        assert_eq!(bad.input_room(), 0);
        assert_eq!(drain(&mut good, &e), b"+PONG\r\n");
        assert!(!good.finished());
        let mut r = RespSession::refused(&mut e);
        assert_eq!(drain(&mut r, &e), b"-ERR max number of clients reached\r\n");
        assert!(r.finished());
    }

    #[test]
    fn budget_and_backpressure() {
        let mut e = Engine::volatile(T0);
        let mut s = RespSession::new(&mut e, Vec::new(), Vec::new());
        let many = b"PING\r\n".repeat(MAX_CMDS_PER_TURN + 10);
        s.push_input(&many);
        let p = s.process(&mut e);
        assert_eq!(p.requests, MAX_CMDS_PER_TURN);
        assert!(p.more);
        let p = s.process(&mut e);
        assert_eq!(p.requests, 10);
        assert!(!p.more);
        // A client that does not read stops being served at the high water.
        s.push_input(b"SET big ");
        s.push_input(&alloc::vec![b'x'; 60_000]);
        s.push_input(b"\r\n");
        s.process(&mut e);
        let gets = b"GET big\r\n".repeat(100);
        s.push_input(&gets);
        s.process(&mut e);
        assert!(s.input_room() == 0, "output over the high water mark");
        let d = e.durable();
        let n = s.sendable(d).len();
        s.consume(n);
        assert!(s.input_room() > 0);
    }

    #[test]
    fn quit_closes_after_reply() {
        let mut e = Engine::volatile(T0);
        let mut s = RespSession::new(&mut e, Vec::new(), Vec::new());
        s.push_input(b"QUIT\r\nPING\r\n");
        s.process(&mut e);
        assert_eq!(drain(&mut s, &e), b"+OK\r\n");
        assert!(s.finished());
    }

    #[test]
    fn http_session_flow() {
        let mut e = durable_engine();
        let mut s = HttpSession::new();
        s.push_input(
            b"PUT /kv/a%20b HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyzGET /kv/a%20b HTTP/1.1\r\n\r\n",
        );
        assert_eq!(s.process(&mut e).requests, 2);
        assert_eq!(s.sendable(e.durable()), b"", "held until durable");
        assert!(e.next_write().is_some());
        e.write_done(true);
        let out = std::string::String::from_utf8_lossy(s.sendable(e.durable())).into_owned();
        assert!(out.starts_with("HTTP/1.1 201 Created\r\n"), "{out}");
        assert!(out.contains("HTTP/1.1 200 OK\r\n"));
        assert!(out.ends_with("\r\n\r\nxyz"));
        let n = out.len();
        s.consume(n);
        s.push_input(b"DELETE /kv/a%20b HTTP/1.1\r\n\r\nDELETE /kv/a%20b HTTP/1.1\r\nConnection: close\r\n\r\n");
        s.process(&mut e);
        assert!(e.next_write().is_some());
        e.write_done(true);
        let out = std::string::String::from_utf8_lossy(s.sendable(e.durable())).into_owned();
        assert!(
            out.starts_with(
                "HTTP/1.1 204 No Content\r\nServer: lockstep-guest\r\nConnection: keep-alive\r\n"
            ),
            "{out}"
        );
        assert!(out.contains("HTTP/1.1 404 Not Found\r\n"));
        assert!(out.contains("Connection: close\r\n"));
        let n = out.len();
        s.consume(n);
        assert!(s.finished());
    }

    #[test]
    fn http_errors_close() {
        let mut e = Engine::volatile(T0);
        for (req, status) in [
            (&b"BLAH\r\n\r\n"[..], "400"),
            (b"PUT /kv/x HTTP/1.1\r\n\r\n", "411"),
            (b"GET /kv/%zz HTTP/1.1\r\n\r\n", "400"),
            (b"GET /kv/ HTTP/1.1\r\n\r\n", "400"),
            (b"GET /nope HTTP/1.1\r\n\r\n", "404"),
            (b"POST /kv/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
            (b"POST /stats HTTP/1.1\r\nContent-Length: 0\r\n\r\n", "405"),
        ] {
            let mut s = HttpSession::new();
            s.push_input(req);
            s.process(&mut e);
            let out = std::string::String::from_utf8_lossy(s.sendable(0)).into_owned();
            assert!(
                out.starts_with(&std::format!("HTTP/1.1 {status} ")),
                "{out}"
            );
        }
        let mut s = HttpSession::new();
        s.push_input(b"GET /stats HTTP/1.1\r\n\r\n");
        s.process(&mut e);
        let out = std::string::String::from_utf8_lossy(s.sendable(0)).into_owned();
        assert!(out.contains("application/json"));
        assert!(out.contains("\"keys\":0"));
        assert!(out.contains("\"http_requests\":"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut e = Engine::volatile(T0);
        let mut seed = 0xfeed_beef_u64;
        for round in 0..300 {
            let mut r = RespSession::new(&mut e, Vec::new(), Vec::new());
            let mut h = HttpSession::new();
            for _ in 0..20 {
                let mut chunk = Vec::new();
                for _ in 0..(seed % 97) {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    // Bias towards protocol bytes so parsing gets deep.
                    let b = match seed % 8 {
                        0 => b'*',
                        1 => b'$',
                        2 => b'\r',
                        3 => b'\n',
                        4 => b'0' + (seed >> 8) as u8 % 10,
                        _ => (seed >> 16) as u8,
                    };
                    chunk.push(b);
                }
                if round % 2 == 0 {
                    chunk.splice(0..0, b"GET /kv/x HTTP/1.1\r\n".iter().copied());
                }
                r.push_input(&chunk);
                h.push_input(&chunk);
                r.process(&mut e);
                h.process(&mut e);
                let n = r.sendable(0).len();
                r.consume(n);
                let n = h.sendable(0).len();
                h.consume(n);
            }
        }
    }

    #[test]
    fn eviction_frees_a_connections_memory_and_says_why() {
        let mut e = durable_engine();
        let mut s = RespSession::new(&mut e, Vec::new(), Vec::new());
        let mut req = b"*3\r\n$4\r\nMSET\r\n$1\r\nk\r\n$100000\r\n".to_vec();
        req.extend(core::iter::repeat_n(b'x', 60_000));
        s.push_input(&req);
        s.process(&mut e);
        assert!(
            s.memory() >= 60_000,
            "the partial request is accounted: {}",
            s.memory()
        );
        s.evict();
        let out = s.sendable(e.durable()).to_vec();
        assert!(
            out.starts_with(b"-ERR client buffer limit exceeded"),
            "{:?}",
            core::str::from_utf8(&out)
        );
        assert!(s.memory() < 100);
        assert_eq!(
            s.input_room(),
            0,
            "an evicted connection takes no more input"
        );
    }
}
