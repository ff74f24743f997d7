//! Who may do what on the status endpoint: the bearer token (reads beyond
//! loopback, and every action), and the route of `POST /ft/ACTION` to the
//! registered [`ActionHandler`] (docs/operator-actions.md). Kept apart from
//! the server's connection handling so each stays small.

use super::actions::{Action, ActionHandler, Answered, Outcome, Then};

/// What the endpoint answers to a `POST`.
pub(crate) struct Posted {
    pub status: u16,
    /// The answer's body: why, or what the action did.
    pub text: String,
    /// To run once the answer is out.
    pub then: Option<Then>,
    /// The handler ran (its answer gets a deadline of its own).
    pub acted: bool,
    /// A missing or wrong token (counted as `status_unauthorized`).
    pub unauthorized: bool,
}

impl Posted {
    fn refused(status: u16, why: &str) -> Posted {
        Posted {
            status,
            text: why.to_string(),
            then: None,
            acted: false,
            unauthorized: status == 401,
        }
    }
}

/// `POST /ft/ACTION[?to=HOST:PORT]`: checked in the order that tells an
/// operator what to fix first, then handed to the handler.
pub(crate) fn post(head: &str, token: Option<&str>, actions: Option<&dyn ActionHandler>) -> Posted {
    let line = head.split("\r\n").next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(_), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Posted::refused(400, "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Posted::refused(505, "only HTTP/1.x is served\n");
    }
    let Some(rest) = target.strip_prefix("/ft/") else {
        return Posted::refused(
            405,
            "POST is only for /ft/ACTION; /status and /metrics are read with GET\n",
        );
    };
    let Some(token) = token else {
        return Posted::refused(
            403,
            "actions need a bearer token, also on loopback: start the VMM with --status-token-file\n",
        );
    };
    if !authorized(head, token) {
        return Posted::refused(401, "actions need Authorization: Bearer TOKEN\n");
    }
    if has_body(head) {
        return Posted::refused(413, "actions take no request body\n");
    }
    let (name, query) = match rest.split_once('?') {
        Some((n, q)) => (n, Some(q)),
        None => (rest, None),
    };
    let action = match Action::parse(name, query) {
        Ok(a) => a,
        Err(e) => return Posted::refused(400, &format!("{e}\n")),
    };
    let Some(handler) = actions else {
        return Posted::refused(
            409,
            "this VMM takes no FT actions (started without the FT options: a `run` needs --arbiter and the pair key)\n",
        );
    };
    tracing::info!("operator action: ft {}", action.name());
    let Answered { outcome, then } = handler.act(action);
    let mut text = outcome.text().to_string();
    text.push('\n');
    if !matches!(outcome, Outcome::Done(_)) {
        tracing::warn!("operator action: {}", outcome.text());
    }
    Posted {
        status: outcome.status(),
        text,
        then,
        acted: true,
        unauthorized: false,
    }
}

/// Whether the head announces a body (a length above 0, or chunks).
fn has_body(head: &str) -> bool {
    head.split("\r\n").skip(1).any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        let name = name.trim();
        (name.eq_ignore_ascii_case("content-length") && value.trim() != "0")
            || name.eq_ignore_ascii_case("transfer-encoding")
    })
}

/// Whether the request head carries `Authorization: Bearer <token>`.
pub(crate) fn authorized(head: &str, token: &str) -> bool {
    head.split("\r\n").skip(1).any(|line| {
        let Some((name, value)) = line.split_once(':') else {
            return false;
        };
        name.trim().eq_ignore_ascii_case("authorization")
            && value
                .trim()
                .strip_prefix("Bearer ")
                .is_some_and(|t| same_secret(t.trim().as_bytes(), token.as_bytes()))
    })
}

/// Compares two secrets in time that depends only on their lengths.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
