//! A client of etcd's v3 JSON gateway (grpc-gateway: `POST /v3/<service>/<op>`
//! with proto3 JSON, keys and values in base64), shared by the `etcd://`
//! arbiter ([`crate::arbiter::etcd`]) and the spares registry
//! ([`crate::membership`]).
//!
//! Through `lockstep_status::http` rather than an etcd client crate: the
//! arbiter sits on the failover path, where one small request with a hard
//! deadline and no async runtime is worth more than features (the http
//! module says more).
//!
//! etcd 3.4 (Debian bookworm's `etcd-server`) serves the gateway at `/v3/`
//! and `/v3beta/`; 3.3 only at `/v3beta/`, 3.5+ only at `/v3/`. `/v3/` is
//! tried first and a 404 that is not a gRPC error (etcd's own "not found",
//! e.g. an unknown lease, is a 404 with a JSON body) switches to
//! `/v3beta/` for good.
//!
//! Everything read from etcd is untrusted: answers are bounded by the http
//! client ([`http::MAX_RESPONSE`]), and every field is checked as it is
//! taken out (a missing or malformed one is a [`GatewayError::Protocol`]
//! or, for a key-value, skipped by its reader), never unwrapped.

pub mod ops;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::Value;

use lockstep_status::http::{self, HttpError};

pub use ops::{KeyValue, Lease};

/// One request to one endpoint must finish within this; callers retry the
/// whole operation within their own deadlines.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// What went wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("cannot reach etcd at {endpoint}")]
    Unreachable {
        endpoint: String,
        #[source]
        source: HttpError,
    },
    #[error("etcd at {endpoint} refused the request: HTTP {status}: {message}")]
    Refused {
        endpoint: String,
        status: u16,
        message: String,
        /// The gRPC status code of a gateway error (5: not found).
        code: Option<i64>,
    },
    #[error("unexpected answer from etcd at {endpoint}: {why}")]
    Protocol { endpoint: String, why: String },
}

impl GatewayError {
    /// etcd's own "not found" (gRPC code 5), e.g. a lease already gone.
    pub fn is_not_found(&self) -> bool {
        matches!(self, GatewayError::Refused { code: Some(5), .. })
    }
}

/// The etcd cluster a URI names, and how to talk to it.
pub struct Gateway {
    uri: String,
    /// `HOST:PORT` of each cluster member given, tried in order.
    endpoints: Vec<String>,
    timeout: Duration,
    /// Set once `/v3/` answered 404 (etcd 3.3).
    beta: AtomicBool,
}

impl Gateway {
    /// `rest` is the URI after `etcd://`: `HOST:PORT[,HOST:PORT...]/KEY`.
    /// Returns the gateway and `KEY` (without a trailing `/`). `what`
    /// names the key in errors (`KEY`, `PREFIX`). Nothing is contacted.
    pub fn parse(uri: &str, rest: &str, what: &str) -> Result<(Gateway, String), String> {
        let missing = || format!("{what} is missing (e.g. etcd://10.0.0.1:2379/lockstep/vm1)");
        let (authority, key) = rest.split_once('/').ok_or_else(missing)?;
        let key = key.trim_end_matches('/');
        if key.is_empty() {
            return Err(missing());
        }
        if key.contains(['?', '#']) || key.chars().any(char::is_control) {
            return Err(format!(
                "{what} {key:?} has characters a key may not have here"
            ));
        }
        if authority.contains('@') {
            return Err("user names and passwords are not supported".into());
        }
        let mut endpoints = Vec::new();
        for endpoint in authority.split(',') {
            let (host, port) = endpoint
                .rsplit_once(':')
                .ok_or_else(|| format!("{endpoint:?} is not HOST:PORT"))?;
            let port_ok = port.parse::<u16>().is_ok_and(|p| p != 0);
            if host.is_empty() || !port_ok {
                return Err(format!("{endpoint:?} is not HOST:PORT"));
            }
            endpoints.push(endpoint.to_string());
        }
        let gateway = Gateway {
            uri: uri.to_string(),
            endpoints,
            timeout: DEFAULT_TIMEOUT,
            beta: AtomicBool::new(false),
        };
        Ok((gateway, key.to_string()))
    }

    /// Per-request timeout (default [`DEFAULT_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    pub(crate) fn protocol(&self, why: impl Into<String>) -> GatewayError {
        GatewayError::Protocol {
            endpoint: self.uri.clone(),
            why: why.into(),
        }
    }

    /// POSTs `body` to `/v3/{path}` (e.g. `kv/txn`, `lease/grant`) on the
    /// first endpoint that answers, and returns the first JSON value of
    /// the answer (a streaming call such as `lease/keepalive` answers
    /// `{"result": ...}` per message).
    pub fn call(&self, path: &str, body: &Value) -> Result<Value, GatewayError> {
        let payload = body.to_string();
        let mut last = None;
        for endpoint in &self.endpoints {
            match self.call_one(endpoint, path, payload.as_bytes()) {
                Ok(v) => return Ok(v),
                // Another member may have a leader or be reachable.
                Err(
                    e @ (GatewayError::Unreachable { .. }
                    | GatewayError::Refused { status: 500.., .. }),
                ) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| self.protocol("no endpoint")))
    }

    fn call_one(&self, endpoint: &str, path: &str, payload: &[u8]) -> Result<Value, GatewayError> {
        let unreachable = |source: HttpError| GatewayError::Unreachable {
            endpoint: endpoint.to_string(),
            source,
        };
        let post = |api: &str| {
            http::request(
                endpoint,
                "POST",
                &format!("/{api}/{path}"),
                Some(("application/json", payload)),
                self.timeout,
            )
        };
        let mut resp = if self.beta.load(Ordering::Relaxed) {
            post("v3beta").map_err(unreachable)?
        } else {
            let resp = post("v3").map_err(unreachable)?;
            if resp.status == 404 && first_json(&resp.body).is_none() {
                let beta = post("v3beta").map_err(unreachable)?;
                if beta.status != 404 || first_json(&beta.body).is_some() {
                    self.beta.store(true, Ordering::Relaxed);
                }
                beta
            } else {
                resp
            }
        };
        let text = std::mem::take(&mut resp.body);
        let value = first_json(&text);
        if resp.status != 200 {
            // The gateway's errors are {"error": ..., "message": ..., "code": N}.
            let message = value
                .as_ref()
                .and_then(|v| v.get("message").or_else(|| v.get("error")))
                .and_then(Value::as_str)
                .map(|m| m.chars().take(200).collect())
                .unwrap_or_else(|| String::from_utf8_lossy(&text).chars().take(200).collect());
            return Err(GatewayError::Refused {
                endpoint: endpoint.to_string(),
                status: resp.status,
                message,
                code: value.as_ref().and_then(|v| int64(v.get("code")?)),
            });
        }
        value.ok_or_else(|| GatewayError::Protocol {
            endpoint: endpoint.to_string(),
            why: format!("answer to {path} is not JSON"),
        })
    }
}

/// The first JSON object of `body`, if it starts with one (every answer
/// of the gateway is an object; "404 page not found" starts with a number).
fn first_json(body: &[u8]) -> Option<Value> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<Value>()
        .next()?
        .ok()
        .filter(Value::is_object)
}

pub fn b64(bytes: impl AsRef<[u8]>) -> String {
    B64.encode(bytes)
}

pub fn unb64(v: &Value) -> Option<Vec<u8>> {
    B64.decode(v.as_str()?).ok()
}

/// A proto3 JSON int64: a string of digits (what the gateway sends) or a
/// number.
pub fn int64(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// The end of the range of every key that starts with `prefix` (etcd's
/// `range_end`): the prefix with its last byte below 0xff incremented and
/// what follows dropped; `"\0"` (every key) if there is none.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if let Some(next) = last.checked_add(1) {
            end.push(next);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"spares/"), b"spares0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }

    #[test]
    fn uris() {
        let (g, key) = Gateway::parse("etcd://h:1,h2:2/a/b/", "h:1,h2:2/a/b/", "KEY").expect("ok");
        assert_eq!((g.endpoints.len(), key.as_str()), (2, "a/b"));
        for bad in [
            "h:1", "h:1/", "h/k", "h:0/k", ":1/k", "u@h:1/k", "h:1/k?x", "h:x/k",
        ] {
            assert!(Gateway::parse(bad, bad, "KEY").is_err(), "{bad}");
        }
    }

    #[test]
    fn int64s() {
        assert_eq!(int64(&Value::from("12")), Some(12));
        assert_eq!(int64(&Value::from(12)), Some(12));
        assert_eq!(int64(&Value::from("x")), None);
        assert_eq!(int64(&Value::Null), None);
    }

    /// etcd 3.3 serves the gateway only under /v3beta/: a plain 404 on
    /// /v3/ switches for good. (Debian's 3.4 serves both, so the real-etcd
    /// tests cannot show this.)
    #[test]
    fn falls_back_to_v3beta_once() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let mut paths = Vec::new();
            for _ in 0..3 {
                let (mut s, _) = listener.accept().expect("accept");
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers and the small JSON body arrive together or in two
                // reads; the body ends with '}'.
                while !buf.ends_with(b"}") {
                    let n = s.read(&mut chunk).expect("read");
                    assert!(n > 0, "client closed early");
                    buf.extend_from_slice(&chunk[..n]);
                }
                let text = String::from_utf8_lossy(&buf).into_owned();
                let path = text.split(' ').nth(1).unwrap_or_default().to_string();
                let answer: &[u8] = if path.starts_with("/v3/") {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 19\r\n\r\n404 page not found\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 13\r\n\r\n{\"header\":{}}"
                };
                s.write_all(answer).expect("answer");
                paths.push(path);
            }
            paths
        });
        let rest = format!("{addr}/k");
        let (g, _) = Gateway::parse(&format!("etcd://{rest}"), &rest, "KEY").expect("parse");
        let body = serde_json::json!({"key": b64("k")});
        g.call("kv/range", &body).expect("first");
        g.call("kv/range", &body).expect("second");
        let paths = server.join().expect("server");
        assert_eq!(
            paths,
            ["/v3/kv/range", "/v3beta/kv/range", "/v3beta/kv/range"]
        );
    }
}
