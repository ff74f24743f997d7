//! The status endpoint over real TCP: values and derivations, the
//! Prometheus text, bad and slow clients, and the real `lockstep status`
//! command against it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use lockstep_status::{Role, StatusCounters, StatusServer, StatusSnapshot};

fn lockstep() -> &'static str {
    env!("CARGO_BIN_EXE_lockstep")
}

/// A primary in the middle of a run, with every counter set to something
/// recognisable.
fn primary_counters() -> Arc<StatusCounters> {
    let c = StatusCounters::new(Role::Primary, "vm-a", Some("10.99.0.2:7000"));
    let set = StatusCounters::set;
    set(&c.epoch, 7);
    set(&c.log_seq, 1000);
    set(&c.sent_seq, 990);
    set(&c.acked_seq, 980);
    set(&c.replayed_seq, 950);
    set(&c.replayed_exit, 40_000);
    set(&c.exit_index, 41_234);
    set(&c.log_bytes, 123_456_789);
    set(&c.gate_frames, 3);
    set(&c.gate_disk_writes, 2);
    set(&c.heartbeats_sent, 55);
    set(&c.heartbeats_received, 54);
    set(&c.failovers, 1);
    set(&c.guest_exits, 41_234);
    set(&c.guest_sync_calls, 20_000);
    c.heard_from_peer();
    Arc::new(c)
}

fn spawn(counters: &Arc<StatusCounters>) -> StatusServer {
    StatusServer::spawn("127.0.0.1:0", counters.clone()).expect("spawn status server")
}

/// Sends `raw` and returns (status, headers, body) of the answer.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(raw).expect("send");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read answer");
    let text = String::from_utf8(answer).expect("utf-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, head.to_string(), body.to_string())
}

fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes(),
    )
}

fn get_snapshot(addr: SocketAddr) -> StatusSnapshot {
    let (status, head, body) = get(addr, "/status");
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("application/json"), "{head}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[test]
fn status_json_carries_the_counters_and_the_lag() {
    let c = primary_counters();
    let server = spawn(&c);
    let s = get_snapshot(server.local_addr());
    assert_eq!(
        (s.name.as_str(), s.peer.as_deref()),
        ("vm-a", Some("10.99.0.2:7000"))
    );
    assert_eq!((s.role, s.epoch), (Role::Primary, 7));
    assert_eq!(
        (s.log_seq, s.sent_seq, s.acked_seq, s.replayed_seq),
        (1000, 990, 980, 950)
    );
    assert_eq!((s.replayed_exit, s.exit_index), (40_000, 41_234));
    assert_eq!(s.lag_entries, Some(990 - 950));
    assert_eq!(s.lag_exits, Some(41_234 - 40_000));
    assert_eq!((s.gate_frames, s.gate_disk_writes), (3, 2));
    assert_eq!(
        (s.heartbeats_sent, s.heartbeats_received, s.failovers),
        (55, 54, 1)
    );
    assert_eq!((s.guest_exits, s.guest_sync_calls), (41_234, 20_000));
    assert!(s.peer_silent_ms.is_some_and(|ms| ms < 5_000));
    // A backup's lag is received − replayed; no exit lag is known there.
    c.set_role(Role::Backup);
    let s = get_snapshot(server.local_addr());
    assert_eq!(
        (s.role, s.lag_entries, s.lag_exits),
        (Role::Backup, Some(50), None)
    );
    // Alone, there is no backup to lag.
    c.set_role(Role::PrimaryAlone);
    let s = get_snapshot(server.local_addr());
    assert_eq!((s.lag_entries, s.lag_exits), (None, None));
    // The JSON is what the snapshot serializes to, field names included.
    let (_, _, body) = get(server.local_addr(), "/status?pretty=0");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["role"], "primary-alone");
    assert_eq!(v["format"], 1);
}

#[test]
fn metrics_are_prometheus_text() {
    let c = primary_counters();
    let server = spawn(&c);
    let (status, head, body) = get(server.local_addr(), "/metrics");
    assert_eq!(status, 200);
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    let mut typed = std::collections::HashMap::new();
    let mut values = std::collections::HashMap::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE line");
            typed.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with("# HELP lockstep_") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let family = series.split('{').next().expect("name");
        assert!(family.starts_with("lockstep_"), "{line}");
        assert!(typed.contains_key(family), "sample before its TYPE: {line}");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value: {line}"));
        values.insert(series.to_string(), value.to_string());
    }
    for (name, kind) in &typed {
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    let v = |k: &str| values.get(k).map(String::as_str);
    assert_eq!(v("lockstep_role{role=\"primary\"}"), Some("1"));
    assert_eq!(v("lockstep_role{role=\"backup\"}"), Some("0"));
    assert_eq!(
        v("lockstep_info{name=\"vm-a\",peer=\"10.99.0.2:7000\"}"),
        Some("1")
    );
    assert_eq!(v("lockstep_epoch"), Some("7"));
    assert_eq!(v("lockstep_log_bytes_total"), Some("123456789"));
    assert_eq!(v("lockstep_log_acked_seq"), Some("980"));
    assert_eq!(v("lockstep_lag_entries"), Some("40"));
    assert_eq!(v("lockstep_lag_exits"), Some("1234"));
    assert_eq!(v("lockstep_output_gate_frames"), Some("3"));
    assert_eq!(v("lockstep_output_gate_disk_writes"), Some("2"));
    assert_eq!(v("lockstep_heartbeats_received_total"), Some("54"));
    assert_eq!(v("lockstep_failovers_total"), Some("1"));
    assert!(v("lockstep_log_bandwidth_bytes_per_second").is_some());
    assert!(v("lockstep_peer_silence_seconds").is_some());
}

#[test]
fn bandwidth_is_the_rate_over_the_last_second() {
    let c = Arc::new(StatusCounters::new(Role::Primary, "bw", None));
    let server = spawn(&c);
    // 12.5 MB/s = 100 Mbit/s, as a function of time so that scheduling
    // jitter in this writer does not change the true rate.
    const RATE: f64 = 12.5e6;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (c, stop) = (c.clone(), stop.clone());
        move || {
            let t0 = Instant::now();
            while !stop.load(Relaxed) {
                let bytes = (t0.elapsed().as_secs_f64() * RATE) as u64;
                StatusCounters::set(&c.log_bytes, bytes);
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    });
    std::thread::sleep(Duration::from_millis(1500));
    let s = get_snapshot(server.local_addr());
    let mbit = s.log_mbit_per_s();
    assert!(
        (80.0..120.0).contains(&mbit),
        "{mbit} Mbit/s, expected ~100"
    );
    stop.store(true, Relaxed);
    writer.join().expect("writer");
    // Once the stream stops, the rate falls to 0 within about a window.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = get_snapshot(server.local_addr());
        if s.log_bandwidth_bytes_per_s == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rate stuck at {}",
            s.log_bandwidth_bytes_per_s
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_requests_get_clear_answers() {
    let c = primary_counters();
    let server = spawn(&c);
    let addr = server.local_addr();
    assert_eq!(get(addr, "/").0, 404);
    assert_eq!(get(addr, "/statusx").0, 404);
    assert_eq!(exchange(addr, b"POST /status HTTP/1.1\r\n\r\n").0, 405);
    assert_eq!(exchange(addr, b"hello\r\n\r\n").0, 400);
    assert_eq!(exchange(addr, b"GET / HTTP/1.1 extra\r\n\r\n").0, 400);
    assert_eq!(exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").0, 505);
    assert_eq!(
        exchange(addr, &[0xff, 0xfe, b'\r', b'\n', b'\r', b'\n']).0,
        400
    );
    let mut huge = b"GET /status HTTP/1.1\r\nX: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    let (status, _, _) = exchange(addr, &huge);
    assert_eq!(status, 431);
    let (status, head, body) = exchange(addr, b"HEAD /status HTTP/1.1\r\n\r\n");
    assert_eq!((status, body.as_str()), (200, ""), "{head}");
    // Still serving after all that.
    assert_eq!(get_snapshot(addr).epoch, 7);
}

#[test]
fn slow_and_silent_clients_do_not_stall_the_endpoint() {
    let c = primary_counters();
    let server = spawn(&c);
    let addr = server.local_addr();
    // Clients that connect and say nothing, or trickle half a request.
    let mut idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut trickle = TcpStream::connect(addr).expect("connect");
    trickle.write_all(b"GET /sta").expect("send");
    // Another client is served at once (these hold at most their own
    // address's share of the slots).
    let t = Instant::now();
    let mut other = connect_from("127.0.0.2", addr);
    other
        .write_all(b"GET /status HTTP/1.1\r\n\r\n")
        .expect("send");
    let mut answer = String::new();
    other.read_to_string(&mut answer).expect("answer");
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let snapshot: StatusSnapshot = serde_json::from_str(body).expect("snapshot");
    assert_eq!(snapshot.epoch, 7);
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    // The server closes them after its per-client deadline.
    let t = Instant::now();
    for s in idle.iter_mut().chain(std::iter::once(&mut trickle)) {
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        let mut buf = [0u8; 64];
        let n = s.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "an idle client got an answer");
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // A flood beyond the connection cap is shed, and the endpoint serves
    // again once those clients are gone.
    let flood: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    drop(flood);
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_snapshot_opt(addr).is_none() {
        assert!(Instant::now() < deadline, "endpoint did not recover");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get_snapshot_opt(addr: SocketAddr) -> Option<StatusSnapshot> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(b"GET /status HTTP/1.1\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.split_once("\r\n\r\n")?.1).ok()
}

#[test]
fn two_listeners_and_stop_on_drop() {
    let c = primary_counters();
    let status = spawn(&c);
    let metrics = spawn(&c);
    for addr in [status.local_addr(), metrics.local_addr()] {
        assert_eq!(get(addr, "/status").0, 200);
        assert_eq!(get(addr, "/metrics").0, 200);
    }
    let addr = status.local_addr();
    let t = Instant::now();
    drop(status);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "still listening after drop"
    );
    assert_eq!(get(metrics.local_addr(), "/metrics").0, 200);
}

fn run_status(args: &[&str]) -> std::process::Output {
    Command::new(lockstep())
        .arg("status")
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run lockstep status")
}

#[test]
fn status_command_prints_a_summary_and_json() {
    let c = primary_counters();
    let server = spawn(&c);
    let addr = server.local_addr().to_string();
    let out = run_status(&[&addr]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    for needle in [
        "vm-a: primary (epoch 7)",
        "10.99.0.2:7000",
        "appended 1000, sent 990, acked 980, replayed 950 (exit 40000)",
        "40 entries, 1234 exits",
        "Mbit/s",
        "3 frames, 2 disk writes held",
        "heard",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let out = run_status(&["--json", &format!("http://{addr}/")]);
    assert!(out.status.success(), "{out:?}");
    let s: StatusSnapshot = serde_json::from_slice(&out.stdout).expect("json output");
    assert_eq!((s.role, s.epoch, s.acked_seq), (Role::Primary, 7, 980));
}

#[test]
fn status_command_errors_are_clear() {
    // Nothing listens on this port.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = run_status(&[&format!("127.0.0.1:{port}")]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("cannot reach the status endpoint"), "{err}");
    assert!(err.contains("refused"), "{err}");
    // Something that accepts and never answers: a timeout, bounded.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let t = Instant::now();
    let out = run_status(&[&silent.local_addr().expect("addr").to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(err.contains("no complete answer"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(8), "{:?}", t.elapsed());
    let out = run_status(&["not-an-address"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected HOST:PORT"));
}

#[test]
fn status_command_watch_repeats() {
    let c = primary_counters();
    let server = spawn(&c);
    let mut child = Command::new(lockstep())
        .args(["status", "--json", "--watch", "50"])
        .arg(server.local_addr().to_string())
        .env("RUST_LOG", "off")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn lockstep status --watch");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let mut epochs = Vec::new();
    for i in 0..3u64 {
        StatusCounters::set(&c.epoch, 100 + i);
        let line = lines.next().expect("a line").expect("read");
        let s: StatusSnapshot = serde_json::from_str(&line).expect("json line");
        epochs.push(s.epoch);
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(epochs.windows(2).all(|w| w[0] <= w[1]), "{epochs:?}");
}

#[test]
fn an_endpoint_beyond_loopback_needs_a_token_and_refuses_requests_without_it() {
    let c = primary_counters();
    // Every address (not loopback) without a token: refused at start.
    let e = StatusServer::spawn("0.0.0.0:0", c.clone())
        .err()
        .expect("an endpoint beyond loopback needs a token");
    assert!(e.to_string().contains("bearer token"), "{e}");
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("token");
    let token = logchan::secure::write_new_token(&token_file).expect("token");
    let server = StatusServer::spawn_with(
        "0.0.0.0:0",
        c.clone(),
        lockstep_status::ServerOptions {
            token: Some(token.clone()),
            ..Default::default()
        },
    )
    .expect("with a token");
    let addr: SocketAddr = format!("127.0.0.1:{}", server.local_addr().port())
        .parse()
        .expect("addr");
    assert_eq!(get(addr, "/status").0, 401);
    let wrong = format!(
        "GET /status HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        "0".repeat(64)
    );
    assert_eq!(exchange(addr, wrong.as_bytes()).0, 401);
    let right = format!("GET /metrics HTTP/1.1\r\nauthorization:  Bearer {token}\r\n\r\n");
    assert_eq!(exchange(addr, right.as_bytes()).0, 200);
    assert_eq!(StatusCounters::get(&c.status_unauthorized), 2);
    // The command: refused without the token file, served with it.
    let out = run_status(&[&addr.to_string()]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let tf = token_file.display().to_string();
    let out = run_status(&["--token-file", &tf, &addr.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("vm-a: primary"));
}

#[test]
fn terminal_escapes_in_a_remote_name_are_shown_harmlessly() {
    let evil = "vm\x1b]0;owned\x07\x1b[2J\u{9b}31m\u{202e}kcatta";
    let c = Arc::new(StatusCounters::new(Role::Backup, evil, Some("peer\x1b[1A")));
    let server = spawn(&c);
    let addr = server.local_addr().to_string();
    for args in [vec![addr.as_str()], vec!["--json", addr.as_str()]] {
        let out = run_status(&args);
        assert!(out.status.success(), "{out:?}");
        let text = String::from_utf8(out.stdout).expect("utf-8");
        let bad: Vec<char> = text
            .chars()
            .filter(|ch| (ch.is_control() && *ch != '\n') || *ch == '\u{202e}')
            .collect();
        assert!(bad.is_empty(), "{args:?} printed {bad:?}: {text:?}");
        if args.len() == 1 {
            assert!(
                text.contains("vm\\x1b]0;owned\\x07\\x1b[2J\\u{9b}31m\\u{202e}kcatta"),
                "{text}"
            );
        } else {
            let s: StatusSnapshot = serde_json::from_str(&text).expect("still JSON");
            assert_eq!(s.name, evil, "the JSON keeps the value, escaped");
        }
    }
}

#[test]
fn one_client_cannot_take_every_slot() {
    let c = primary_counters();
    let server = spawn(&c);
    let addr = server.local_addr();
    // Many silent connections from 127.0.0.1: only a few are held.
    let hogs: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Another client (127.0.0.2) is served at once.
    let t = Instant::now();
    let mut s = connect_from("127.0.0.2", addr);
    s.write_all(b"GET /status HTTP/1.1\r\n\r\n").expect("send");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    drop(hogs);
}

/// A TCP connection from a chosen loopback address.
fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, SockaddrIn, bind, connect, socket};
    use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd};
    let fd = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
    .expect("socket");
    let local: std::net::SocketAddrV4 = format!("{local}:0").parse().expect("addr");
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    bind(fd.as_raw_fd(), &SockaddrIn::from(local)).expect("bind");
    connect(fd.as_raw_fd(), &SockaddrIn::from(to)).expect("connect");
    // SAFETY: a connected stream socket we own; the TcpStream takes it.
    unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }
}
