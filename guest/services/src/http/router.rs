//! HTTP routes over the same store as RESP:
//!
//! | request | response |
//! |---|---|
//! | `GET /kv/KEY` (`HEAD` too) | 200 + value, 404 |
//! | `PUT /kv/KEY` + body | 201 created, 204 replaced (after the write is durable) |
//! | `DELETE /kv/KEY` | 204, 404 |
//! | `GET /stats` | 200 + JSON counters |
//! | `GET /` | 200 + a short help text |
//!
//! KEY is percent-decoded. Other methods on these paths get 405.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write;

use super::parser::{Method, Request};
use crate::engine::{DurabilityMode, Engine, Refusal};
use crate::intfmt::push_u64;
use crate::journal::format::set_record_len;

/// Reason phrase of a status code.
pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        507 => "Insufficient Storage",
        _ => "Error",
    }
}

/// Appends a complete response.
pub fn respond(
    out: &mut Vec<u8>,
    status: u16,
    ctype: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
    allow: Option<&str>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    push_u64(out, u64::from(status));
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\nServer: lockstep-guest\r\n");
    if status != 204 {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(ctype.as_bytes());
        out.extend_from_slice(b"\r\nContent-Length: ");
        push_u64(out, body.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(a) = allow {
        out.extend_from_slice(b"Allow: ");
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // Said both ways: an HTTP/1.0 client (ab -k) keeps a connection only
    // when the response says keep-alive, and waits for the close otherwise.
    if keep_alive {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    } else {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if status != 204 && !head_only {
        out.extend_from_slice(body);
    }
}

/// A plain-text error or status response.
pub fn text(out: &mut Vec<u8>, status: u16, msg: &str, keep_alive: bool) {
    let mut body = String::from(msg);
    body.push('\n');
    respond(
        out,
        status,
        "text/plain",
        body.as_bytes(),
        keep_alive,
        false,
        None,
    );
}

/// Decodes `%HH` escapes; `None` for a malformed escape.
pub fn percent_decode(s: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] == b'%' {
            let h = s.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(core::str::from_utf8(h).ok()?, 16).ok()?;
            if !h.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(s[i]);
            i += 1;
        }
    }
    Some(out)
}

fn refusal_status(r: Refusal) -> u16 {
    match r {
        Refusal::ReadOnly => 403,
        Refusal::Full | Refusal::Memory => 507,
        Refusal::Failed => 503,
    }
}

/// Serves one request, appending the response to `out`.
pub fn handle(e: &mut Engine, req: &Request, out: &mut Vec<u8>) {
    e.stats.http_requests += 1;
    let ka = req.keep_alive;
    let path = match req.target.iter().position(|&b| b == b'?') {
        Some(q) => &req.target[..q],
        None => &req.target[..],
    };
    if let Some(raw) = path.strip_prefix(b"/kv/") {
        let Some(key) = percent_decode(raw) else {
            return text(out, 400, "malformed percent-encoding in key", ka);
        };
        if key.is_empty() {
            return text(out, 400, "empty key", ka);
        }
        return kv(e, req, &key, out);
    }
    match (path, req.method) {
        (b"/stats", Method::Get | Method::Head) => {
            let body = stats_json(e);
            respond(
                out,
                200,
                "application/json",
                body.as_bytes(),
                ka,
                req.method == Method::Head,
                None,
            );
        }
        (b"/stats", _) => respond(out, 405, "text/plain", b"", ka, false, Some("GET, HEAD")),
        (b"/", Method::Get | Method::Head) => respond(
            out,
            200,
            "text/plain",
            b"lockstep guest key-value service\nGET|PUT|DELETE /kv/KEY, GET /stats\n",
            ka,
            req.method == Method::Head,
            None,
        ),
        _ => text(out, 404, "not found", ka),
    }
}

fn kv(e: &mut Engine, req: &Request, key: &[u8], out: &mut Vec<u8>) {
    let ka = req.keep_alive;
    match req.method {
        Method::Get | Method::Head => match e.get(key) {
            Some(v) => respond(
                out,
                200,
                "application/octet-stream",
                v,
                ka,
                req.method == Method::Head,
                None,
            ),
            None => text(out, 404, "no such key", ka),
        },
        Method::Put => {
            let now = e.now_ms();
            let old = e.store.get(key, now).map(|x| x.value.len());
            let grow = (set_record_len(key.len(), req.body.len()) as u64)
                .saturating_sub(old.map_or(0, |l| set_record_len(key.len(), l) as u64));
            if let Err(r) = e.admit(grow) {
                return text(out, refusal_status(r), r.message(), ka);
            }
            e.set(key, req.body.clone(), 0);
            if old.is_some() {
                respond(out, 204, "", b"", ka, false, None);
            } else {
                text(out, 201, "created", ka);
            }
        }
        Method::Delete => {
            if let Err(r) = e.admit_shrink() {
                return text(out, refusal_status(r), r.message(), ka);
            }
            if e.del(key) {
                respond(out, 204, "", b"", ka, false, None);
            } else {
                text(out, 404, "no such key", ka);
            }
        }
        _ => respond(
            out,
            405,
            "text/plain",
            b"",
            ka,
            false,
            Some("GET, HEAD, PUT, DELETE"),
        ),
    }
}

/// The counters of `GET /stats`.
pub fn stats_json(e: &Engine) -> String {
    let st = &e.stats;
    let mut s = String::new();
    let mode = match e.durability() {
        DurabilityMode::Journal => "journal",
        DurabilityMode::ReadOnly => "read-only",
        DurabilityMode::Volatile => "none",
    };
    let _ = write!(
        s,
        "{{\"keys\":{},\"expires\":{},\"uptime_ms\":{},\"connected_clients\":{},\
         \"http_clients\":{},\"total_connections\":{},\"rejected_connections\":{},\
         \"commands\":{},\"http_requests\":{},\"keyspace_hits\":{},\"keyspace_misses\":{},\
         \"expired_keys\":{},\"protocol_errors\":{},\"refused_writes\":{},\
         \"durability\":\"{mode}\",\"durable_batch\":{}",
        e.store.len(),
        e.store.with_expiry(),
        e.uptime_ms(),
        st.connected_clients,
        st.http_clients,
        st.total_connections,
        st.rejected_connections,
        st.commands,
        st.http_requests,
        st.keyspace_hits,
        st.keyspace_misses,
        e.store.expired_keys,
        st.protocol_errors,
        st.refused_writes,
        e.durable(),
    );
    if let Some(j) = e.journal() {
        let _ = write!(
            s,
            ",\"log\":{{\"generation\":{},\"used_bytes\":{},\"capacity_bytes\":{},\
             \"live_bytes\":{},\"commits\":{},\"bytes_written\":{},\"compactions\":{},\
             \"failed\":{}}}",
            j.generation(),
            j.used_bytes(),
            j.capacity_bytes(),
            e.store.snapshot_bytes(),
            j.stats.commits,
            j.stats.bytes_written,
            j.stats.compactions,
            j.failed(),
        );
    }
    if let Some(r) = &e.recovery {
        let _ = write!(
            s,
            ",\"recovery\":{{\"keys\":{},\"records\":{},\"commits\":{},\"tail\":\"{}\"}}",
            r.keys, r.records, r.commits, r.tail
        );
    }
    s.push_str("}\n");
    s
}
