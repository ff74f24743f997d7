//! The operator's write actions on the management endpoint
//! (`POST /ft/ACTION`, docs/operator-actions.md): what they are, how a
//! request names one, what the VMM answers, and the client half of
//! `lockstep ft`.
//!
//! This crate knows no FT: the binary registers an [`ActionHandler`] (the
//! FT layer's) with the server, which only parses, authenticates and
//! answers. Actions always need the bearer token, also on loopback: a
//! read shows state, an action changes whether the VM survives a failure.

use std::time::Duration;

use crate::client::{FetchError, normalize_addr};
use crate::http::{self, HttpError};

/// Longest `HOST:PORT` an action takes.
pub const MAX_TARGET: usize = 255;
/// How long the handler may take before it answers (the VMM answers once
/// the action is complete, or at this deadline with what it knows).
pub const ACTION_DEADLINE: Duration = Duration::from_secs(60);

/// An operator action (vSphere FT's menu, paper §3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Protect a VM that runs alone: join the named spare, or the next of
    /// its spares list.
    On {
        target: Option<String>,
    },
    /// Stop protecting: drop the backup, no re-protection until `On`.
    Off,
    /// As `Off`, keeping the spares configuration for `Resume`.
    Suspend,
    Resume,
    /// The primary stops on purpose; its backup takes over.
    TestFailover,
    /// Drop the backup; re-protection joins a spare at once.
    TestRestartBackup,
    /// Drop the backup and join the one at `target`.
    MigrateBackup {
        target: String,
    },
}

/// Why a request does not name an action.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ActionParseError {
    #[error(
        "unknown action {0:?}: expected on, off, suspend, resume, test-failover, test-restart-backup or migrate-backup"
    )]
    Unknown(String),
    #[error("{action} takes no target")]
    NoTargetWanted { action: &'static str },
    #[error("migrate-backup needs a target: /ft/migrate-backup?to=HOST:PORT")]
    TargetNeeded,
    #[error("bad target: {0}")]
    BadTarget(&'static str),
}

impl Action {
    /// The action's name in paths and messages.
    pub fn name(&self) -> &'static str {
        match self {
            Action::On { .. } => "on",
            Action::Off => "off",
            Action::Suspend => "suspend",
            Action::Resume => "resume",
            Action::TestFailover => "test-failover",
            Action::TestRestartBackup => "test-restart-backup",
            Action::MigrateBackup { .. } => "migrate-backup",
        }
    }

    /// The action a request target (`/ft/NAME[?to=HOST:PORT]`, without the
    /// `/ft/`) names.
    pub fn parse(name: &str, query: Option<&str>) -> Result<Action, ActionParseError> {
        let mut target = None;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("to", v)) if target.is_none() => target = Some(check_target(v)?),
                _ => return Err(ActionParseError::BadTarget("expected one ?to=HOST:PORT")),
            }
        }
        let plain = |a: Action, target: &Option<String>| match target {
            Some(_) => Err(ActionParseError::NoTargetWanted { action: a.name() }),
            None => Ok(a),
        };
        match name {
            "on" => Ok(Action::On { target }),
            "off" => plain(Action::Off, &target),
            "suspend" => plain(Action::Suspend, &target),
            "resume" => plain(Action::Resume, &target),
            "test-failover" => plain(Action::TestFailover, &target),
            "test-restart-backup" => plain(Action::TestRestartBackup, &target),
            "migrate-backup" => target
                .map(|target| Action::MigrateBackup { target })
                .ok_or(ActionParseError::TargetNeeded),
            other => Err(ActionParseError::Unknown(
                other.chars().take(40).collect::<String>(),
            )),
        }
    }

    /// The request path that names this action.
    pub fn path(&self) -> String {
        match self {
            Action::On { target: Some(t) } | Action::MigrateBackup { target: t } => {
                format!("/ft/{}?to={t}", self.name())
            }
            _ => format!("/ft/{}", self.name()),
        }
    }
}

/// A target as a request may carry it: `HOST:PORT` in plain ASCII (no
/// percent-encoding: host names and addresses need none). Resolving it is
/// the handler's job.
fn check_target(v: &str) -> Result<String, ActionParseError> {
    if v.is_empty() || v.len() > MAX_TARGET {
        return Err(ActionParseError::BadTarget("empty or too long"));
    }
    if !v
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
    {
        return Err(ActionParseError::BadTarget(
            "only letters, digits and .-:[]_ are allowed",
        ));
    }
    let port = v.rsplit_once(':').map(|(_, p)| p.parse::<u16>());
    match port {
        Some(Ok(p)) if p > 0 => Ok(v.to_string()),
        _ => Err(ActionParseError::BadTarget("expected HOST:PORT")),
    }
}

/// What became of an action; each maps to its HTTP status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Done (200): what was done and how long the VM was unprotected.
    Done(String),
    /// The request names something the handler cannot use (400).
    BadRequest(String),
    /// The action does not fit the VM's current state (409).
    Conflict(String),
    /// Tried and failed (500); the VM serves on.
    Failed(String),
    /// Not complete within the deadline (504); it may still complete.
    TimedOut(String),
}

impl Outcome {
    pub fn status(&self) -> u16 {
        match self {
            Outcome::Done(_) => 200,
            Outcome::BadRequest(_) => 400,
            Outcome::Conflict(_) => 409,
            Outcome::Failed(_) => 500,
            Outcome::TimedOut(_) => 504,
        }
    }

    pub fn text(&self) -> &str {
        match self {
            Outcome::Done(t)
            | Outcome::BadRequest(t)
            | Outcome::Conflict(t)
            | Outcome::Failed(t)
            | Outcome::TimedOut(t) => t,
        }
    }
}

/// Runs once the answer has been written (a test failover stops the
/// process only after the operator has its answer).
pub type Then = Box<dyn FnOnce() + Send>;

/// The handler's answer.
pub struct Answered {
    pub outcome: Outcome,
    pub then: Option<Then>,
}

impl From<Outcome> for Answered {
    fn from(outcome: Outcome) -> Self {
        Answered {
            outcome,
            then: None,
        }
    }
}

/// What carries out actions; registered by the binary
/// ([`crate::ServerOptions::actions`]). Called on the connection's own
/// thread; it may block up to [`ACTION_DEADLINE`].
pub trait ActionHandler: Send + Sync {
    fn act(&self, action: Action) -> Answered;
}

/// `lockstep ft`: posts `action` to the endpoint at `addr` with `token`;
/// returns the HTTP status and the VMM's text (made safe to print).
pub fn post(
    addr: &str,
    token: &str,
    action: &Action,
    timeout: Duration,
) -> Result<(u16, String), FetchError> {
    let addr = normalize_addr(addr)?;
    let auth = format!("Bearer {token}");
    let resp = http::request_with(
        &addr,
        "POST",
        &action.path(),
        &[("Authorization", &auth)],
        None,
        timeout,
    )
    .map_err(|source: HttpError| FetchError::http(&addr, source))?;
    let text: String = resp.body_text().chars().take(4096).collect();
    Ok((resp.status, crate::sanitize::for_terminal(text.trim_end())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_their_paths() {
        for a in [
            Action::On { target: None },
            Action::On {
                target: Some("10.99.0.2:7000".into()),
            },
            Action::Off,
            Action::Suspend,
            Action::Resume,
            Action::TestFailover,
            Action::TestRestartBackup,
            Action::MigrateBackup {
                target: "spare-3.example:7000".into(),
            },
        ] {
            let path = a.path();
            let rest = path.strip_prefix("/ft/").unwrap();
            let (name, query) = match rest.split_once('?') {
                Some((n, q)) => (n, Some(q)),
                None => (rest, None),
            };
            assert_eq!(Action::parse(name, query), Ok(a));
        }
    }

    #[test]
    fn junk_is_refused_with_a_reason() {
        assert!(matches!(
            Action::parse("reboot", None),
            Err(ActionParseError::Unknown(_))
        ));
        assert_eq!(
            Action::parse("migrate-backup", None),
            Err(ActionParseError::TargetNeeded)
        );
        assert_eq!(
            Action::parse("off", Some("to=a:1")),
            Err(ActionParseError::NoTargetWanted { action: "off" })
        );
        for q in [
            "to=",
            "to=host",
            "to=host:0",
            "to=host:99999",
            "to=a%20b:1",
            "to=a:1&to=b:2",
            "from=a:1",
            "to=a\r\n:1",
        ] {
            assert!(
                matches!(
                    Action::parse("on", Some(q)),
                    Err(ActionParseError::BadTarget(_))
                ),
                "{q}"
            );
        }
        let long = format!("to={}:1", "a".repeat(300));
        assert!(Action::parse("on", Some(&long)).is_err());
        let unknown = Action::parse(&"x".repeat(10_000), None).unwrap_err();
        assert!(unknown.to_string().len() < 300, "echoes are bounded");
    }
}
