//! Clients for failover runs: writers that record every SET the guest
//! acknowledged (and when), and a checker that reads them all back.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::resp::{Client, Reply};

/// What the writers saw.
pub struct WriterReport {
    pub acked: Vec<String>,
    pub errors: Vec<String>,
    /// The longest time between two acknowledgements (any connection), and
    /// when it began (since the writers started).
    pub longest_gap: Duration,
    pub gap_at: Duration,
}

/// `connections` writers SET unique keys against `addr` until `stop` is
/// set. A broken connection is reconnected; its error is recorded. The
/// writer threads live in the caller's network namespace.
pub fn write(addr: &str, connections: usize, stop: Arc<AtomicBool>) -> WriterReport {
    let started = Instant::now();
    let threads: Vec<_> = (0..connections)
        .map(|w| {
            let addr = addr.to_string();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let (mut acked, mut errors, mut times) = (Vec::new(), Vec::new(), Vec::new());
                let mut client = None;
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    if client.is_none() {
                        match Client::connect(&addr) {
                            Ok(c) => client = Some(c),
                            Err(e) => {
                                errors.push(format!("connect: {e}"));
                                std::thread::sleep(Duration::from_millis(20));
                                continue;
                            }
                        }
                    }
                    let Some(c) = client.as_mut() else { continue };
                    let key = format!("w{w}:{i}");
                    match c.call(&[b"SET", key.as_bytes(), format!("v{i}").as_bytes()]) {
                        Ok(Reply::Simple(s)) if s == "OK" => {
                            acked.push(key);
                            times.push(started.elapsed());
                        }
                        Ok(other) => errors.push(format!("{key}: {other:?}")),
                        Err(e) => {
                            errors.push(format!("{key}: {e}"));
                            client = None;
                        }
                    }
                    i += 1;
                }
                (acked, errors, times)
            })
        })
        .collect();
    let mut report = WriterReport {
        acked: Vec::new(),
        errors: Vec::new(),
        longest_gap: Duration::ZERO,
        gap_at: Duration::ZERO,
    };
    let mut times = Vec::new();
    for t in threads {
        if let Ok((a, e, ts)) = t.join() {
            report.acked.extend(a);
            report.errors.extend(e);
            times.extend(ts);
        }
    }
    times.sort();
    // A writer that never got an answer again counts until the end.
    times.push(started.elapsed());
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        if gap > report.longest_gap {
            report.longest_gap = gap;
            report.gap_at = pair[0];
        }
    }
    report
}

/// Reads every key in `acked` back; returns the keys missing or wrong.
pub fn check(addr: &str, acked: &[String]) -> anyhow::Result<Vec<String>> {
    let mut c = Client::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut lost = Vec::new();
    for chunk in acked.chunks(500) {
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(chunk.iter().map(|k| k.as_bytes()));
        let Reply::Array(Some(values)) = c.call(&args).context("MGET")? else {
            bail!("MGET did not return an array");
        };
        for (k, v) in chunk.iter().zip(values) {
            let want = format!("v{}", k.rsplit(':').next().unwrap_or(""));
            if v != Reply::Bulk(Some(want.into_bytes())) {
                lost.push(k.clone());
            }
        }
    }
    Ok(lost)
}

pub fn save(path: &Path, keys: &[String]) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("{}", path.display()))?,
    );
    for k in keys {
        writeln!(f, "{k}")?;
    }
    Ok(())
}

pub fn load(path: &Path) -> anyhow::Result<Vec<String>> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("{}", path.display()))?
        .lines()
        .map(str::to_string)
        .collect())
}
