//! A minimal HTTP/1.1 client on `std::net::TcpStream`, for the etcd
//! arbiter's JSON gateway and for `lockstep status`.
//!
//! Written here rather than pulling in a client crate (reqwest, ureq, hyper
//! and their TLS and async stacks) because both users need one small request
//! to a known server with a hard deadline, and the arbiter sits on the
//! failover path, where fewer moving parts are worth more than features.
//! It sends one request per connection (`Connection: close`), enforces one
//! deadline over resolve-connect-write-read, and understands
//! `Content-Length`, `Transfer-Encoding: chunked` and read-to-close bodies.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Largest answer accepted (headers and body).
pub const MAX_RESPONSE: usize = 16 << 20;
/// Largest header block accepted.
const MAX_HEADER: usize = 64 << 10;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot resolve {addr}")]
    Resolve {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr} resolves to no address")]
    NoAddress { addr: String },
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no complete answer from {addr} within {timeout:?}")]
    Timeout { addr: String, timeout: Duration },
    #[error("{op} {addr}")]
    Io {
        op: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("malformed HTTP answer from {addr}: {why}")]
    Malformed { addr: String, why: String },
    #[error("the answer from {addr} is larger than {MAX_RESPONSE} bytes")]
    TooLarge { addr: String },
}

impl HttpError {
    /// True for "nothing answers there" (refused, unreachable, timed out),
    /// as opposed to a server that answered badly.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Resolve { .. }
        )
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request to `addr` (`HOST:PORT`) and returns the answer, whatever
/// its status. `body` is `(content type, bytes)`. The whole exchange,
/// including connecting, must finish within `timeout`. (Name resolution
/// goes through the system resolver, which has its own timeouts.)
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    request_with(addr, method, path, &[], body, timeout)
}

/// [`request`] with extra request headers (`name`, `value`; neither may
/// hold a line break).
pub fn request_with(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<(&str, &[u8])>,
    timeout: Duration,
) -> Result<Response, HttpError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || HttpError::Timeout {
        addr: addr.to_string(),
        timeout,
    };
    let targets: Vec<SocketAddr> = addr
        .to_socket_addrs()
        .map_err(|source| HttpError::Resolve {
            addr: addr.to_string(),
            source,
        })?
        .collect();
    let mut stream = None;
    let mut last_err = None;
    for target in &targets {
        let left = remaining(deadline).ok_or_else(timed_out)?;
        match TcpStream::connect_timeout(target, left) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let mut stream = match (stream, last_err) {
        (Some(s), _) => s,
        (None, Some(source)) => {
            return Err(HttpError::Connect {
                addr: addr.to_string(),
                source,
            });
        }
        (None, None) => {
            return Err(HttpError::NoAddress {
                addr: addr.to_string(),
            });
        }
    };
    // Small requests; don't let Nagle hold the body back behind the headers.
    let _ = stream.set_nodelay(true);

    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: lockstep\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        if !name.contains(['\r', '\n']) && !value.contains(['\r', '\n']) {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
    }
    if let Some((content_type, bytes)) = body {
        head.push_str(&format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            bytes.len()
        ));
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if let Some((_, bytes)) = body {
        out.extend_from_slice(bytes);
    }
    let io = |op| {
        move |source| HttpError::Io {
            op,
            addr: addr.to_string(),
            source,
        }
    };
    let left = remaining(deadline).ok_or_else(timed_out)?;
    stream
        .set_write_timeout(Some(left))
        .map_err(io("configure"))?;
    stream.write_all(&out).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => timed_out(),
        _ => io("send request to")(e),
    })?;

    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 16 << 10];
    loop {
        if let Some(resp) = parse_response(&buf, false, addr)? {
            return Ok(resp);
        }
        let left = remaining(deadline).ok_or_else(timed_out)?;
        stream
            .set_read_timeout(Some(left))
            .map_err(io("configure"))?;
        match stream.read(&mut chunk) {
            Ok(0) => {
                return parse_response(&buf, true, addr)?.ok_or_else(|| HttpError::Malformed {
                    addr: addr.to_string(),
                    why: "connection closed before the answer was complete".into(),
                });
            }
            Ok(n) => {
                if buf.len() + n > MAX_RESPONSE {
                    return Err(HttpError::TooLarge {
                        addr: addr.to_string(),
                    });
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(timed_out());
            }
            Err(e) => return Err(io("read answer from")(e)),
        }
    }
}

fn remaining(deadline: Instant) -> Option<Duration> {
    let left = deadline.checked_duration_since(Instant::now())?;
    (!left.is_zero()).then_some(left)
}

/// Parses what has arrived so far; `None` if more is needed. `closed` means
/// the server has closed the connection (then a body without length ends
/// there).
fn parse_response(buf: &[u8], closed: bool, addr: &str) -> Result<Option<Response>, HttpError> {
    let malformed = |why: &str| HttpError::Malformed {
        addr: addr.to_string(),
        why: why.to_string(),
    };
    let Some(end) = find(buf, b"\r\n\r\n") else {
        if buf.len() > MAX_HEADER {
            return Err(malformed("header block too large"));
        }
        return Ok(None);
    };
    let head =
        std::str::from_utf8(&buf[..end]).map_err(|_| malformed("header is not valid UTF-8"))?;
    let body = &buf[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(malformed(&format!("status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .filter(|s| (100..600).contains(s))
        .ok_or_else(|| malformed(&format!("status line {status_line:?}")))?;
    let reason = parts.next().unwrap_or_default().to_string();
    let mut content_length = None;
    let mut chunked = false;
    let mut content_type = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(malformed(&format!("header line {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| malformed(&format!("Content-Length {value:?}")))?;
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        } else if name.eq_ignore_ascii_case("content-type") {
            content_type = Some(value.to_string());
        }
    }
    let body = if chunked {
        match decode_chunked(body).map_err(malformed)? {
            Some(b) => b,
            None if closed => return Err(malformed("chunked body cut short")),
            None => return Ok(None),
        }
    } else if let Some(n) = content_length {
        if n > MAX_RESPONSE {
            return Err(HttpError::TooLarge {
                addr: addr.to_string(),
            });
        }
        if body.len() < n {
            if closed {
                return Err(malformed("body shorter than its Content-Length"));
            }
            return Ok(None);
        }
        body[..n].to_vec()
    } else if status == 204 || status == 304 || (100..200).contains(&status) {
        Vec::new()
    } else if closed {
        body.to_vec()
    } else {
        return Ok(None);
    };
    Ok(Some(Response {
        status,
        reason,
        content_type,
        body,
    }))
}

/// Decodes a complete chunked body; `None` if it is not complete yet.
fn decode_chunked(mut data: &[u8]) -> Result<Option<Vec<u8>>, &'static str> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = find(data, b"\r\n") else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&data[..eol]).map_err(|_| "bad chunk size line")?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "bad chunk size")?;
        if size > MAX_RESPONSE {
            return Err("chunk too large");
        }
        data = &data[eol + 2..];
        if size == 0 {
            // Trailers, then an empty line.
            loop {
                let Some(eol) = find(data, b"\r\n") else {
                    return Ok(None);
                };
                if eol == 0 {
                    return Ok(Some(out));
                }
                data = &data[eol + 2..];
            }
        }
        if data.len() < size + 2 {
            return Ok(None);
        }
        if &data[size..size + 2] != b"\r\n" {
            return Err("chunk not followed by CRLF");
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_body() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            false,
            "x",
        )
        .expect("parse")
        .expect("complete");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hi"[..]));
        let partial = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nhi",
            false,
            "x",
        )
        .expect("parse");
        assert!(partial.is_none());
    }

    #[test]
    fn chunked_body() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let r = parse_response(raw, false, "x")
            .expect("parse")
            .expect("complete");
        assert_eq!(r.body, b"abcde");
        assert!(
            parse_response(&raw[..raw.len() - 2], false, "x")
                .expect("parse")
                .is_none()
        );
        assert!(parse_response(&raw[..raw.len() - 2], true, "x").is_err());
    }

    #[test]
    fn body_to_close_and_garbage() {
        let raw = b"HTTP/1.0 404 Not Found\r\n\r\nnope";
        assert!(parse_response(raw, false, "x").expect("parse").is_none());
        let r = parse_response(raw, true, "x")
            .expect("parse")
            .expect("complete");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"nope"[..]));
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n", false, "x").is_err());
        assert!(parse_response(b"HTTP/1.1 abc OK\r\n\r\n", false, "x").is_err());
    }
}
