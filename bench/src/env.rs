//! What this host's KVM costs, measured in the same run as the benchmark:
//! the shared probe when it is present, and lockstep's own exit round trip.

use std::path::PathBuf;
use std::process::Command;

use anyhow::Context;

use lockstep_bench::vm;

pub struct Machine {
    /// The shared kvm-host probe's output, if the probe exists here.
    pub probe: Option<String>,
    /// µs per sync-call exit through lockstep (guest `out` → VMM → guest).
    pub lockstep_exit_us: f64,
    pub cpus: usize,
    pub kernel: String,
}

fn probe_path() -> Option<PathBuf> {
    let p = vm::repo().join("../shared/probes/kvm-host/run");
    p.exists().then_some(p)
}

impl Machine {
    pub fn measure() -> anyhow::Result<Machine> {
        let probe = match probe_path() {
            Some(p) => {
                let out = Command::new(&p)
                    .output()
                    .with_context(|| format!("running {}", p.display()))?;
                Some(String::from_utf8_lossy(&out.stdout).to_string())
            }
            None => None,
        };
        let lockstep_exit_us = vm::exit_cost_us(20_000)?;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        Ok(Machine {
            probe,
            lockstep_exit_us,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: kernel.trim().to_string(),
        })
    }

    pub fn report(&self) -> String {
        let mut s = format!(
            "## Host\n\nLinux {}, {} CPUs. lockstep sync-call exit round trip: {:.1} µs (20,000 exits of an idle guest).\n\n",
            self.kernel, self.cpus, self.lockstep_exit_us
        );
        match &self.probe {
            Some(p) => {
                s.push_str("`../shared/probes/kvm-host/run`, same run:\n\n```\n");
                s.push_str(p);
                s.push_str("```\n\n");
            }
            None => s.push_str("(`../shared/probes/kvm-host/run` is not on this machine.)\n\n"),
        }
        s
    }
}
