//! Running a live VM to its end: the vCPU thread, the signal-driven stop,
//! draining the I/O thread so every submitted write reaches the disk.

use std::os::unix::thread::JoinHandleExt;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cli::VmArgs;
use crate::commands::boot::{self, Booted};
use crate::dataplane::io_thread::ToIo;
use crate::dataplane::live::LiveIo;
use crate::launch;
use crate::machine::{ExitStats, Machine, RunEndKind, Stop};
use crate::replay::recorder::Recorder;
use crate::spec::GuestSpec;
use crate::vmm::runner::{self, RunEnd};

/// How long the I/O thread gets to finish submitted writes at the end.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// How a live run differs between `run`, `record` and `primary`.
#[derive(Default)]
pub struct LiveOptions {
    /// Builds the recorder and where its log goes, once the guest's
    /// configuration and kernel are known.
    pub log: Option<Box<MakeLog>>,
}

/// Builds a recorder for a guest (configuration, kernel bytes).
pub type MakeLog = dyn FnOnce(&GuestSpec, &[u8]) -> anyhow::Result<(Recorder, LogTarget)> + Send;

/// Where a recording goes.
pub enum LogTarget {
    File(logchan::FileSink),
}

impl LogTarget {
    /// Waits until everything is written; returns the bytes of the stream.
    fn finish(self) -> anyhow::Result<u64> {
        match self {
            LogTarget::File(sink) => Ok(sink.finish().context("writing the log")?.bytes),
        }
    }
}

/// What the vCPU thread hands back.
struct VcpuResult {
    end: anyhow::Result<RunEnd>,
    stats: ExitStats,
    io: LiveIo,
}

/// The run's end as the log records it.
pub fn end_kind(end: &anyhow::Result<RunEnd>) -> RunEndKind {
    match end {
        Ok(RunEnd {
            stop: Stop::GuestExit(s),
            ..
        }) => RunEndKind::GuestExit(*s),
        Ok(RunEnd {
            stop: Stop::Forced, ..
        }) => RunEndKind::HostStop,
        _ => RunEndKind::Error,
    }
}

pub fn run_live(args: &VmArgs, opts: LiveOptions) -> anyhow::Result<u8> {
    let signals = launch::block_stop_signals()?;
    let Booted {
        spec,
        kernel,
        vm_fd: _vm_fd,
        mut vcpu,
        mem,
        shared,
        io,
        io_thread,
        vcpu_cpu,
        disk_direct,
    } = boot::boot(args)?;
    let (recorder, target) = match opts.log {
        Some(make) => {
            let (r, t) = make(&spec, &kernel)?;
            (Some(r), Some(t))
        }
        None => (None, None),
    };
    let console = launch::console_for(args.console.as_deref())?;
    announce(args, &spec, disk_direct);

    let started = Instant::now();
    let vcpu_shared = shared.clone();
    let devices = spec.devices();
    let handle = std::thread::Builder::new()
        .name("vcpu".into())
        .spawn(move || {
            launch::pin_current_thread(vcpu_cpu);
            let _ = vcpu_shared.vcpu_thread.set(std::thread::current());
            let mut live = LiveIo::new(vcpu_shared.clone(), devices, Some(io));
            live.recorder = recorder;
            let mut machine = Machine::new(mem, console, live);
            let end = runner::run(
                &mut vcpu,
                &mut machine,
                &mut launch::ForceCheck(vcpu_shared),
            )
            .context("running the VM");
            let finish = machine.finish(&end_kind(&end), &vcpu);
            let end = match (end, finish) {
                (Ok(_), Err(e)) => Err(anyhow::anyhow!(e).context("finishing the log")),
                (end, _) => end,
            };
            VcpuResult {
                end,
                stats: machine.stats,
                io: machine.io,
            }
        })
        .context("spawning the vCPU thread")?;
    let pthread = handle.as_pthread_t();
    launch::wait_for_end(
        &shared,
        &signals,
        Duration::from_secs(args.stop_timeout),
        pthread,
        || handle.is_finished(),
    );
    let VcpuResult { end, stats, mut io } = handle
        .join()
        .map_err(|_| anyhow::anyhow!("the vCPU thread panicked"))?;
    // Every write the guest submitted reaches the disk before we exit.
    if let Some(ch) = io.io.as_mut() {
        ch.send(ToIo::Drain);
        ch.waker.wake();
    }
    drop(io);
    let drain_deadline = Instant::now() + DRAIN_TIMEOUT;
    while !io_thread.is_finished() && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if io_thread.is_finished() {
        match io_thread.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!("I/O thread: {e}"),
            Err(_) => tracing::error!("the I/O thread panicked"),
        }
    } else {
        tracing::error!(
            "disk writes did not complete within {DRAIN_TIMEOUT:?}; exiting without them"
        );
    }
    if let Some(target) = target {
        let bytes = target.finish()?;
        let secs = started.elapsed().as_secs_f64().max(1e-3);
        tracing::info!(
            "log: {bytes} bytes in {secs:.1} s ({:.3} Mbit/s)",
            bytes as f64 * 8.0 / secs / 1e6
        );
    }
    let end = end?;
    let (line, code) = launch::describe_end(&end);
    tracing::info!("{line}");
    tracing::info!(
        "{}",
        launch::stats_line(&stats, end.exits, started.elapsed())
    );
    if code != 0 {
        eprintln!("lockstep: {line}");
    }
    Ok(code)
}

/// Tells the operator where the guest is and how to reach it.
fn announce(args: &VmArgs, spec: &GuestSpec, disk_direct: bool) {
    let ip = args.guest_ip.split('/').next().unwrap_or(&args.guest_ip);
    tracing::info!(
        "disk {} ({} MiB, {}{})",
        args.disk.display(),
        spec.disk_sectors * 512 >> 20,
        if disk_direct {
            "O_DIRECT|O_DSYNC"
        } else {
            "O_DSYNC"
        },
        if spec.disk_read_only {
            ", read-only"
        } else {
            ""
        }
    );
    match &args.tap {
        Some(tap) => tracing::info!(
            "guest {ip} on tap {tap} ({}): redis-cli -h {ip} ping; curl http://{ip}/stats; Ctrl-C stops it",
            args.mac
        ),
        None => tracing::info!("guest has no network (no --tap); Ctrl-C stops it"),
    }
}
