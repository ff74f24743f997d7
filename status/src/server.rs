//! The status endpoint: a small HTTP/1.1 server on its own thread.
//! `GET /status` answers the JSON snapshot, `GET /metrics` the Prometheus
//! text; anything else is 404. A VMM may run two (its `--status` and
//! `--metrics` addresses); each serves both paths.
//!
//! The accept thread never reads from a client: every connection gets a
//! short-lived thread with a bounded request size and one deadline for the
//! whole exchange, and at most [`MAX_CONNECTIONS`] run at once (more are
//! closed at once), and at most [`MAX_PER_CLIENT`] from one address (a
//! fair share: one client trickling requests cannot take every slot), so
//! one slow or malicious client cannot blind the endpoint — and nothing
//! here can slow the VMM, which only ever writes its atomics.
//!
//! **Access.** An endpoint on a loopback address answers anyone on this
//! host. One bound to any other address must be given a bearer token
//! ([`ServerOptions::token`]; refused otherwise), and then every request
//! needs `Authorization: Bearer TOKEN` (401 otherwise, counted).
//!
//! **Actions.** `POST /ft/ACTION` (docs/operator-actions.md) is served only
//! when the binary registered an [`ActionHandler`], and always needs the
//! token, on loopback too: without a token configured every action is
//! refused (403). A request that carries a body is refused (actions take
//! none); the handler's answer comes once the action is complete (bounded
//! by [`crate::actions::ACTION_DEADLINE`]), typed by its HTTP status.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use super::access::{self, authorized};
use super::actions::{ActionHandler, Then};
use super::counters::StatusCounters;
use super::metrics;
use super::rate::RateWindow;
use super::snapshot::StatusSnapshot;

/// Largest request head accepted; ours are a request line and a few headers.
pub const MAX_REQUEST: usize = 8 << 10;
/// One client's whole exchange must fit in this.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 32;
/// Connections served at once from one client address.
pub const MAX_PER_CLIENT: usize = 4;
/// How often the accept thread samples `log_bytes` (and checks for stop).
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot serve status on {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the status thread")]
    Spawn(#[source] std::io::Error),
    #[error(
        "{addr} is not a loopback address: an endpoint others can reach needs a bearer token (--status-token-file)"
    )]
    NeedsToken { addr: SocketAddr },
}

/// How an endpoint is protected, and what it may change.
#[derive(Clone, Default)]
pub struct ServerOptions {
    /// Every request must carry `Authorization: Bearer <token>`. Required
    /// for an address beyond loopback, and for any action.
    pub token: Option<String>,
    /// Carries out `POST /ft/ACTION` (none: actions are refused).
    pub actions: Option<Arc<dyn ActionHandler>>,
}

impl std::fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token itself.
        f.debug_struct("ServerOptions")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("actions", &self.actions.is_some())
            .finish()
    }
}

/// A running status endpoint; stops (and closes its socket) on drop.
pub struct StatusServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// What the connection threads share with the accept thread.
struct Shared {
    counters: Arc<StatusCounters>,
    window: Mutex<RateWindow>,
    active: AtomicUsize,
    /// Connections being served, per client address.
    per_client: Mutex<HashMap<IpAddr, usize>>,
    token: Option<String>,
    actions: Option<Arc<dyn ActionHandler>>,
}

impl Shared {
    fn sample(&self) -> f64 {
        let bytes = StatusCounters::get(&self.counters.log_bytes);
        // A poisoned lock means a connection thread panicked mid-push; the
        // window is still a valid list of samples.
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        w.push(Instant::now(), bytes);
        w.rate()
    }

    fn snapshot(&self) -> StatusSnapshot {
        let rate = self.sample();
        StatusSnapshot::take(&self.counters, rate)
    }
}

impl StatusServer {
    /// Binds `addr` (`HOST:PORT`; port 0 picks one, see
    /// [`StatusServer::local_addr`]) and serves `counters` from a thread.
    pub fn spawn(addr: &str, counters: Arc<StatusCounters>) -> Result<StatusServer, ServerError> {
        Self::spawn_with(addr, counters, ServerOptions::default())
    }

    /// [`StatusServer::spawn`] with `opts` (a token for an endpoint beyond
    /// loopback).
    pub fn spawn_with(
        addr: &str,
        counters: Arc<StatusCounters>,
        opts: ServerOptions,
    ) -> Result<StatusServer, ServerError> {
        let bind_err = |source| ServerError::Bind {
            addr: addr.to_string(),
            source,
        };
        let listener = TcpListener::bind(addr).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let local = listener.local_addr().map_err(bind_err)?;
        if opts.token.is_none() && !local.ip().is_loopback() {
            return Err(ServerError::NeedsToken { addr: local });
        }
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            counters,
            window: Mutex::new(RateWindow::new()),
            active: AtomicUsize::new(0),
            per_client: Mutex::new(HashMap::new()),
            token: opts.token,
            actions: opts.actions,
        });
        let shared_has_token = shared.token.is_some();
        let thread = std::thread::Builder::new()
            .name("status-http".into())
            .spawn({
                let stop = stop.clone();
                move || accept_loop(listener, shared, stop)
            })
            .map_err(ServerError::Spawn)?;
        tracing::info!(
            "status and metrics on http://{local}/status and /metrics{}",
            if shared_has_token {
                " (bearer token required)"
            } else {
                ""
            }
        );
        Ok(StatusServer {
            addr: local,
            stop,
            thread: Some(thread),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for StatusServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // Returns within one TICK; connection threads end on their own
            // deadline.
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let timeout = PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE);
    while !stop.load(Ordering::Relaxed) {
        shared.sample();
        let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => {
                tracing::warn!("status endpoint: poll failed ({e}); stopping it");
                return;
            }
        }
        loop {
            match listener.accept() {
                Ok((stream, peer)) => admit(stream, peer.ip(), &shared),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                // ECONNABORTED, EMFILE…: this client is lost, the endpoint
                // is not. Back off a tick so EMFILE does not spin.
                Err(e) => {
                    tracing::debug!("status endpoint: accept failed: {e}");
                    std::thread::sleep(TICK);
                    break;
                }
            }
        }
    }
}

impl Shared {
    /// Takes a slot for a connection from `client`, if one is free for it.
    fn enter(&self, client: IpAddr) -> bool {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        let mine = per.entry(client).or_insert(0);
        if *mine >= MAX_PER_CLIENT {
            return false;
        }
        if self.active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            self.active.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        *mine += 1;
        true
    }

    fn leave(&self, client: IpAddr) {
        let mut per = self.per_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = per.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per.remove(&client);
            }
        }
        self.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Hands a connection to its own thread, or closes it if too many run
/// (overall, or from this client).
fn admit(stream: TcpStream, client: IpAddr, shared: &Arc<Shared>) {
    if !shared.enter(client) {
        return;
    }
    let worker = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("status-conn".into())
        .stack_size(256 << 10)
        .spawn(move || {
            serve(stream, &worker);
            worker.leave(client);
        });
    if spawned.is_err() {
        shared.leave(client);
    }
}

/// One exchange; every failure just closes the connection.
fn serve(mut stream: TcpStream, shared: &Shared) {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let (answer, then) = match read_head(&mut stream, deadline) {
        Ok(head) => route(&head, shared),
        Err(HeadError::TooLarge) => (Answer::text(431, "request header too large\n"), None),
        Err(HeadError::Closed) => return,
    };
    // An action may have taken longer than a read's whole deadline: its
    // answer gets one of its own.
    let deadline = match then {
        Some(Posted(_)) => Instant::now() + CLIENT_DEADLINE,
        None => deadline,
    };
    let Some(left) = deadline.checked_duration_since(Instant::now()) else {
        return;
    };
    if stream
        .set_write_timeout(Some(left.max(Duration::from_millis(1))))
        .is_err()
    {
        return;
    }
    let _ = stream.write_all(&answer.encode());
    let _ = stream.shutdown(Shutdown::Write);
    if answer.status >= 400 {
        linger(&mut stream, deadline);
    }
    if let Some(Posted(Some(then))) = then {
        then();
    }
}

/// A request that reached the action handler, with what it asked to run
/// after the answer.
struct Posted(Option<Then>);

/// After an error answer the client may still be sending (an oversized
/// header): closing with unread input makes the kernel send a reset, which
/// can destroy the answer before the client reads it. Read and drop what
/// is left for a moment first.
fn linger(stream: &mut TcpStream, deadline: Instant) {
    let until = deadline.min(Instant::now() + Duration::from_millis(500));
    let mut sink = [0u8; 4096];
    let mut budget = 256usize << 10;
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        if left.is_zero() || budget == 0 || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => return,
            Ok(n) => budget = budget.saturating_sub(n),
        }
    }
}

enum HeadError {
    TooLarge,
    /// Closed, timed out or failed before a full head arrived.
    Closed,
}

/// Reads up to the blank line that ends the request head.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, HeadError> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end);
            return Ok(buf);
        }
        if buf.len() > MAX_REQUEST {
            return Err(HeadError::TooLarge);
        }
        // One deadline for the whole head: a client trickling a byte at a
        // time cannot keep its thread for longer.
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(HeadError::Closed)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(|_| HeadError::Closed)?;
        match stream.read(&mut chunk) {
            Ok(0) => return Err(HeadError::Closed),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Closed),
        }
    }
}

struct Answer {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    /// HEAD: headers only.
    head_only: bool,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            head_only: false,
        }
    }

    fn encode(&self) -> Vec<u8> {
        let reason = match self.status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            405 => "Method Not Allowed",
            409 => "Conflict",
            413 => "Content Too Large",
            431 => "Request Header Fields Too Large",
            504 => "Gateway Timeout",
            505 => "HTTP Version Not Supported",
            _ => "Internal Server Error",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        if self.status == 405 {
            out.push_str("Allow: GET, HEAD, POST\r\n");
        }
        if self.status == 401 {
            out.push_str("WWW-Authenticate: Bearer realm=\"lockstep\"\r\n");
        }
        out.push_str("\r\n");
        let mut bytes = out.into_bytes();
        if !self.head_only {
            bytes.extend_from_slice(&self.body);
        }
        bytes
    }
}

/// Answers a request head (request line and headers, without the blank
/// line); an action also says what to run after the answer.
fn route(head: &[u8], shared: &Shared) -> (Answer, Option<Posted>) {
    let Ok(head) = std::str::from_utf8(head) else {
        return (Answer::text(400, "request is not UTF-8\n"), None);
    };
    if head.starts_with("POST ") {
        return post(head, shared);
    }
    (read(head, shared), None)
}

/// `GET`/`HEAD` of `/status` or `/metrics`.
fn read(head: &str, shared: &Shared) -> Answer {
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Answer::text(400, "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Answer::text(505, "only HTTP/1.x is served\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Answer::text(405, "only GET, HEAD, and POST to /ft/ACTION\n"),
    };
    if let Some(token) = &shared.token
        && !authorized(head, token)
    {
        StatusCounters::add(&shared.counters.status_unauthorized, 1);
        return Answer::text(401, "this endpoint needs Authorization: Bearer TOKEN\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    let mut answer = match path {
        "/status" => match serde_json::to_vec(&shared.snapshot()) {
            Ok(mut body) => {
                body.push(b'\n');
                Answer {
                    status: 200,
                    content_type: "application/json",
                    body,
                    head_only,
                }
            }
            Err(_) => Answer::text(500, "cannot encode the status\n"),
        },
        "/metrics" => Answer {
            status: 200,
            content_type: metrics::CONTENT_TYPE,
            body: metrics::render(&shared.snapshot()).into_bytes(),
            head_only,
        },
        _ => Answer::text(
            404,
            "not found: this endpoint serves /status and /metrics\n",
        ),
    };
    answer.head_only = head_only;
    answer
}

/// `POST /ft/ACTION`: [`access::post`], counted when unauthorized.
fn post(head: &str, shared: &Shared) -> (Answer, Option<Posted>) {
    let p = access::post(head, shared.token.as_deref(), shared.actions.as_deref());
    if p.unauthorized {
        StatusCounters::add(&shared.counters.status_unauthorized, 1);
    }
    let acted = p.acted.then_some(Posted(p.then));
    (Answer::text(p.status, &p.text), acted)
}
