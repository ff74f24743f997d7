//! A fair emulation of separate hosts on one machine: emulated host A (the
//! primary, or the single VM of the baseline) gets the same dedicated CPUs
//! in both configurations; the backup and the clients get the rest. Every
//! process is pinned (its VMM threads by `--cpus`, and the whole process by
//! a cgroup cpuset, or by `taskset` where no cpuset controller is mounted),
//! and host A gets a CPU bandwidth limit of exactly its CPUs (`cpu.max` in
//! cgroup v2, the CFS quota in v1) so that a machine with more cores does
//! not give one configuration more.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use lockstep_bench::pair::Host;

/// Where the harness's cgroups go, under each hierarchy's root.
const GROUP: &str = "lockstep-bench";

/// How processes are confined.
#[derive(Clone, Debug)]
enum Mechanism {
    /// One cgroup directory per host, in a v2 hierarchy.
    V2 { a: PathBuf, rest: PathBuf },
    /// v1: a cpuset directory per host, and a cpu directory for host A.
    V1 {
        a: PathBuf,
        rest: PathBuf,
        a_cpu: Option<PathBuf>,
    },
    /// No cpuset controller: `taskset`.
    Taskset,
}

/// The CPU placement of one benchmark run.
#[derive(Clone, Debug)]
pub struct Placement {
    /// Host A's CPUs, and everyone else's.
    pub a: Vec<usize>,
    pub rest: Vec<usize>,
    how: Mechanism,
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn write(p: &Path, v: &str) -> anyhow::Result<()> {
    std::fs::write(p, v).with_context(|| format!("writing {v:?} to {}", p.display()))
}

impl Placement {
    /// Host A on `a_cpus`, the rest on the machine's other CPUs; cgroups
    /// made where the kernel has them.
    pub fn new(a: Vec<usize>) -> anyhow::Result<Placement> {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        if a.is_empty() || a.iter().any(|&c| c >= n) {
            bail!("host A's CPUs {a:?} are not all among this machine's {n}");
        }
        let mut rest: Vec<usize> = (0..n).filter(|c| !a.contains(c)).collect();
        if rest.is_empty() {
            // One CPU: everyone shares it; the comparison is still fair.
            rest = a.clone();
        }
        let how = Self::cgroups(&a, &rest).unwrap_or(Mechanism::Taskset);
        Ok(Placement { a, rest, how })
    }

    fn cgroups(a: &[usize], rest: &[usize]) -> Option<Mechanism> {
        let quota = a.len() as u64 * 100_000;
        let v2 = Path::new("/sys/fs/cgroup");
        let controllers = std::fs::read_to_string(v2.join("cgroup.controllers")).ok();
        if controllers.is_some_and(|c| c.split_whitespace().any(|x| x == "cpuset")) {
            let top = v2.join(GROUP);
            std::fs::create_dir_all(&top).ok()?;
            // Controllers must be enabled on the way down; one at a time,
            // so a missing `cpu` controller does not cost the cpuset.
            for dir in [v2, top.as_path()] {
                for c in ["+cpuset", "+cpu"] {
                    let _ = write(&dir.join("cgroup.subtree_control"), c);
                }
            }
            let (ga, gr) = (top.join("host-a"), top.join("rest"));
            for (g, cpus) in [(&ga, a), (&gr, rest)] {
                std::fs::create_dir_all(g).ok()?;
                write(&g.join("cpuset.cpus"), &list(cpus)).ok()?;
            }
            let _ = write(&ga.join("cpu.max"), &format!("{quota} 100000"));
            return Some(Mechanism::V2 { a: ga, rest: gr });
        }
        let v1 = v2.join("cpuset");
        if v1.join("cpuset.cpus").exists() {
            let top = v1.join(GROUP);
            std::fs::create_dir_all(&top).ok()?;
            let mems = std::fs::read_to_string(v1.join("cpuset.mems")).ok()?;
            let all = std::fs::read_to_string(v1.join("cpuset.cpus")).ok()?;
            write(&top.join("cpuset.cpus"), all.trim()).ok()?;
            write(&top.join("cpuset.mems"), mems.trim()).ok()?;
            let (ga, gr) = (top.join("host-a"), top.join("rest"));
            for (g, cpus) in [(&ga, a), (&gr, rest)] {
                std::fs::create_dir_all(g).ok()?;
                write(&g.join("cpuset.cpus"), &list(cpus)).ok()?;
                write(&g.join("cpuset.mems"), mems.trim()).ok()?;
            }
            let cpu = v2.join("cpu").join(GROUP).join("host-a");
            let a_cpu = std::fs::create_dir_all(&cpu)
                .ok()
                .and_then(|_| write(&cpu.join("cpu.cfs_period_us"), "100000").ok())
                .and_then(|_| write(&cpu.join("cpu.cfs_quota_us"), &quota.to_string()).ok())
                .map(|_| cpu);
            return Some(Mechanism::V1 {
                a: ga,
                rest: gr,
                a_cpu,
            });
        }
        None
    }

    /// `--cpus` for a VMM on `host`: its vCPU thread on the first CPU of
    /// the host's set, its I/O thread on the last (the same CPU if it has
    /// one).
    pub fn vmm_cpus(&self, host: Host) -> String {
        let set = match host {
            Host::A => &self.a,
            Host::B => &self.rest,
        };
        let first = set.first().copied().unwrap_or(0);
        let last = set.last().copied().unwrap_or(first);
        format!("{first},{last}")
    }

    /// `cmd` (a client) wrapped so that its process joins `host`'s CPUs
    /// before it runs (a shell that moves itself into the cgroup, then
    /// `exec`s).
    pub fn wrap(&self, host: Host, cmd: Command) -> Command {
        let mut argv: Vec<std::ffi::OsString> = vec![cmd.get_program().to_owned()];
        argv.extend(cmd.get_args().map(|a| a.to_owned()));
        let (group, cpus) = match (&self.how, host) {
            (Mechanism::V2 { a, .. } | Mechanism::V1 { a, .. }, Host::A) => (Some(a), &self.a),
            (Mechanism::V2 { rest, .. } | Mechanism::V1 { rest, .. }, Host::B) => {
                (Some(rest), &self.rest)
            }
            (Mechanism::Taskset, Host::A) => (None, &self.a),
            (Mechanism::Taskset, Host::B) => (None, &self.rest),
        };
        let mut script = String::new();
        if let Some(g) = group {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", g.display()));
        }
        if let (Mechanism::V1 { a_cpu: Some(c), .. }, Host::A) = (&self.how, host) {
            script.push_str(&format!("echo $$ > {}/cgroup.procs && ", c.display()));
        }
        script.push_str(&format!("exec taskset -c {} \"$@\"", list(cpus)));
        let mut w = Command::new("sh");
        w.arg("-c").arg(script).arg("sh").args(argv);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => w.env(k, v),
                None => w.env_remove(k),
            };
        }
        w
    }

    /// Moves running process `pid` (all its threads) onto `host`'s CPUs.
    /// VMMs are placed this way, after they started, rather than by
    /// [`Placement::wrap`]: `lockstep` checks `--cpus` against the CPUs its
    /// process may use, so one confined to CPU 1 would refuse `--cpus 1`.
    /// The VMM's pinned threads keep their CPU: it is in the host's set.
    /// A process that has already ended is not an error.
    pub fn adopt(&self, host: Host, pid: u32) -> anyhow::Result<()> {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Ok(());
        }
        let pid = pid.to_string();
        match (&self.how, host) {
            (Mechanism::V2 { a, .. } | Mechanism::V1 { a, .. }, Host::A) => {
                write(&a.join("cgroup.procs"), &pid)?;
                if let Mechanism::V1 { a_cpu: Some(c), .. } = &self.how {
                    write(&c.join("cgroup.procs"), &pid)?;
                }
                Ok(())
            }
            (Mechanism::V2 { rest, .. } | Mechanism::V1 { rest, .. }, Host::B) => {
                write(&rest.join("cgroup.procs"), &pid)
            }
            (Mechanism::Taskset, _) => {
                let cpus = match host {
                    Host::A => &self.a,
                    Host::B => &self.rest,
                };
                // More than one CPU: the VMM's own pinning is finer.
                if cpus.len() == 1 {
                    let st = Command::new("taskset")
                        .args(["-a", "-p", "-c", &list(cpus), &pid])
                        .output()
                        .context("taskset")?;
                    if !st.status.success() {
                        bail!(
                            "taskset -a -p {pid}: {}",
                            String::from_utf8_lossy(&st.stderr)
                        );
                    }
                }
                Ok(())
            }
        }
    }

    /// Removes the cgroups this placement made (best effort: a cgroup that
    /// still holds a process stays).
    pub fn remove(&self) {
        let dirs: Vec<&PathBuf> = match &self.how {
            Mechanism::V2 { a, rest } => vec![a, rest],
            Mechanism::V1 { a, rest, a_cpu } => {
                let mut v = vec![a, rest];
                v.extend(a_cpu.iter());
                v
            }
            Mechanism::Taskset => vec![],
        };
        for d in dirs {
            let _ = std::fs::remove_dir(d);
            if let Some(parent) = d.parent() {
                let _ = std::fs::remove_dir(parent);
            }
        }
    }

    /// One line for the results page.
    pub fn describe(&self) -> String {
        let how = match &self.how {
            Mechanism::V2 { .. } => {
                "cgroup v2 cpusets (`lockstep-bench/host-a`, `lockstep-bench/rest`), host A's `cpu.max` = its CPUs, and `taskset`".to_string()
            }
            Mechanism::V1 { a_cpu, .. } => format!(
                "cgroup v1 cpusets (`cpuset/lockstep-bench/host-a`, `…/rest`){} and `taskset` (no cgroup v2 cpuset controller on this kernel)",
                if a_cpu.is_some() {
                    ", host A's CFS quota = its CPUs,"
                } else {
                    ""
                }
            ),
            Mechanism::Taskset => "`taskset` only (no cpuset controller mounted)".into(),
        };
        format!(
            "host A (the primary, or the single VM): CPU {}; host B (the backup) and the clients (redis-benchmark, ab, iperf3): CPU {}. VMM threads pinned with `--cpus` (vCPU thread, I/O thread): host A `{}`, host B `{}`; processes confined by {how} (a VMM joins its host's cgroup right after it starts). Other work on the machine is not excluded.",
            list(&self.a),
            list(&self.rest),
            self.vmm_cpus(Host::A),
            self.vmm_cpus(Host::B),
        )
    }
}
