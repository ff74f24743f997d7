//! `POST /ft/ACTION` on a real endpoint with a recording handler: the
//! token is required also on loopback (403 without one configured, 401
//! without it in the request), junk, bodies, oversized heads and wrong
//! methods get clear answers and never reach the handler, a handler's
//! typed outcome becomes its HTTP status, and its after-answer step runs
//! once the answer is out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lockstep_status::actions::{Action, ActionHandler, Answered, Outcome, post};
use lockstep_status::{Role, ServerOptions, StatusCounters, StatusServer};

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

#[derive(Default)]
struct Recorder {
    seen: Mutex<Vec<Action>>,
    after: Arc<AtomicBool>,
}

impl ActionHandler for Recorder {
    fn act(&self, action: Action) -> Answered {
        self.seen.lock().unwrap().push(action.clone());
        let after = self.after.clone();
        match action {
            Action::Off => {
                Outcome::Done("dropped the backup; unprotected for 3.0 ms".into()).into()
            }
            Action::Resume => Outcome::Conflict("protection is not suspended".into()).into(),
            Action::TestFailover => Answered {
                outcome: Outcome::Done("stopping".into()),
                then: Some(Box::new(move || after.store(true, Ordering::SeqCst))),
            },
            _ => Outcome::Failed("not in this test".into()).into(),
        }
    }
}

fn server(token: Option<&str>) -> (StatusServer, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let counters = Arc::new(StatusCounters::new(Role::Primary, "vm", None));
    let s = StatusServer::spawn_with(
        "127.0.0.1:0",
        counters,
        ServerOptions {
            token: token.map(String::from),
            actions: Some(rec.clone()),
        },
    )
    .expect("spawn");
    (s, rec)
}

/// Sends `raw`; returns the status and the body.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    // An oversized head may be cut off by the answer: a failed write is fine.
    let _ = s.write_all(raw);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {head:?}"));
    (status, body.to_string())
}

fn authed(line: &str, extra: &str) -> Vec<u8> {
    format!("{line}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\r\n").into_bytes()
}

#[test]
fn without_a_token_configured_every_action_is_refused_even_on_loopback() {
    let (s, rec) = server(None);
    let (status, body) = exchange(s.local_addr(), &authed("POST /ft/off HTTP/1.1", ""));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--status-token-file"), "{body}");
    // Reads stay open on loopback.
    let (status, _) = exchange(s.local_addr(), b"GET /status HTTP/1.1\r\n\r\n");
    assert_eq!(status, 200);
    assert!(rec.seen.lock().unwrap().is_empty());
}

#[test]
fn actions_need_the_token_and_get_typed_answers() {
    let (s, rec) = server(Some(TOKEN));
    let addr = s.local_addr();
    assert_eq!(exchange(addr, b"POST /ft/off HTTP/1.1\r\n\r\n").0, 401);
    let wrong = format!(
        "POST /ft/off HTTP/1.1\r\nAuthorization: Bearer {}\r\n\r\n",
        "f".repeat(32)
    );
    assert_eq!(exchange(addr, wrong.as_bytes()).0, 401);
    assert!(
        rec.seen.lock().unwrap().is_empty(),
        "nothing reached the handler"
    );

    let (status, body) = exchange(addr, &authed("POST /ft/off HTTP/1.1", ""));
    assert_eq!(
        (status, body.trim()),
        (200, "dropped the backup; unprotected for 3.0 ms")
    );
    assert_eq!(
        exchange(addr, &authed("POST /ft/resume HTTP/1.1", "")).0,
        409
    );
    assert_eq!(exchange(addr, &authed("POST /ft/on HTTP/1.1", "")).0, 500);

    // The client half: the same answers, as `lockstep ft` prints them.
    let (status, text) = post(
        &addr.to_string(),
        TOKEN,
        &Action::Off,
        Duration::from_secs(5),
    )
    .expect("post");
    assert_eq!(
        (status, text.as_str()),
        (200, "dropped the backup; unprotected for 3.0 ms")
    );
    let (status, _) = post(
        &addr.to_string(),
        "nope",
        &Action::Off,
        Duration::from_secs(5),
    )
    .expect("post");
    assert_eq!(status, 401);

    // The after-answer step runs (a test failover's stop).
    assert_eq!(
        exchange(addr, &authed("POST /ft/test-failover HTTP/1.1", "")).0,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !rec.after.load(Ordering::SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the after-answer step did not run"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(rec.seen.lock().unwrap().len(), 5);
}

#[test]
fn junk_bodies_oversized_heads_and_wrong_methods_never_reach_the_handler() {
    let (s, rec) = server(Some(TOKEN));
    let addr = s.local_addr();
    for (raw, want) in [
        (authed("POST /ft/reboot HTTP/1.1", ""), 400),
        (authed("POST /ft/migrate-backup HTTP/1.1", ""), 400),
        (authed("POST /ft/off?to=a:1 HTTP/1.1", ""), 400),
        (authed("POST /ft/on?to=a%0d%0a:1 HTTP/1.1", ""), 400),
        (authed("POST /ft/on?to=host HTTP/1.1", ""), 400),
        (authed("POST /status HTTP/1.1", ""), 405),
        (authed("POST /ft/off HTTP/1.1 extra", ""), 400),
        (authed("POST /ft/off HTTP/2.0", ""), 505),
        (authed("PUT /ft/off HTTP/1.1", ""), 405),
        (authed("DELETE /ft/off HTTP/1.1", ""), 405),
        (
            authed("POST /ft/off HTTP/1.1", "Content-Length: 5\r\n"),
            413,
        ),
        (
            authed("POST /ft/off HTTP/1.1", "Transfer-Encoding: chunked\r\n"),
            413,
        ),
    ] {
        let (status, body) = exchange(addr, &raw);
        assert_eq!(status, want, "{:?}: {body}", String::from_utf8_lossy(&raw));
        assert!(!body.is_empty(), "every refusal says why");
    }
    // A GET of an action path is not an action.
    assert_eq!(exchange(addr, &authed("GET /ft/off HTTP/1.1", "")).0, 404);
    let mut huge = authed("POST /ft/off HTTP/1.1", "");
    huge.truncate(huge.len() - 2);
    huge.extend(b"X: ");
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    huge.extend(b"\r\n\r\n");
    assert_eq!(exchange(addr, &huge).0, 431);
    assert!(rec.seen.lock().unwrap().is_empty());
    // Still serving after all that.
    assert_eq!(exchange(addr, &authed("POST /ft/off HTTP/1.1", "")).0, 200);
}
