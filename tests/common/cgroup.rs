//! A cgroup that caps one process's CPU, and a process's resident memory:
//! a backup slowed for real, its memory watched (tests/ft_throttle.rs).

use std::path::PathBuf;
use std::time::Duration;

use super::ft::{FtOptions, FtPair};
use super::{unique_name, wait_for};

/// A pair started with `opts` whose backup's CPU can be capped, once the
/// backup acknowledged its first entries; `None` (the reason printed)
/// where no cpu cgroup is writable.
pub fn capped_pair(prefix: &str, opts: FtOptions) -> Option<(FtPair, CpuCap)> {
    let pair = FtPair::start(prefix, opts);
    let cap = CpuCap::new(
        &unique_name(&format!("lockstep-{prefix}")),
        pair.backup.pid(),
    )?;
    wait_for(Duration::from_secs(10), "acks", || {
        pair.counter("primary", "acked_seq") > 100
    });
    Some((pair, cap))
}

/// A cgroup capping one process's CPU (v2 `cpu.max`, or v1 CFS quota where
/// only the v1 cpu controller is mounted); the process goes back to the
/// root group and the group is removed on drop.
pub struct CpuCap {
    dir: PathBuf,
    root: PathBuf,
    v2: bool,
    pid: u32,
}

impl CpuCap {
    /// `None` (with the reason printed) where no cpu controller is writable.
    pub fn new(name: &str, pid: u32) -> Option<CpuCap> {
        let v2_root = PathBuf::from("/sys/fs/cgroup");
        let v2 = std::fs::read_to_string(v2_root.join("cgroup.subtree_control"))
            .is_ok_and(|c| c.split_whitespace().any(|w| w == "cpu"));
        let root = if v2 {
            v2_root
        } else {
            PathBuf::from("/sys/fs/cgroup/cpu")
        };
        let dir = root.join(name);
        let made = std::fs::create_dir(&dir)
            .and_then(|()| std::fs::write(dir.join("cgroup.procs"), pid.to_string()));
        match made {
            Ok(()) => Some(CpuCap { dir, root, v2, pid }),
            Err(e) => {
                eprintln!("skipped: no writable cpu cgroup at {}: {e}", root.display());
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }

    /// Caps the process at `percent` of one CPU (`None`: no cap).
    pub fn set(&self, percent: Option<u64>) {
        const PERIOD_US: u64 = 10_000;
        let quota = percent.map(|p| PERIOD_US * p / 100);
        let result = if self.v2 {
            let v = quota.map_or("max".to_string(), |q| q.to_string());
            std::fs::write(self.dir.join("cpu.max"), format!("{v} {PERIOD_US}"))
        } else {
            std::fs::write(self.dir.join("cpu.cfs_period_us"), PERIOD_US.to_string()).and_then(
                |()| {
                    let q = quota.map_or("-1".to_string(), |q| q.to_string());
                    std::fs::write(self.dir.join("cpu.cfs_quota_us"), q)
                },
            )
        };
        result.expect("setting the CPU cap");
    }
}

impl Drop for CpuCap {
    fn drop(&mut self) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Resident memory of a process, in KiB (0 once it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}
