//! Watching a pair through a fault that may split it: who serves after
//! it, and whether the fencing rule held all along — the backup outputs
//! nothing before it went live, the old primary nothing after, never both
//! serve. The tests assert on it; the soak counts what it finds.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use super::VmmExt;
use super::ft::{FtPair, LIVE};
use super::watch::TapWatch;

/// Who serves after a fault that may split the pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The backup went live; the old primary stopped.
    BackupLive,
    /// The primary continues alone; the backup does not serve.
    PrimaryAlone,
    /// The pair stayed whole: acks flow again, nobody claimed.
    Whole,
}

/// A broken promise, by kind (the soak counts them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Broken {
    /// The backup sent frames before it went live.
    OutputBeforeLive,
    /// The old primary sent frames after the backup went live.
    OutputAfterLive,
    /// Both sides served.
    BothServe,
    /// Both sides stopped: nobody serves.
    BothStopped,
    /// No side won in time.
    NoWinner,
    /// The loser ended otherwise than by losing the arbiter.
    WrongExit,
}

/// What broke, with the evidence.
#[derive(Debug)]
pub struct Violation {
    pub kind: Broken,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.detail)
    }
}

fn broken(kind: Broken, detail: String) -> Result<Outcome, Violation> {
    Err(Violation { kind, detail })
}

/// Watches both hosts' taps (a packet socket each, in the host's
/// namespace): frames the VMM wrote, never what the VMM says.
pub struct SplitWatch {
    a: TapWatch,
    b: TapWatch,
    /// How an old primary that lost to its backup may end besides a
    /// kill: 7, lost the arbiter; 9 when the trial is a test failover.
    pub loser_exit: i32,
}

impl SplitWatch {
    pub fn start(pair: &FtPair) -> SplitWatch {
        SplitWatch {
            a: TapWatch::start(&pair.net.ns("a"), &pair.net.tap()),
            b: TapWatch::start(&pair.net.ns("b"), &pair.net.tap()),
            loser_exit: 7,
        }
    }

    /// [`observe`](Self::observe), failing the test on a violation.
    pub fn settle(
        &mut self,
        pair: &mut FtPair,
        timeout: Duration,
        may_stay_whole: bool,
        what: &str,
    ) -> Outcome {
        self.observe(pair, timeout, may_stay_whole)
            .unwrap_or_else(|v| panic!("{what}: {v}"))
    }

    /// Waits (up to `timeout`) until the fault has a winner, checking the
    /// fencing rule all along: exactly one side serves, the loser stops
    /// with "lost the arbiter" (exit 7; a killed one by its signal), no
    /// frame from the backup before it went live and none from the old
    /// primary after. With `may_stay_whole`, `Whole` is an outcome too: the
    /// backup acknowledged `WHOLE_ACKS` more entries and no side claimed.
    pub fn observe(
        &mut self,
        pair: &mut FtPair,
        timeout: Duration,
        may_stay_whole: bool,
    ) -> Result<Outcome, Violation> {
        const WHOLE_ACKS: u64 = 200;
        let acked_from = pair.counter("primary", "acked_seq");
        let deadline = Instant::now() + timeout;
        let mut live_seen = false;
        let logs = |pair: &FtPair| {
            format!(
                "\nprimary:\n{}\nbackup:\n{}",
                pair.primary.log(),
                pair.backup.log()
            )
        };
        let outcome = loop {
            let p_exit = pair.primary.try_wait().ok().flatten();
            let b_exit = pair.backup.try_wait().ok().flatten();
            // The backup's frames first, then its log: a frame it sent
            // live always finds LIVE (logged before its first frame) there.
            let from_b = self.b.take_from_vmm();
            let live_now = pair.backup.log().contains(LIVE);
            if !live_now && from_b > 0 {
                return broken(
                    Broken::OutputBeforeLive,
                    format!(
                        "{from_b} frames, the last {:02x?}{}",
                        self.b.last,
                        logs(pair)
                    ),
                );
            }
            if live_now && !live_seen {
                live_seen = true;
                // What the old primary sent before now is forgiven: it may
                // predate the go-live.
                self.a.take_from_vmm();
            } else if live_seen {
                let after = self.a.take_from_vmm();
                if after > 0 {
                    return broken(
                        Broken::OutputAfterLive,
                        format!(
                            "{after} frames, the last {:02x?}{}",
                            self.a.last,
                            logs(pair)
                        ),
                    );
                }
            }
            let alone = pair.primary.log().contains("continuing alone");
            if live_seen && alone {
                return broken(Broken::BothServe, logs(pair));
            }
            if let (Some(p), Some(b)) = (p_exit, b_exit) {
                return broken(Broken::BothStopped, format!("{p}, {b}{}", logs(pair)));
            }
            if live_seen && p_exit.is_some() {
                break Outcome::BackupLive;
            }
            if alone {
                break Outcome::PrimaryAlone;
            }
            if may_stay_whole
                && !live_seen
                && p_exit.is_none()
                && b_exit.is_none()
                && pair.counter("primary", "acked_seq") >= acked_from + WHOLE_ACKS
                && pair.counter("primary", "failovers") == 0
            {
                break Outcome::Whole;
            }
            if Instant::now() >= deadline {
                return broken(
                    Broken::NoWinner,
                    format!(
                        "{timeout:?}; primary {:?}, backup {:?}{}",
                        pair.status("primary"),
                        pair.status("backup"),
                        logs(pair)
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        if outcome == Outcome::BackupLive {
            use std::os::unix::process::ExitStatusExt;
            let status = pair.primary.exit_status(Duration::from_secs(1));
            if status.code() != Some(self.loser_exit) && status.signal() != Some(libc::SIGKILL) {
                return broken(
                    Broken::WrongExit,
                    format!("the old primary: {status}{}", logs(pair)),
                );
            }
        }
        Ok(outcome)
    }

    /// After `PrimaryAlone`: the backup must stop (it lost the arbiter, or
    /// its channel broke) within `timeout`, never having output a frame.
    pub fn backup_stopped(
        &mut self,
        pair: &mut FtPair,
        timeout: Duration,
    ) -> Result<(), Violation> {
        let status = pair.backup.wait_exit(timeout).map_err(|e| Violation {
            kind: Broken::WrongExit,
            detail: format!("the backup does not stop: {e:#}"),
        })?;
        if !matches!(status.code(), Some(7) | Some(8)) {
            return Err(Violation {
                kind: Broken::WrongExit,
                detail: format!("the backup: {status}\n{}", pair.backup.log()),
            });
        }
        let from_b = self.b.take_from_vmm();
        if from_b > 0 {
            return Err(Violation {
                kind: Broken::OutputBeforeLive,
                detail: format!("{from_b} frames from a backup that never went live"),
            });
        }
        Ok(())
    }

    /// [`backup_stopped`](Self::backup_stopped), failing the test.
    pub fn backup_stops(&mut self, pair: &mut FtPair, timeout: Duration, what: &str) {
        if let Err(v) = self.backup_stopped(pair, timeout) {
            panic!("{what}: {v}");
        }
    }
}
