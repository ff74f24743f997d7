//! `lockstep status ADDR`: one `GET /status` from a running VMM, printed as
//! a human summary or (`--json`) as the JSON snapshot; `--watch MS` repeats
//! until interrupted (Ctrl-C).

use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;

use lockstep_status::client::{FETCH_TIMEOUT, fetch};
use lockstep_status::summary;

use crate::cli::StatusArgs;
use crate::exit_status::ExitStatus;

pub fn status(args: StatusArgs) -> anyhow::Result<ExitStatus> {
    let token = match &args.token_file {
        Some(path) => Some(
            logchan::secure::read_token(path)
                .with_context(|| format!("--token-file {}", path.display()))?,
        ),
        None => None,
    };
    let token = token.as_deref();
    let Some(period) = args.watch else {
        let (json, snapshot) = fetch(&args.addr, token, FETCH_TIMEOUT)?;
        let text = if args.json {
            format!("{json}\n")
        } else {
            summary::render(&snapshot)
        };
        return Ok(match print(&text) {
            Printed::Failed => ExitStatus::Error,
            Printed::Done | Printed::Closed => ExitStatus::Ok,
        });
    };
    if period == 0 {
        anyhow::bail!("--watch takes a period in milliseconds greater than 0");
    }
    // Redraw in place for a person at a terminal; append otherwise (one
    // JSON document per line with --json, for scripts).
    let redraw = !args.json && std::io::stdout().is_terminal();
    loop {
        let text = match fetch(&args.addr, token, FETCH_TIMEOUT) {
            Ok((json, _)) if args.json => format!("{json}\n"),
            Ok((_, snapshot)) => summary::render(&snapshot),
            // Keep watching: the VMM may be restarting or failing over, and
            // that is what the operator is watching for.
            Err(e) => {
                let mut msg = format!("lockstep: error: {e}");
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    msg.push_str(&format!(": {s}"));
                    source = s.source();
                }
                eprintln!("{msg}");
                String::new()
            }
        };
        let framed = if redraw {
            in_place(&text)
        } else if args.json || text.is_empty() {
            text
        } else {
            format!("{text}\n")
        };
        match print(&framed) {
            Printed::Done => {}
            Printed::Closed => return Ok(ExitStatus::Ok),
            Printed::Failed => return Ok(ExitStatus::Error),
        }
        std::thread::sleep(Duration::from_millis(period));
    }
}

/// `text` drawn over the previous frame without clearing the screen first
/// (a clear shows a blank frame between two: flicker): home, each line
/// then the rest of it erased, then everything below erased.
fn in_place(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str("\x1b[H");
    for line in text.lines() {
        out.push_str(line);
        out.push_str("\x1b[K\n");
    }
    out.push_str("\x1b[J");
    out
}

enum Printed {
    Done,
    /// The reader went away (`| head`): stop quietly.
    Closed,
    Failed,
}

fn print(text: &str) -> Printed {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Printed::Done,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Printed::Closed,
        Err(e) => {
            eprintln!("lockstep: error: cannot write to standard output: {e}");
            Printed::Failed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::in_place;

    #[test]
    fn a_frame_overwrites_the_last_without_clearing_the_screen() {
        let f = in_place("a\nbb\n");
        assert_eq!(f, "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J");
        assert!(!f.contains("\x1b[2J"), "no full clear: no flicker");
    }
}
