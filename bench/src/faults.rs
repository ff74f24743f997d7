//! `lockstep-bench faults --trials N`: the fault tests' scenarios as a soak.
//! The scenarios and their checks live once, in the test suite's helpers
//! (`tests/ft_soak.rs`); this runs that soak (built with the fail points it
//! needs) and prints its summary for `docs/benchmarks.md`.

use std::process::Command;

use anyhow::{Context, bail};

use lockstep_bench::vm;

pub fn soak(trials: usize, seed: Option<u64>) -> anyhow::Result<()> {
    let report = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(vm::repo())
        .args([
            "test",
            "--release",
            "--quiet",
            "--features",
            "lockstep/failpoints",
            "--test",
            "ft_soak",
            "--",
            "--ignored",
            "--nocapture",
        ])
        // The test harness's chatter goes to stderr with the progress; the
        // summary comes from the report file.
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .env("LOCKSTEP_SOAK_TRIALS", trials.to_string())
        .env("LOCKSTEP_SOAK_REPORT", report.path());
    if let Some(s) = seed {
        cmd.env("LOCKSTEP_SEED", s.to_string());
    }
    eprintln!("{trials} fault trials (a line each as they finish)");
    let status = cmd.status().context("running cargo test --test ft_soak")?;
    let text = std::fs::read_to_string(report.path()).unwrap_or_default();
    if text.is_empty() {
        bail!("the soak wrote no summary ({status})");
    }
    println!("## Fault soak: {trials} randomized trials\n\n{text}");
    if !status.success() {
        bail!("the soak found broken promises (above)");
    }
    Ok(())
}
