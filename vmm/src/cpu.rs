//! Where the VMM's threads run: the vCPU thread and the I/O thread each on
//! a CPU of their own, helper threads off the vCPU's CPU (the threads:
//! docs/architecture.md).

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = nix::sched::CpuSet::new();
    if set.set(cpu).is_ok()
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!("cannot pin thread to CPU {cpu}: {e}");
    }
}

/// Keeps the calling thread, and every thread it spawns from now on, off
/// the vCPU's CPU: log writers, senders and the like must not preempt the
/// vCPU (the vCPU thread pins itself afterwards).
pub fn avoid_cpu(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut set = nix::sched::CpuSet::new();
    for c in (0..online).filter(|c| *c != cpu) {
        let _ = set.set(c);
    }
    if online > 1
        && let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
    {
        tracing::warn!("cannot keep helper threads off CPU {cpu}: {e}");
    }
}
