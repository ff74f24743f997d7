//! Incremental HTTP/1.x request parser with limits: the head (request line
//! and headers) at most 8 KiB, bodies only with Content-Length (at most
//! 1 MiB), no chunked requests. Pipelined requests are parsed one by one.

use alloc::vec::Vec;

use crate::intfmt::parse_usize;
use crate::limits::{HTTP_MAX_BODY, HTTP_MAX_HEAD};

/// Request methods the router distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Put,
    Post,
    Delete,
    Other,
}

/// A complete request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target as sent (path and query).
    pub target: Vec<u8>,
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// A request that cannot be served: the response status, after which the
/// connection is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpError {
    pub status: u16,
    pub detail: &'static str,
}

const fn err(status: u16, detail: &'static str) -> HttpError {
    HttpError { status, detail }
}

#[derive(Clone, Debug)]
struct Head {
    method: Method,
    target: Vec<u8>,
    keep_alive: bool,
    len: usize,
    content_length: usize,
    expect_continue: bool,
}

/// Parser state of one connection.
#[derive(Debug, Default)]
pub struct HttpParser {
    /// Bytes already searched for the end of the head.
    scanned: usize,
    head: Option<Head>,
    /// The client waits for `100 Continue` before sending the body.
    send_continue: bool,
}

/// End of the head: the index after the blank line (CRLF CRLF, or bare LFs).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            match buf.get(i + 1) {
                Some(b'\n') => return Some(i + 2),
                Some(b'\r') if buf.get(i + 2) == Some(&b'\n') => return Some(i + 3),
                _ => {}
            }
        }
        i += 1;
    }
    None
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn parse_head(h: &[u8]) -> Result<Head, HttpError> {
    let mut lines = h
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let line = lines.next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (Some(m), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(err(400, "malformed request line"));
    };
    if m.is_empty() || !m.iter().all(|&b| is_token(b)) || target.is_empty() {
        return Err(err(400, "malformed request line"));
    }
    let method = match m {
        b"GET" => Method::Get,
        b"HEAD" => Method::Head,
        b"PUT" => Method::Put,
        b"POST" => Method::Post,
        b"DELETE" => Method::Delete,
        _ => Method::Other,
    };
    let mut keep_alive = match version {
        b"HTTP/1.1" => true,
        b"HTTP/1.0" => false,
        v if v.starts_with(b"HTTP/") => return Err(err(505, "HTTP version not supported")),
        _ => return Err(err(400, "malformed request line")),
    };
    let mut content_length: Option<usize> = None;
    let mut expect_continue = false;
    for l in lines {
        if l.is_empty() {
            break;
        }
        let colon = l
            .iter()
            .position(|&b| b == b':')
            .ok_or(err(400, "malformed header"))?;
        let name = &l[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_token(b)) {
            return Err(err(400, "malformed header"));
        }
        let value = trim(&l[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            let n = parse_usize(value).ok_or(err(400, "bad Content-Length"))?;
            if content_length.is_some_and(|c| c != n) {
                return Err(err(400, "conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            return Err(err(
                411,
                "chunked requests are not supported; send Content-Length",
            ));
        } else if name.eq_ignore_ascii_case(b"expect") {
            expect_continue = value.eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for tok in value.split(|&b| b == b',') {
                let tok = trim(tok);
                if tok.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if tok.eq_ignore_ascii_case(b"keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    if matches!(method, Method::Put | Method::Post) && content_length.is_none() {
        return Err(err(411, "Content-Length required"));
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > HTTP_MAX_BODY {
        return Err(err(413, "body larger than 1 MiB"));
    }
    Ok(Head {
        method,
        target: target.to_vec(),
        keep_alive,
        len: h.len(),
        content_length,
        expect_continue,
    })
}

impl HttpParser {
    /// A parser at the start of a request.
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses from `buf` (the unconsumed input): the bytes consumed and a
    /// request if one is complete. On error, respond and close.
    pub fn next(&mut self, buf: &[u8]) -> Result<(usize, Option<Request>), HttpError> {
        if self.head.is_none() {
            // Tolerate empty lines between requests (RFC 9112 §2.2).
            let skip = buf
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            if skip > 0 {
                self.scanned = 0;
                return Ok((skip, None));
            }
            let from = self.scanned.saturating_sub(2);
            let Some(end) = head_end(buf, from) else {
                if buf.len() > HTTP_MAX_HEAD {
                    return Err(err(431, "request header fields too large"));
                }
                self.scanned = buf.len();
                return Ok((0, None));
            };
            if end > HTTP_MAX_HEAD {
                return Err(err(431, "request header fields too large"));
            }
            let head = parse_head(&buf[..end])?;
            // curl waits (up to a second) for this before sending a body.
            self.send_continue = head.expect_continue && buf.len() < end + head.content_length;
            self.head = Some(head);
        }
        let Some(h) = &self.head else {
            return Ok((0, None));
        };
        let total = h.len + h.content_length;
        if buf.len() < total {
            return Ok((0, None));
        }
        let req = Request {
            method: h.method,
            target: h.target.clone(),
            body: buf[h.len..total].to_vec(),
            keep_alive: h.keep_alive,
        };
        self.head = None;
        self.scanned = 0;
        Ok((total, Some(req)))
    }

    /// Whether a `100 Continue` should be sent now (asked once per request).
    pub fn take_continue(&mut self) -> bool {
        core::mem::take(&mut self.send_continue)
    }

    /// Whether the parser is between requests with nothing buffered.
    pub fn idle(&self) -> bool {
        self.head.is_none() && self.scanned == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    fn all(input: &[u8], piece: usize) -> Result<Vec<Request>, HttpError> {
        let mut p = HttpParser::new();
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for c in input.chunks(piece) {
            buf.extend_from_slice(c);
            loop {
                let (n, r) = p.next(&buf)?;
                buf.drain(..n);
                match r {
                    Some(r) => out.push(r),
                    None if n == 0 => break,
                    None => {}
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn pipelined_in_pieces() {
        let input = b"GET /kv/a HTTP/1.1\r\nHost: x\r\n\r\nPUT /kv/b HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloDELETE /kv/a HTTP/1.0\r\n\r\n";
        for piece in [1, 2, 7, 1000] {
            let r = all(input, piece).expect("parses");
            assert_eq!(r.len(), 3);
            assert_eq!(r[0].method, Method::Get);
            assert!(r[0].keep_alive);
            assert_eq!(r[1].body, b"hello");
            assert_eq!(r[2].method, Method::Delete);
            assert!(!r[2].keep_alive, "HTTP/1.0 closes by default");
        }
    }

    #[test]
    fn expect_continue_is_signalled_once() {
        let mut p = HttpParser::new();
        let head = b"PUT /kv/a HTTP/1.1\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n";
        assert_eq!(p.next(head), Ok((0, None)));
        assert!(p.take_continue());
        assert!(!p.take_continue());
        let mut all = head.to_vec();
        all.extend_from_slice(b"abc");
        let (n, r) = p.next(&all).expect("parses");
        assert_eq!(n, all.len());
        assert_eq!(r.map(|r| r.body), Some(b"abc".to_vec()));
        assert!(!p.take_continue());
    }

    #[test]
    fn connection_header_and_bare_lf() {
        let r = all(b"GET / HTTP/1.1\nConnection: close\n\n", 100).expect("parses");
        assert!(!r[0].keep_alive);
        let r = all(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", 100).expect("parses");
        assert!(r[0].keep_alive);
    }

    #[test]
    fn errors_and_limits() {
        let st = |i: &[u8]| all(i, 4096).map(|_| ()).map_err(|e| e.status);
        assert_eq!(st(b"garbage\r\n\r\n"), Err(400));
        assert_eq!(st(b"GET /\r\n\r\n"), Err(400));
        assert_eq!(st(b"GET / HTTP/2.0\r\n\r\n"), Err(505));
        assert_eq!(st(b"PUT /kv/a HTTP/1.1\r\n\r\n"), Err(411));
        assert_eq!(
            st(b"PUT /kv/a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Err(411)
        );
        assert_eq!(
            st(b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1048577\r\n\r\n"),
            Err(413)
        );
        assert_eq!(
            st(b"PUT /kv/a HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
            Err(400)
        );
        assert_eq!(st(b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n"), Err(400));
        let mut big = b"GET / HTTP/1.1\r\n".to_vec();
        big.extend(vec![b'a'; HTTP_MAX_HEAD]);
        assert_eq!(st(&big), Err(431));
        let mut big2 = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big2.extend(vec![b'a'; HTTP_MAX_HEAD]);
        big2.extend_from_slice(b"\r\n\r\n");
        assert_eq!(st(&big2), Err(431));
    }
}
