//! `lockstep ft ACTION`: an operator action posted to a VMM's status
//! endpoint (`POST /ft/ACTION`, docs/operator-actions.md). The VMM answers
//! once the action is complete, with what it did and how long the VM was
//! unprotected; this prints that. A test failover stops the primary, which
//! cannot report the backup's take-over: with `--peer-status` this watches
//! the backup's endpoint until it serves and prints the window itself.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use lockstep_status::Role;
use lockstep_status::actions::{ACTION_DEADLINE, Action, post};
use lockstep_status::client::fetch;

use crate::cli::{FtAction, FtActionArgs};
use crate::exit_status::ExitStatus;

/// Longer than the VMM's own deadline, so its answer (even a 504) arrives.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(ACTION_DEADLINE.as_secs() + 10);
/// How long the backup may take to serve after a test failover.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the backup's endpoint is asked meanwhile.
const POLL: Duration = Duration::from_millis(5);

/// The request the options name.
fn action(args: &FtActionArgs) -> anyhow::Result<Action> {
    let target = args.target.clone();
    let plain = |a: Action| match &target {
        Some(t) => bail!("ft {} takes no HOST:PORT (got {t})", a.name()),
        None => Ok(a),
    };
    match args.action {
        FtAction::On => Ok(Action::On { target }),
        FtAction::Off => plain(Action::Off),
        FtAction::Suspend => plain(Action::Suspend),
        FtAction::Resume => plain(Action::Resume),
        FtAction::TestFailover => plain(Action::TestFailover),
        FtAction::TestRestartBackup => plain(Action::TestRestartBackup),
        FtAction::MigrateBackup => match target {
            Some(target) => Ok(Action::MigrateBackup { target }),
            None => bail!("ft migrate-backup needs the new backup's HOST:PORT"),
        },
    }
}

pub fn ft(args: FtActionArgs) -> anyhow::Result<ExitStatus> {
    let action = action(&args)?;
    let token = logchan::secure::read_token(&args.token_file)
        .with_context(|| format!("--token-file {}", args.token_file.display()))?;
    let (code, text) = post(&args.status, &token, &action, CLIENT_TIMEOUT)
        .with_context(|| format!("ft {} at {}", action.name(), args.status))?;
    let answered = Instant::now();
    println!("{text}");
    if code != 200 {
        eprintln!(
            "lockstep: ft {}: the VMM answered HTTP {code}",
            action.name()
        );
        return Ok(ExitStatus::Error);
    }
    if action == Action::TestFailover {
        match &args.peer_status {
            Some(peer) => watch_takeover(peer, &token, answered)?,
            None => println!(
                "(--peer-status BACKUP_ADDR watches the backup take over and prints the unprotected window)"
            ),
        }
    }
    Ok(ExitStatus::Ok)
}

/// Waits until the backup at `peer` serves (it went live: role
/// `primary-alone`, or `primary` once a spare joined it); prints the
/// window from the primary's answer, the moment it stopped, to then.
fn watch_takeover(peer: &str, token: &str, from: Instant) -> anyhow::Result<()> {
    let deadline = from + TAKEOVER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("the backup at {peer} did not serve within {TAKEOVER_TIMEOUT:?}");
        }
        if let Ok((_, s)) = fetch(peer, Some(token), left.min(Duration::from_secs(1)))
            && matches!(s.role, Role::PrimaryAlone | Role::Primary)
        {
            let window = from.elapsed();
            println!(
                "the backup at {peer} serves: unprotected for {:.1} ms (from the primary's stop to the backup live, seen from here; {})",
                window.as_secs_f64() * 1e3,
                s.protection
            );
            return Ok(());
        }
        std::thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(action: FtAction, target: Option<&str>) -> FtActionArgs {
        FtActionArgs {
            action,
            target: target.map(String::from),
            status: "127.0.0.1:7010".into(),
            token_file: "t".into(),
            peer_status: None,
        }
    }

    #[test]
    fn targets_go_where_they_belong() {
        let on = action(&args(FtAction::On, Some("h:1"))).expect("on with a target");
        assert_eq!(
            on,
            Action::On {
                target: Some("h:1".into())
            }
        );
        assert_eq!(
            action(&args(FtAction::On, None)).expect("on alone"),
            Action::On { target: None }
        );
        let off = action(&args(FtAction::Off, Some("h:1"))).unwrap_err();
        assert!(off.to_string().contains("takes no HOST:PORT"), "{off}");
        let migrate = action(&args(FtAction::MigrateBackup, None)).unwrap_err();
        assert!(
            migrate.to_string().contains("needs the new backup"),
            "{migrate}"
        );
    }
}
