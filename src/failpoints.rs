//! Test builds only (feature `failpoints`): fail points configured from the
//! environment at start (`FAILPOINTS=name=actions;…`, the `fail` crate's
//! syntax) and, for faults that must begin mid-run, from a file re-read on
//! SIGUSR2 (`LOCKSTEP_FAILPOINTS_FILE`, one `name=actions` per line; an
//! empty action list turns the point off). A test writes the file and
//! signals the process: the fault starts at a moment the test chose, with
//! no polling.

use std::path::PathBuf;

use nix::sys::signal::{SigSet, Signal};

/// Holds the scenario for the process's lifetime.
pub struct FailPoints {
    _scenario: fail::FailScenario<'static>,
}

/// Sets up the fail points; must run before any other thread starts, so
/// that every thread inherits SIGUSR2 blocked and only the watcher takes it.
pub fn setup() -> FailPoints {
    let scenario = fail::FailScenario::setup();
    if let Some(file) = std::env::var_os("LOCKSTEP_FAILPOINTS_FILE").map(PathBuf::from) {
        let mut set = SigSet::empty();
        set.add(Signal::SIGUSR2);
        if let Err(e) = set.thread_block() {
            eprintln!("lockstep: fail points: cannot block SIGUSR2: {e}");
        } else {
            std::thread::spawn(move || watch(file, set));
        }
    }
    FailPoints {
        _scenario: scenario,
    }
}

fn watch(file: PathBuf, set: SigSet) {
    while set.wait().is_ok() {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("lockstep: fail points: {}: {e}", file.display());
                continue;
            }
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (name, actions) = line.split_once('=').unwrap_or((line, ""));
            let result = if actions.is_empty() {
                fail::remove(name);
                Ok(())
            } else {
                fail::cfg(name, actions)
            };
            match result {
                Ok(()) => eprintln!("lockstep: fail point {name}={actions}"),
                Err(e) => eprintln!("lockstep: fail point {line:?}: {e}"),
            }
        }
    }
}
