//! CPU time of a process and of each of its threads, from
//! `/proc/PID/task/TID/schedstat` (nanoseconds on a CPU) where the kernel
//! has it, else `/proc/PID/task/TID/stat` (utime + stime, in clock
//! ticks): snapshots before and after a measured window give the CPU each
//! thread spent in it — the cost a second host would pay, whatever else
//! shares this one.

use std::collections::BTreeMap;

/// CPU time per thread name (threads of the same name added up), in µs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    pub threads: BTreeMap<String, f64>,
}

impl Snapshot {
    pub fn total_us(&self) -> f64 {
        self.threads.values().sum()
    }

    /// What was spent between `earlier` and `self` (threads that ended in
    /// between are lost: the VMMs' threads live as long as the VM).
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            threads: self
                .threads
                .iter()
                .map(|(k, v)| {
                    let before = earlier.threads.get(k).copied().unwrap_or(0.0);
                    (k.clone(), (v - before).max(0.0))
                })
                .collect(),
        }
    }
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The name and utime+stime (ticks) of one `stat` line: the name is in
/// parentheses and may itself contain spaces and parentheses, so fields
/// are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    // After ")": state is field 3; utime and stime are fields 14 and 15.
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let utime: u64 = rest.get(11)?.parse().ok()?;
    let stime: u64 = rest.get(12)?.parse().ok()?;
    Some((name, utime.saturating_add(stime)))
}

/// A thread's kind: io_uring's workers (`iou-wrk-1234`) and other
/// numbered threads add up under one name.
pub fn kind_of(name: &str) -> String {
    match name.rsplit_once('-') {
        Some((stem, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => stem.into(),
        _ => name.into(),
    }
}

/// The threads of process `pid` now; empty if it is gone.
pub fn snapshot(pid: u32) -> Snapshot {
    let tick_us = 1e6 / ticks_per_second();
    let mut threads = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Snapshot::default();
    };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else {
            continue;
        };
        let Some((name, ticks)) = parse_stat(&stat) else {
            continue;
        };
        let name = kind_of(&name);
        let ns = std::fs::read_to_string(t.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok());
        let us = match ns {
            Some(ns) => ns as f64 / 1e3,
            None => ticks as f64 * tick_us,
        };
        *threads.entry(name).or_insert(0.0) += us;
    }
    Snapshot { threads }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_names_parse() {
        let line =
            "1234 (io (x) 1) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat(line), Some(("io (x) 1".into(), 325)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (a) S 1"), None);
        assert_eq!(kind_of("iou-wrk-13092"), "iou-wrk");
        assert_eq!(kind_of("status-http"), "status-http");
        assert_eq!(kind_of("vcpu"), "vcpu");
    }

    #[test]
    fn snapshots_subtract_per_thread() {
        let a = Snapshot {
            threads: [("vcpu".to_string(), 100.0), ("io".to_string(), 50.0)].into(),
        };
        let b = Snapshot {
            threads: [("vcpu".to_string(), 400.0), ("io".to_string(), 40.0)].into(),
        };
        let d = b.since(&a);
        assert_eq!(d.threads["vcpu"], 300.0);
        assert_eq!(d.threads["io"], 0.0);
        assert_eq!(d.total_us(), 300.0);
        assert!(snapshot(std::process::id()).total_us() >= 0.0);
    }
}
