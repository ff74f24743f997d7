//! The client side of `lockstep status`: one `GET /status` over the
//! minimal HTTP client the etcd arbiter also uses.

use std::time::Duration;

use serde::Deserialize;

use super::snapshot::StatusSnapshot;
use crate::http::{self, HttpError};

/// How long one query may take, connect included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("bad status address {addr:?}: expected HOST:PORT, e.g. 10.99.0.1:7010")]
    BadAddress { addr: String },
    #[error(
        "cannot reach the status endpoint at {addr} (is a lockstep VMM running with --status {addr}?)"
    )]
    Unreachable {
        addr: String,
        #[source]
        source: HttpError,
    },
    #[error("the status endpoint at {addr} failed")]
    Exchange {
        addr: String,
        #[source]
        source: HttpError,
    },
    #[error("{addr} answered HTTP {status} to GET /status: {body}")]
    Status {
        addr: String,
        status: u16,
        body: String,
    },
    #[error("{addr} answered GET /status with something that is not a lockstep status")]
    Decode {
        addr: String,
        #[source]
        source: serde_json::Error,
    },
}

impl FetchError {
    /// A failed exchange with the endpoint at `addr`: unreachable (no VMM
    /// there), or broken.
    pub(crate) fn http(addr: &str, source: HttpError) -> Self {
        let addr = addr.to_string();
        if source.is_unreachable() {
            FetchError::Unreachable { addr, source }
        } else {
            FetchError::Exchange { addr, source }
        }
    }
}

/// Accepts `HOST:PORT`, also written as `http://HOST:PORT[/...]`.
pub fn normalize_addr(addr: &str) -> Result<String, FetchError> {
    let bad = || FetchError::BadAddress {
        addr: addr.to_string(),
    };
    let rest = addr.strip_prefix("http://").unwrap_or(addr);
    let hostport = rest.split('/').next().unwrap_or_default();
    let (host, port) = hostport.rsplit_once(':').ok_or_else(bad)?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(bad());
    }
    Ok(hostport.to_string())
}

/// Queries `GET /status` at `addr` and returns the JSON (compact, one
/// line, safe to print: see [`crate::sanitize`]) and the decoded snapshot.
/// `token` goes as `Authorization: Bearer` (an endpoint bound beyond
/// loopback requires it).
pub fn fetch(
    addr: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(String, StatusSnapshot), FetchError> {
    let addr = normalize_addr(addr)?;
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    let resp = http::request_with(&addr, "GET", "/status", &headers, None, timeout)
        .map_err(|source| FetchError::http(&addr, source))?;
    let text = resp.body_text();
    if resp.status != 200 {
        let body: String = text.trim().chars().take(200).collect();
        return Err(FetchError::Status {
            addr,
            status: resp.status,
            body: crate::sanitize::for_terminal(&body),
        });
    }
    // Through a `Value`, so the JSON printed by `--json` keeps fields a
    // newer VMM may add, and is always one line.
    let decode = |source| FetchError::Decode {
        addr: addr.clone(),
        source,
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(decode)?;
    let snapshot = StatusSnapshot::deserialize(&value).map_err(decode)?;
    Ok((
        crate::sanitize::json_for_terminal(&value.to_string()),
        snapshot,
    ))
}
