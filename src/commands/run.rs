//! `lockstep run`: one VM, no fault tolerance.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::RunArgs;
use crate::dataplane::live::LiveIo;
use crate::dataplane::shared::VmShared;
use crate::launch;
use crate::machine::Machine;
use crate::vmm::runner;
use crate::vmm::vm::{Vm, VmConfig};

pub fn run(args: RunArgs) -> anyhow::Result<u8> {
    let vm_args = &args.vm;
    let signals = launch::block_stop_signals()?;
    let kernel = launch::kernel_bytes(vm_args.kernel.as_deref())?;
    let cmdline = launch::guest_cmdline(vm_args)?;
    let seed = vm_args.seed.unwrap_or_else(launch::random_seed);
    let (vcpu_cpu, _io_cpu) = launch::parse_cpus(vm_args.cpus.as_deref())?;
    let console = launch::console_for(vm_args.console.as_deref())?;
    let vm = Vm::new(&VmConfig {
        mem_size: vm_args.mem << 20,
        kernel: &kernel,
        cmdline,
        seed,
        net: false,
        blk: false,
    })
    .context("building the VM")?;
    let Vm {
        fd: _vm_fd,
        mut vcpu,
        mem,
        ..
    } = vm;

    let shared = Arc::new(VmShared::default());
    let started = Instant::now();
    let vcpu_shared = shared.clone();
    let handle = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            launch::pin_current_thread(vcpu_cpu);
            let _ = vcpu_shared.vcpu_thread.set(std::thread::current());
            let mut machine = Machine::new(mem, console, LiveIo::new(vcpu_shared.clone()));
            let end = runner::run(&mut vcpu, &mut machine, &mut launch::ForceCheck(vcpu_shared));
            (end, machine.stats)
        })
        .context("spawning the vCPU thread")?;
    let pthread = handle.as_pthread_t();
    launch::wait_for_end(
        &shared,
        &signals,
        Duration::from_secs(vm_args.stop_timeout),
        pthread,
        || handle.is_finished(),
    );
    let (end, stats) = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the vCPU thread panicked"))?;
    let end = end.context("running the VM")?;
    let (line, code) = launch::describe_end(&end);
    tracing::info!(
        "{line} ({:.2?}; {} sync calls, {} waits, {} MMIO exits)",
        started.elapsed(),
        stats.sync,
        stats.sync_waits,
        stats.mmio
    );
    if code != 0 {
        eprintln!("lockstep: {line}");
    }
    Ok(code)
}
