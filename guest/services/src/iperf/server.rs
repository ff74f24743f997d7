//! The iperf3 server's state machine: connections by id, one test at a
//! time. Every call is driven by the guest's event loop; time is the sync
//! call's virtual time, so the same inputs give the same bytes out.

use alloc::vec::Vec;

use super::json::{StreamResult, Value, field, results};
use super::state::*;
use super::{COOKIE_LEN, MAX_JSON, MAX_STREAMS};

/// The guest's name for one TCP connection on the iperf3 port.
pub type ConnId = u32;

/// What a finished test measured (for the guest's console).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Report {
    /// The guest sent (`-R`) rather than received.
    pub reverse: bool,
    pub streams: usize,
    pub bytes: u64,
    pub duration_ns: u64,
}

#[derive(Debug)]
enum Role {
    /// Cookie bytes so far.
    Pending(Vec<u8>),
    Control,
    /// Index into the test's streams.
    Data(usize),
    /// Told `ACCESS_DENIED`; closed once that is sent.
    Refused,
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    role: Role,
    out: Vec<u8>,
    close: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No test: the next cookie opens one.
    Idle,
    /// Waiting for the client's parameters.
    Params,
    /// Waiting for the data connections.
    Streams,
    Running,
    /// Waiting for the client's results.
    Results,
    /// Results sent; waiting for `IPERF_DONE`.
    Display,
}

/// The test in progress.
#[derive(Debug)]
struct Test {
    cookie: Vec<u8>,
    reverse: bool,
    parallel: usize,
    /// Bytes per stream, by stream index.
    bytes: Vec<u64>,
    start_ns: u64,
    end_ns: u64,
    /// Control bytes received and not yet understood.
    ctl_in: Vec<u8>,
}

/// The iperf3 server.
#[derive(Debug)]
pub struct Server {
    conns: Vec<Conn>,
    phase: Phase,
    test: Option<Test>,
    report: Option<Report>,
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

/// iperf3's stream numbering (`iperf_add_stream`): 1, then 3, 4, 5, …
fn stream_id(index: usize) -> u32 {
    match index {
        0 => 1,
        n => (n + 2) as u32,
    }
}

impl Server {
    pub fn new() -> Self {
        Server {
            conns: Vec::new(),
            phase: Phase::Idle,
            test: None,
            report: None,
        }
    }

    /// A new TCP connection was accepted.
    pub fn open(&mut self, id: ConnId) {
        self.conns.push(Conn {
            id,
            role: Role::Pending(Vec::with_capacity(COOKIE_LEN)),
            out: Vec::new(),
            close: false,
        });
    }

    /// Bytes received on `id` at virtual time `now_ns`; all are taken.
    pub fn input(&mut self, id: ConnId, mut data: &[u8], now_ns: u64) {
        let Some(i) = self.index(id) else { return };
        if let Role::Pending(cookie) = &mut self.conns[i].role {
            let take = data.len().min(COOKIE_LEN - cookie.len());
            cookie.extend_from_slice(&data[..take]);
            data = &data[take..];
            if cookie.len() < COOKIE_LEN {
                return;
            }
            let cookie = core::mem::take(cookie);
            self.admit(i, cookie, now_ns);
        }
        match self.conns[i].role {
            Role::Control => self.control_input(data, now_ns),
            Role::Data(s) => {
                // Bytes of a stream count while the test runs (a reverse
                // test's client sends none).
                if self.phase == Phase::Running
                    && let Some(t) = self.test.as_mut()
                    && let Some(b) = t.bytes.get_mut(s)
                {
                    *b = b.saturating_add(data.len() as u64);
                }
            }
            Role::Pending(_) | Role::Refused => {}
        }
    }

    /// Control bytes to send on `id` (empty if none).
    pub fn output(&self, id: ConnId) -> &[u8] {
        self.index(id).map_or(&[], |i| &self.conns[i].out)
    }

    /// `n` bytes of [`Server::output`] were sent.
    pub fn consume(&mut self, id: ConnId, n: usize) {
        if let Some(i) = self.index(id) {
            let out = &mut self.conns[i].out;
            out.drain(..n.min(out.len()));
        }
    }

    /// Payload bytes the guest may queue on `id` now: unbounded while a
    /// reverse test runs and `id` is one of its streams, else 0.
    pub fn payload_room(&self, id: ConnId) -> usize {
        let reverse = self.phase == Phase::Running && self.test.as_ref().is_some_and(|t| t.reverse);
        let stream = self
            .index(id)
            .is_some_and(|i| matches!(self.conns[i].role, Role::Data(_)));
        if reverse && stream { usize::MAX } else { 0 }
    }

    /// `n` payload bytes were queued on `id`.
    pub fn sent(&mut self, id: ConnId, n: usize) {
        let Some(i) = self.index(id) else { return };
        if let (Role::Data(s), Some(t)) = (&self.conns[i].role, self.test.as_mut())
            && let Some(b) = t.bytes.get_mut(*s)
        {
            *b = b.saturating_add(n as u64);
        }
    }

    /// The payload a reverse stream sends: any bytes do; fixed ones keep
    /// the guest deterministic without a generator.
    pub fn fill(buf: &mut [u8]) {
        buf.fill(b'9');
    }

    /// True once `id` should be closed: refused, or its test is over, and
    /// everything queued for it is sent.
    pub fn should_close(&self, id: ConnId) -> bool {
        self.index(id)
            .is_some_and(|i| self.conns[i].close && self.conns[i].out.is_empty())
    }

    /// `id` is gone (closed by either side, or reset).
    pub fn closed(&mut self, id: ConnId) {
        let Some(i) = self.index(id) else { return };
        let c = self.conns.swap_remove(i);
        if matches!(c.role, Role::Control) {
            // The client is gone: so is its test.
            self.end_test();
        }
    }

    /// The last finished test's figures, once.
    pub fn take_report(&mut self) -> Option<Report> {
        self.report.take()
    }

    /// Connections known.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    fn index(&self, id: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == id)
    }

    fn refuse(&mut self, i: usize) {
        let c = &mut self.conns[i];
        c.role = Role::Refused;
        c.out.push(ACCESS_DENIED);
        c.close = true;
    }

    /// A connection's cookie is complete: control of a new test, a stream
    /// of the test waiting for them, or refused.
    fn admit(&mut self, i: usize, cookie: Vec<u8>, now_ns: u64) {
        match (self.phase, self.test.as_mut()) {
            (Phase::Idle, _) => {
                self.test = Some(Test {
                    cookie,
                    reverse: false,
                    parallel: 1,
                    bytes: Vec::new(),
                    start_ns: 0,
                    end_ns: 0,
                    ctl_in: Vec::new(),
                });
                self.phase = Phase::Params;
                let c = &mut self.conns[i];
                c.role = Role::Control;
                c.out.push(PARAM_EXCHANGE);
            }
            (Phase::Streams, Some(t)) if t.cookie == cookie && t.bytes.len() < t.parallel => {
                self.conns[i].role = Role::Data(t.bytes.len());
                t.bytes.push(0);
                if t.bytes.len() == t.parallel {
                    t.start_ns = now_ns;
                    self.phase = Phase::Running;
                    self.push_control(&[TEST_START, TEST_RUNNING]);
                }
            }
            _ => self.refuse(i),
        }
    }

    fn push_control(&mut self, bytes: &[u8]) {
        if let Some(c) = self
            .conns
            .iter_mut()
            .find(|c| matches!(c.role, Role::Control))
        {
            c.out.extend_from_slice(bytes);
        }
    }

    fn control_input(&mut self, data: &[u8], now_ns: u64) {
        let Some(t) = self.test.as_mut() else { return };
        if t.ctl_in.len().saturating_add(data.len()) > MAX_JSON + 4 {
            return self.end_test();
        }
        t.ctl_in.extend_from_slice(data);
        while self.step(now_ns) {}
    }

    /// Acts on one complete control message; false when more bytes are
    /// needed (or the test ended).
    fn step(&mut self, now_ns: u64) -> bool {
        let phase = self.phase;
        let Some(t) = self.test.as_mut() else {
            return false;
        };
        match phase {
            Phase::Params | Phase::Results => {
                let Some(doc) = take_json(&mut t.ctl_in) else {
                    return false;
                };
                let Ok(doc) = doc else {
                    self.end_test();
                    return false;
                };
                if phase == Phase::Params {
                    self.params(&doc);
                } else {
                    self.send_results();
                }
                true
            }
            Phase::Streams | Phase::Running | Phase::Display => {
                let Some(&b) = t.ctl_in.first() else {
                    return false;
                };
                t.ctl_in.remove(0);
                match (phase, b) {
                    (Phase::Running, TEST_END) => {
                        t.end_ns = now_ns;
                        self.phase = Phase::Results;
                        self.push_control(&[EXCHANGE_RESULTS]);
                        // As iperf3's server does: the streams close now.
                        // A reverse client reads them with blocking reads
                        // of whole blocks once the test is over, and only
                        // the end of the stream ends a block cut short.
                        for c in &mut self.conns {
                            if matches!(c.role, Role::Data(_)) {
                                c.close = true;
                            }
                        }
                        true
                    }
                    (Phase::Display, IPERF_DONE) => {
                        self.end_test();
                        false
                    }
                    // CLIENT_TERMINATE, or anything out of turn.
                    _ => {
                        self.end_test();
                        false
                    }
                }
            }
            Phase::Idle => false,
        }
    }

    fn params(&mut self, doc: &[u8]) {
        let int = |k| match field(doc, k) {
            Some(Value::Int(v)) => v,
            _ => 0,
        };
        let flag = |k| matches!(field(doc, k), Some(Value::Bool(true)));
        let reverse = flag("reverse");
        let parallel = match int("parallel") {
            0 => 1,
            n => n,
        };
        let bounded_by_count = int("num") != 0 || int("blockcount") != 0;
        let unsupported = flag("udp")
            || flag("sctp")
            || flag("bidirectional")
            || !(1..=MAX_STREAMS as i64).contains(&parallel)
            || (reverse && bounded_by_count);
        if unsupported {
            // The control connection is told and closed; the test is over.
            self.push_control(&[ACCESS_DENIED]);
            return self.end_test();
        }
        if let Some(t) = self.test.as_mut() {
            t.reverse = reverse;
            t.parallel = parallel as usize;
        }
        self.phase = Phase::Streams;
        self.push_control(&[CREATE_STREAMS]);
    }

    fn send_results(&mut self) {
        let Some(t) = self.test.as_ref() else { return };
        let duration_ns = t.end_ns.saturating_sub(t.start_ns);
        let streams: Vec<StreamResult> = t
            .bytes
            .iter()
            .enumerate()
            .map(|(i, &bytes)| StreamResult {
                id: stream_id(i),
                bytes,
            })
            .collect();
        self.report = Some(Report {
            reverse: t.reverse,
            streams: streams.len(),
            bytes: streams.iter().map(|s| s.bytes).sum(),
            duration_ns,
        });
        let doc = results(&streams, duration_ns);
        let mut msg = Vec::with_capacity(doc.len() + 5);
        msg.extend_from_slice(&(doc.len() as u32).to_be_bytes());
        msg.extend_from_slice(&doc);
        msg.push(DISPLAY_RESULTS);
        self.phase = Phase::Display;
        self.push_control(&msg);
    }

    /// Ends the test: every connection of it closes once its output is
    /// sent; the next cookie opens a new test.
    fn end_test(&mut self) {
        for c in &mut self.conns {
            if !matches!(c.role, Role::Pending(_)) {
                c.close = true;
            }
        }
        self.test = None;
        self.phase = Phase::Idle;
    }
}

/// Takes one length-prefixed (4 bytes, big-endian) JSON message off the
/// front of `buf`: `None` if incomplete, `Some(Err)` if too long.
fn take_json(buf: &mut Vec<u8>) -> Option<Result<Vec<u8>, ()>> {
    let len: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_JSON {
        return Some(Err(()));
    }
    let end = len.checked_add(4)?;
    if buf.len() < end {
        return None;
    }
    let doc = buf[4..end].to_vec();
    buf.drain(..end);
    Some(Ok(doc))
}
