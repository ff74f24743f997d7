//! `lockstep-bench regress`: the verdict of `scripts/bench-compare`.
//! Reads criterion's results of interleaved runs of two builds (each run a
//! `CRITERION_HOME`), and fails when a hot path got slower than the
//! threshold beyond the noise measured in those same runs.
//!
//! Per benchmark and side, criterion's median time per iteration of each
//! run; the side's figure is its **best** run, because other load on a
//! shared machine only ever slows a run down. `change = head / base − 1`
//! of the best runs; `noise` = the larger relative gap between a side's
//! slowest run and its best one (how much this machine inflated runs of
//! the same code). A hot path regresses when `change > threshold + noise`:
//! a slowdown must stand out from what the machine does between two runs
//! of the same build. The raw-TCP references (`…/raw_tcp…`) measure the
//! kernel, not lockstep, and are shown but not gated.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::report::Table;

/// The hot paths the gate watches (criterion ids starting with these):
/// log entry encode/decode/checksum and hand-off, the vCPU↔I/O ring hop,
/// output-gate release, the logging channel's send path, virtio queue
/// processing, exit dispatch.
pub const HOT_PATHS: [&str; 7] = [
    "log_entry/",
    "vcpu_io_ring_round_trip/",
    "output_gate/",
    "log_channel/",
    "virtio_blk/",
    "virtio_net/",
    "exit_dispatch/",
];

/// Criterion's median time per iteration (ns) of every benchmark under
/// `home`, by its full id.
pub fn collect(home: &Path) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![home.to_path_buf()];
    // Criterion's tree is a few levels deep; a bound keeps a wrong
    // directory from being walked forever.
    let mut visited = 0usize;
    while let Some(dir) = stack.pop() {
        visited += 1;
        if visited > 100_000 {
            bail!("{} holds too many directories", home.display());
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                if p.file_name().is_some_and(|n| n == "new") {
                    if let Some((id, ns)) = read_result(&p)? {
                        out.insert(id, ns);
                    }
                } else {
                    stack.push(p);
                }
            }
        }
    }
    Ok(out)
}

/// `(full_id, median ns)` from a criterion `new/` directory.
fn read_result(new: &Path) -> anyhow::Result<Option<(String, f64)>> {
    let (bench, est) = (new.join("benchmark.json"), new.join("estimates.json"));
    if !bench.exists() || !est.exists() {
        return Ok(None);
    }
    let read = |p: &PathBuf| -> anyhow::Result<serde_json::Value> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    };
    let id = read(&bench)?["full_id"].as_str().map(str::to_string);
    let ns = read(&est)?["median"]["point_estimate"].as_f64();
    Ok(id.zip(ns))
}

/// One benchmark's comparison.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub id: String,
    /// The best run of each side.
    pub base_ns: f64,
    pub head_ns: f64,
    /// head / base − 1.
    pub change: f64,
    /// The larger gap between slowest and best run of either side.
    pub noise: f64,
    pub hot: bool,
    pub regressed: bool,
}

fn best(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

/// How far the slowest run is above the best one, relative to the best.
/// (Two-thread round trips are bimodal on a busy 2-core machine: a run
/// either finds both cores or shares one; the slowest run says how far
/// that reaches.)
fn spread(v: &[f64]) -> f64 {
    let b = best(v);
    let worst = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if b > 0.0 && b.is_finite() && v.len() > 1 {
        (worst - b) / b
    } else {
        0.0
    }
}

/// Compares every benchmark present in both sides' runs.
pub fn compare(
    base: &[BTreeMap<String, f64>],
    head: &[BTreeMap<String, f64>],
    threshold: f64,
    hot: &[&str],
) -> Vec<Row> {
    let ids: Vec<&String> = head
        .iter()
        .flat_map(|m| m.keys())
        .filter(|id| base.iter().any(|m| m.contains_key(*id)))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    ids.into_iter()
        .map(|id| {
            let side = |runs: &[BTreeMap<String, f64>]| -> Vec<f64> {
                runs.iter().filter_map(|m| m.get(id).copied()).collect()
            };
            let (b, h) = (side(base), side(head));
            let (base_ns, head_ns) = (best(&b), best(&h));
            let change = head_ns / base_ns - 1.0;
            let noise = spread(&b).max(spread(&h));
            let is_hot = hot.iter().any(|p| id.starts_with(p)) && !id.contains("/raw_tcp");
            Row {
                id: id.clone(),
                base_ns,
                head_ns,
                change,
                noise,
                hot: is_hot,
                regressed: is_hot && change > threshold + noise,
            }
        })
        .collect()
}

/// The table `scripts/bench-compare` prints.
pub fn render(rows: &[Row], threshold: f64) -> String {
    let mut t = Table::new(&[
        "benchmark",
        "base (best run)",
        "head (best run)",
        "change",
        "noise",
        "limit",
        "verdict",
    ]);
    for r in rows {
        let verdict = match (r.hot, r.regressed) {
            (_, true) => "**SLOWER**",
            (false, _) => "(not gated)",
            (true, false) => "ok",
        };
        t.row(vec![
            r.id.clone(),
            fmt_ns(r.base_ns),
            fmt_ns(r.head_ns),
            format!("{:+.1}%", r.change * 100.0),
            format!("{:.1}%", r.noise * 100.0),
            format!("+{:.1}%", (threshold + r.noise) * 100.0),
            verdict.into(),
        ]);
    }
    t.markdown()
}

fn fmt_ns(ns: f64) -> String {
    match ns {
        x if x >= 1e6 => format!("{:.2} ms", x / 1e6),
        x if x >= 1e3 => format!("{:.2} µs", x / 1e3),
        x => format!("{x:.1} ns"),
    }
}

/// The run directories (`CRITERION_HOME`s) directly under `dir`.
fn runs(dir: &Path) -> anyhow::Result<Vec<BTreeMap<String, f64>>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| collect(d)).collect()
}

/// `lockstep-bench regress`: prints the table; an error if a hot path
/// regressed.
pub fn run(base: &Path, head: &Path, threshold_pct: f64) -> anyhow::Result<()> {
    let threshold = threshold_pct / 100.0;
    let rows = compare(&runs(base)?, &runs(head)?, threshold, &HOT_PATHS);
    if rows.is_empty() {
        println!("no benchmark ran on both sides: nothing to compare");
        return Ok(());
    }
    print!("{}", render(&rows, threshold));
    let slower: Vec<&Row> = rows.iter().filter(|r| r.regressed).collect();
    println!(
        "\nthreshold {threshold_pct:.0}% beyond the measured noise; {} benchmarks compared, {} gated",
        rows.len(),
        rows.iter().filter(|r| r.hot).count()
    );
    if !slower.is_empty() {
        bail!(
            "{} hot path(s) slower than the threshold beyond noise: {}",
            slower.len(),
            slower
                .iter()
                .map(|r| format!("{} ({:+.0}%)", r.id, r.change * 100.0))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_row<'a>(rows: &'a [Row], id: &str) -> &'a Row {
        rows.iter().find(|r| r.id == id).unwrap()
    }

    fn side(values: &[(&str, &[f64])]) -> Vec<BTreeMap<String, f64>> {
        let n = values.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
        (0..n)
            .map(|i| {
                values
                    .iter()
                    .filter_map(|(id, v)| v.get(i).map(|x| (id.to_string(), *x)))
                    .collect()
            })
            .collect()
    }

    #[test]
    fn a_slowdown_beyond_threshold_and_noise_fails_only_on_hot_paths() {
        let base = side(&[
            ("log_entry/hash/crc32c_4096", &[100.0, 102.0, 101.0]),
            ("other/thing", &[10.0, 10.0, 10.0]),
            ("log_channel/stream/raw_tcp_32MiB", &[10.0, 10.0, 10.0]),
            ("exit_dispatch/sync_call", &[50.0, 51.0, 49.0]),
            ("only_in_base/x", &[1.0]),
        ]);
        let head = side(&[
            ("log_entry/hash/crc32c_4096", &[200.0, 201.0, 199.0]),
            ("other/thing", &[30.0, 30.0, 30.0]),
            ("log_channel/stream/raw_tcp_32MiB", &[30.0, 30.0, 30.0]),
            ("exit_dispatch/sync_call", &[52.0, 50.0, 51.0]),
        ]);
        let rows = compare(&base, &head, 0.10, &HOT_PATHS);
        assert_eq!(rows.len(), 4, "only benchmarks on both sides");
        assert!(
            !get_row(&rows, "log_channel/stream/raw_tcp_32MiB").hot,
            "a reference"
        );
        let get = |id: &str| rows.iter().find(|r| r.id == id).unwrap();
        assert!(get("log_entry/hash/crc32c_4096").regressed);
        assert!(!get("other/thing").regressed, "not a hot path");
        assert!(!get("exit_dispatch/sync_call").regressed, "within noise");
        assert!(render(&rows, 0.1).contains("**SLOWER**"));
    }

    #[test]
    fn noise_widens_the_limit() {
        let base = side(&[("log_entry/x", &[100.0, 140.0, 120.0])]);
        let head = side(&[("log_entry/x", &[125.0, 125.0, 125.0])]);
        let r = &compare(&base, &head, 0.10, &HOT_PATHS)[0];
        assert!((r.noise - 0.4).abs() < 1e-9);
        assert!((r.change - 0.25).abs() < 1e-9, "best runs compared");
        assert!(!r.regressed, "+25% is within 10% + 40% noise");
        // A side whose runs were all slowed still shows up.
        let head = side(&[("log_entry/x", &[300.0, 310.0, 320.0])]);
        assert!(compare(&base, &head, 0.10, &HOT_PATHS)[0].regressed);
    }

    #[test]
    fn criterion_results_are_read_from_a_home_directory() {
        let dir = tempfile::tempdir().unwrap();
        let new = dir.path().join("log_entry_encode/sync/new");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(
            new.join("benchmark.json"),
            r#"{"group_id":"log_entry/encode","full_id":"log_entry/encode/sync"}"#,
        )
        .unwrap();
        std::fs::write(
            new.join("estimates.json"),
            r#"{"median":{"point_estimate":12.5},"mean":{"point_estimate":13.0}}"#,
        )
        .unwrap();
        let m = collect(dir.path()).unwrap();
        assert_eq!(m.get("log_entry/encode/sync"), Some(&12.5));
    }
}
