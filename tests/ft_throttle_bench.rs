//! Measurements for docs/benchmarks.md ("Throttling", issue 16), not a
//! test: ignored by default. Run on a quiet machine:
//!
//! ```text
//! cargo test --release --features lockstep/failpoints --test ft_throttle_bench -- --ignored --nocapture
//! ```
//!
//! Prints the lag distribution and the primary's progress per CPU cap of
//! the backup, and writes the time series of a slow-down and recovery as
//! an SVG (`LOCKSTEP_SVG`, default `target/throttle-series.svg`).

mod common;

use std::fmt::Write;
use std::time::{Duration, Instant};

use common::cgroup::{CpuCap, capped_pair};
use common::ft::*;
use common::*;

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or(0.0)
}

/// (seconds since `t0`, lag ms, throttle ‰, guest exits) every `every`
/// for `len`.
fn sample(pair: &FtPair, t0: Instant, len: Duration, every: Duration) -> Vec<[f64; 4]> {
    let mut out = Vec::new();
    let until = Instant::now() + len;
    while Instant::now() < until {
        if let Some(s) = pair.status("primary") {
            out.push([
                t0.elapsed().as_secs_f64(),
                num(&s, "lag_guest_ms"),
                num(&s, "throttle_permille"),
                num(&s, "guest_exits"),
            ]);
        }
        std::thread::sleep(every);
    }
    out
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// A table row's first columns for a cap: the cap, lag p50 / p99 / max
/// and the throttle's p50, from `s`'s samples.
fn lag_columns(percent: Option<u64>, s: &[[f64; 4]]) -> String {
    let sorted = |i: usize| {
        let mut v: Vec<f64> = s.iter().map(|r| r[i]).collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let (lags, levels) = (sorted(1), sorted(2));
    format!(
        "| {} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0} ‰ |",
        percent.map_or("uncapped".to_string(), |p| format!("{p} %")),
        pct(&lags, 0.5),
        pct(&lags, 0.99),
        pct(&lags, 1.0),
        pct(&levels, 0.5),
    )
}

fn rate(s: &[[f64; 4]]) -> f64 {
    match (s.first(), s.last()) {
        (Some(a), Some(b)) if b[0] > a[0] => (b[3] - a[3]) / (b[0] - a[0]),
        _ => 0.0,
    }
}

#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn throttle_lag_distribution_and_series() {
    if !kvm_available() {
        return;
    }
    // Lag and progress per cap, interleaved rounds.
    let Some((pair, cap)) = capped_pair("tb", FtOptions::compute(400)) else {
        return;
    };
    println!(
        "| backup's CPU | lag p50 | lag p99 | lag max | throttle p50 | primary's progress vs uncapped |"
    );
    println!("|---|---|---|---|---|---|");
    let mut full = 0.0;
    for percent in [None, Some(50), Some(25)] {
        cap.set(percent);
        std::thread::sleep(Duration::from_secs(2));
        let s = sample(
            &pair,
            Instant::now(),
            Duration::from_secs(6),
            Duration::from_millis(20),
        );
        let r = rate(&s);
        if percent.is_none() {
            full = r;
        }
        println!("{} {:.2}× |", lag_columns(percent, &s), r / full.max(1.0));
    }
    // A slow-down and recovery, sampled every 50 ms.
    cap.set(None);
    std::thread::sleep(Duration::from_secs(2));
    let t0 = Instant::now();
    let every = Duration::from_millis(50);
    let mut series = sample(&pair, t0, Duration::from_secs(3), every);
    cap.set(Some(25));
    series.extend(sample(&pair, t0, Duration::from_secs(6), every));
    cap.set(None);
    series.extend(sample(&pair, t0, Duration::from_secs(5), every));
    let svg = plot(&series, 3.0, 9.0);
    let path = std::env::var("LOCKSTEP_SVG").unwrap_or_else(|_| {
        repo()
            .join("target/throttle-series.svg")
            .display()
            .to_string()
    });
    std::fs::write(&path, svg).expect("writing the SVG");
    println!("series: {} samples, written to {path}", series.len());
}

/// The kv guest under 4 writers (SETs that wait for their replies, as
/// clients of a database do) per CPU cap of the backup: lag and the
/// writers' rate (keys added per second, read through `dbsize`).
#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn kv_lag_per_cap() {
    if !kvm_available() {
        return;
    }
    let opts = FtOptions {
        failure_timeout_ms: 400,
        heartbeat_ms: 20,
        ..FtOptions::default()
    };
    let pair = FtPair::start("tk", opts);
    let Some(cap) = CpuCap::new(&unique_name("lockstep-tk"), pair.backup.pid()) else {
        return;
    };
    let writers = Writers::start(&pair, 4);
    pair.wait_acked(200);
    let keys = || pair.redis(&["dbsize"]).parse::<f64>().unwrap_or(0.0);
    println!(
        "| backup's CPU | lag p50 | lag p99 | lag max | throttle p50 | writes/s vs uncapped |"
    );
    println!("|---|---|---|---|---|---|");
    let mut full = 0.0;
    for percent in [None, Some(50), Some(25)] {
        cap.set(percent);
        std::thread::sleep(Duration::from_secs(2));
        let (k0, t0) = (keys(), Instant::now());
        let s = sample(&pair, t0, Duration::from_secs(6), Duration::from_millis(20));
        let r = (keys() - k0) / t0.elapsed().as_secs_f64();
        if percent.is_none() {
            full = r;
        }
        println!(
            "{} {r:.0}/s, {:.2}× |",
            lag_columns(percent, &s),
            r / full.max(1.0)
        );
    }
    cap.set(None);
    let (acked, errors) = writers.finish();
    println!(
        "{} writes acknowledged, {} client errors",
        acked.len(),
        errors.len()
    );
}

/// Three panels sharing the time axis: lag (ms), throttle level (‰),
/// guest exits per second; the capped interval shaded.
fn plot(s: &[[f64; 4]], cap_from: f64, cap_to: f64) -> String {
    let (w, panel, left, top) = (760.0, 120.0, 60.0, 20.0);
    let t_max = s.last().map_or(1.0, |r| r[0]).max(1.0);
    let x = |t: f64| left + (t / t_max) * (w - left - 20.0);
    // exits/s between consecutive samples.
    let speed: Vec<(f64, f64)> = s
        .windows(2)
        .map(|p| (p[1][0], (p[1][3] - p[0][3]) / (p[1][0] - p[0][0]).max(1e-3)))
        .collect();
    let series: [(&str, Vec<(f64, f64)>); 3] = [
        (
            "lag, ms of guest execution",
            s.iter().map(|r| (r[0], r[1])).collect(),
        ),
        (
            "throttle level, ‰",
            s.iter().map(|r| (r[0], r[2])).collect(),
        ),
        ("primary's guest exits/s", speed),
    ];
    let h = top + 3.0 * (panel + 30.0) + 20.0;
    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(o, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    for (i, (name, pts)) in series.iter().enumerate() {
        let y0 = top + i as f64 * (panel + 30.0) + 15.0;
        let max = pts.iter().map(|p| p.1).fold(1.0, f64::max) * 1.1;
        let y = |v: f64| y0 + panel - (v / max) * panel;
        let _ = writeln!(
            o,
            r##"<rect x="{:.1}" y="{y0:.1}" width="{:.1}" height="{panel}" fill="#fde8e8"/>"##,
            x(cap_from),
            x(cap_to) - x(cap_from)
        );
        let _ = writeln!(
            o,
            r#"<rect x="{left}" y="{y0:.1}" width="{:.1}" height="{panel}" fill="none" stroke="black" stroke-width="0.5"/>"#,
            w - left - 20.0
        );
        let _ = writeln!(o, r#"<text x="{left}" y="{:.1}">{name}</text>"#, y0 - 4.0);
        let _ = writeln!(o, r#"<text x="5" y="{:.1}">{:.0}</text>"#, y0 + 10.0, max);
        let _ = writeln!(o, r#"<text x="5" y="{:.1}">0</text>"#, y0 + panel);
        let line: Vec<String> = pts
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            o,
            r##"<polyline fill="none" stroke="#1f5fa8" stroke-width="1.2" points="{}"/>"##,
            line.join(" ")
        );
    }
    let _ = writeln!(
        o,
        r#"<text x="{left}" y="{:.1}">seconds; shaded: the backup capped to 25 % of a CPU ({cap_from} s to {cap_to} s); t max {t_max:.1} s</text>"#,
        h - 5.0
    );
    o.push_str("</svg>\n");
    o
}

/// Go-live time against the lag at the kill: the backup capped to 25 % of
/// a CPU, the throttle off (`--lag-target-ms 0`) so that the lag grows to
/// each level, then on (the default) for comparison; one pair per kill.
#[test]
#[ignore = "a measurement for docs/benchmarks.md"]
fn go_live_against_the_lag() {
    if !kvm_available() {
        return;
    }
    println!(
        "| throttle | lag at the kill | kill → backup live | go-live line: silence + since the cut |"
    );
    println!("|---|---|---|---|");
    for (throttle, lag_ms) in [
        (false, 200.0),
        (false, 500.0),
        (false, 1000.0),
        (true, 100.0),
    ] {
        let mut opts = FtOptions::compute(400);
        if !throttle {
            opts.primary_extra
                .extend(["--lag-target-ms", "0"].map(String::from));
        }
        let Some((mut pair, cap)) = capped_pair("tg", opts) else {
            return;
        };
        cap.set(Some(25));
        let mut lag = 0.0;
        let started = Instant::now();
        wait_for(Duration::from_secs(20), "the lag to grow", || {
            lag = pair
                .status("primary")
                .map_or(0.0, |s| num(&s, "lag_guest_ms"));
            lag >= lag_ms || (throttle && started.elapsed() > Duration::from_secs(4))
        });
        pair.primary.signal(libc::SIGKILL);
        let took = pair.wait_backup_live(Duration::from_secs(30));
        pair.backup.wait_for_line(
            "after the primary's last sign of life",
            Duration::from_secs(10),
        );
        let log = pair.backup.log();
        let parts = log
            .lines()
            .find(|l| l.contains("after the primary's last sign of life"))
            .and_then(|l| {
                let silent = l.split(": ").nth(1)?.split(" ms of silence").next()?;
                let since = l.split(") + ").nth(1)?.split(" ms since").next()?;
                Some(format!("{silent} ms + {since} ms"))
            })
            .unwrap_or_default();
        println!(
            "| {} | {lag:.0} ms | {:.0} ms | {parts} |",
            if throttle { "on (100 ms)" } else { "off" },
            took.as_secs_f64() * 1e3
        );
        drop(cap);
    }
}
