//! Restoring redundancy by live clone (docs/join.md): for each guest size,
//! idle and under a `redis-benchmark` SET load, a pair loses its backup, a
//! spare starts waiting on host B, and the primary joins it. Reported as
//! the primary logs it — pre-copy rounds, pages, pages at the pause, the
//! guest's pause and the state capture in it, the copy — and the time from
//! the spare's start to protected. Then the whole way from a failover to
//! protected again with a spare started at once (a chain of generations).

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use lockstep_bench::netns::{GUEST_IP, Net};
use lockstep_bench::pair::{self, BACKUP_IP, Host, LOG_PORT, PRIMARY_IP, PairConfig};

use crate::report::Table;

/// What the primary's `protected again` line says.
#[derive(Debug, Default, PartialEq)]
struct JoinLine {
    rounds: u64,
    pages: u64,
    final_pages: u64,
    pause_ms: f64,
    capture_ms: f64,
    sent_ms: f64,
    setup_ms: f64,
    join_ms: f64,
}

/// Parses `protected again (epoch E): R pre-copy rounds, P pages (F at the
/// pause), guest paused X ms (state capture Y ms, last pages and state
/// sent in S ms, channel set up in T ms), join took Z ms`.
fn parse_join(line: &str) -> Option<JoinLine> {
    let rest = line.split("protected again").nth(1)?;
    let before = |needle: &str| -> Option<&str> {
        let at = rest.find(needle)?;
        rest[..at].split([' ', '(']).rfind(|w| !w.is_empty())
    };
    let after = |needle: &str| -> Option<&str> {
        let at = rest.find(needle)? + needle.len();
        rest[at..].split_whitespace().next()
    };
    Some(JoinLine {
        rounds: before(" pre-copy rounds")?.parse().ok()?,
        pages: before(" pages (")?.parse().ok()?,
        final_pages: before(" at the pause")?.parse().ok()?,
        pause_ms: after("guest paused ")?.parse().ok()?,
        capture_ms: after("state capture ")?.parse().ok()?,
        sent_ms: after("sent in ")?.parse().ok()?,
        setup_ms: after("set up in ")?.parse().ok()?,
        join_ms: after("join took ")?.parse().ok()?,
    })
}

/// A `redis-benchmark` SET load from the client LAN until killed.
struct Load(Child);

impl Load {
    fn start(net: &Net) -> anyhow::Result<Load> {
        let child = net
            .cmd("c", "redis-benchmark")
            .args(["-h", GUEST_IP, "-p", "6379", "-c", "20", "-n", "100000000"])
            .args(["-t", "set", "-r", "100000", "-q"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting redis-benchmark")?;
        Ok(Load(child))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One join of a spare into a primary of `mib` MiB that lost its backup.
fn one_join(mib: u64, loaded: bool) -> anyhow::Result<(JoinLine, Duration)> {
    let net = Net::ft("bjn")?;
    let dir = tempfile::tempdir()?;
    let mut cfg = PairConfig::new(&net, dir.path());
    let mem = ["--mem".to_string(), mib.to_string()];
    cfg.primary_extra = mem.to_vec();
    cfg.primary_extra
        .extend(["--spares".into(), format!("{BACKUP_IP}:{LOG_PORT}")]);
    cfg.backup_extra = mem.to_vec();
    let mut p = pair::start(&cfg)?;
    let _load = if loaded {
        Some(Load::start(&net)?)
    } else {
        None
    };
    p.backup.signal(libc::SIGKILL);
    p.primary
        .wait_for("continuing alone", Duration::from_secs(30))?;
    let started = Instant::now();
    let _spare = pair::spawn_backup(&cfg, Host::B, "spare")?;
    p.primary
        .wait_for("protected again", Duration::from_secs(300))?;
    let took = started.elapsed();
    let log = p.primary.log();
    let line = log
        .lines()
        .find(|l| l.contains("protected again"))
        .unwrap_or_default();
    let parsed = parse_join(line).with_context(|| format!("reading {line:?}"))?;
    Ok((parsed, took))
}

/// From the primary's kill to protected again: B goes live, a spare starts
/// on host A at once (A's tap is free once A is gone), B joins it.
fn failover_to_protected() -> anyhow::Result<(Duration, Duration, JoinLine)> {
    let net = Net::ft("bjf")?;
    let dir = tempfile::tempdir()?;
    let mut cfg = PairConfig::new(&net, dir.path());
    cfg.heartbeat_ms = 10;
    cfg.failure_timeout_ms = 100;
    cfg.backup_extra = vec!["--spares".into(), format!("{PRIMARY_IP}:{LOG_PORT}")];
    let mut p = pair::start(&cfg)?;
    let _load = Load::start(&net)?;
    std::thread::sleep(Duration::from_millis(500));
    let killed = Instant::now();
    p.primary.signal(libc::SIGKILL);
    p.backup
        .wait_for("going live: sending", Duration::from_secs(30))?;
    let live = killed.elapsed();
    // The old primary's process is gone before its tap is taken again.
    let _ = p.primary.wait_exit(Duration::from_secs(10));
    let _spare = pair::spawn_backup(&cfg, Host::A, "spare")?;
    p.backup
        .wait_for("protected again", Duration::from_secs(120))?;
    let protected = killed.elapsed();
    let log = p.backup.log();
    let line = log
        .lines()
        .find(|l| l.contains("protected again"))
        .unwrap_or_default();
    Ok((live, protected, parse_join(line).unwrap_or_default()))
}

pub fn compare(sizes: &[u64]) -> anyhow::Result<()> {
    println!("## Restoring redundancy: a spare joins a running primary by live clone\n");
    println!(
        "Per guest size, idle and under `redis-benchmark -c 20 -t set` from the client LAN: the pair loses its backup, a spare starts waiting on host B and the primary (`--spares`) joins it. Columns as the primary logs them (the pause split into the state capture, the send of the last pages and the state, and the new channel's setup); `spare → protected` from the spare's start. One run each.\n"
    );
    let mut table = Table::new(&[
        "guest",
        "load",
        "rounds",
        "pages",
        "at the pause",
        "guest paused",
        "of it: capture / last sends / channel",
        "copy",
        "spare → protected",
    ]);
    for &mib in sizes {
        for loaded in [false, true] {
            eprintln!(
                "join: {mib} MiB, {}",
                if loaded { "loaded" } else { "idle" }
            );
            let (j, took) = one_join(mib, loaded)?;
            table.row(vec![
                format!("{mib} MiB"),
                if loaded { "SET load" } else { "idle" }.into(),
                j.rounds.to_string(),
                j.pages.to_string(),
                j.final_pages.to_string(),
                format!("{:.1} ms", j.pause_ms),
                format!(
                    "{:.2} / {:.1} / {:.1} ms",
                    j.capture_ms, j.sent_ms, j.setup_ms
                ),
                format!("{:.0} ms", j.join_ms),
                format!("{:.0} ms", took.as_secs_f64() * 1e3),
            ]);
        }
    }
    println!("{}", table.markdown());
    let (live, protected, j) = failover_to_protected()?;
    println!(
        "From a failover to protected again (128 MiB, SET load, 10 ms heartbeats, 100 ms failure timeout; the spare started on host A as soon as the old primary's process was gone): backup live after {:.0} ms, protected again after {:.0} ms (the join: {} rounds, guest paused {:.1} ms).\n",
        live.as_secs_f64() * 1e3,
        protected.as_secs_f64() * 1e3,
        j.rounds,
        j.pause_ms
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_protected_again_line_is_read_back() {
        let line = "2026 INFO protected again (epoch 3): 2 pre-copy rounds, 33039 pages (177 at the pause), guest paused 3.984 ms (state capture 0.170 ms, last pages and state sent in 2.500 ms, channel set up in 0.400 ms), join took 812 ms";
        assert_eq!(
            parse_join(line),
            Some(JoinLine {
                rounds: 2,
                pages: 33039,
                final_pages: 177,
                pause_ms: 3.984,
                capture_ms: 0.17,
                sent_ms: 2.5,
                setup_ms: 0.4,
                join_ms: 812.0,
            })
        );
        assert_eq!(parse_join("protected again (epoch 3): junk"), None);
    }
}
