//! A live VM (`run`, `record`, `primary`): boot, run, drain, report.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use lockstep_ft::operator::Operator;
use lockstep_ft::shared::FtShared;
use lockstep_ft::supervisor::{Rebind, Supervisor};
use lockstep_status::Role;
use lockstep_vmm::dataplane::io_thread::{IoChannels, ToIo};
use lockstep_vmm::dataplane::join_point::JoinCtl;
use lockstep_vmm::dataplane::live::LiveIo;
use lockstep_vmm::dataplane::pace::Pacer;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::machine::SyncIo;
use lockstep_vmm::spec::GuestSpec;

use crate::cli::VmArgs;
use crate::commands::boot::{self, Booted, MakeLog};
use crate::commands::drive::{Driven, Served, VmParts, drain, drive};
use crate::exit_status::ExitStatus;
use crate::launch;

/// How often an idle FT primary appends a keep-alive entry, so that its
/// backup keeps hearing from it.
pub const KEEPALIVE_EVERY: Duration = Duration::from_millis(10);

impl Served for LiveIo {
    fn channels(&mut self) -> Option<&mut IoChannels> {
        self.io.as_mut()
    }
}

/// How a live run differs between `run`, `record` and `primary`.
pub struct LiveOptions {
    /// Builds the recorder and where its log goes, once the guest's
    /// configuration and kernel are known.
    pub log: Option<Box<MakeLog>>,
    /// An FT primary: its shared state and its supervisor.
    pub ft: Option<(Arc<FtShared>, Supervisor)>,
    /// What `lockstep status` calls this VMM.
    pub role: Role,
    /// Paces the guest after each sync exit (an FT primary's throttle).
    pub pacer: Option<Box<dyn Pacer>>,
    /// Starts re-protection by live clone (docs/join.md), once the VM is
    /// built: the joins run on a thread of their own.
    pub join: Option<Box<StartJoin>>,
    /// Carries out the operator's actions on the status endpoint
    /// (docs/operator-actions.md).
    pub operator: Option<Arc<Operator>>,
}

/// What a join needs of the running VM.
pub struct JoinEnv {
    pub vm: Arc<VmFd>,
    pub mem: GuestMemoryMmap,
    pub ctl: Arc<JoinCtl>,
    pub shared: Arc<VmShared>,
    pub spec: GuestSpec,
    pub kernel: Vec<u8>,
    pub main_thread: std::thread::Thread,
    /// The supervisor's handle, and the pair run it watches now.
    pub rebind: Option<Rebind>,
    pub current: Option<Arc<FtShared>>,
}

/// Starts the join thread.
pub type StartJoin = dyn FnOnce(JoinEnv) -> anyhow::Result<()> + Send;

pub fn run_live(args: &VmArgs, opts: LiveOptions) -> anyhow::Result<ExitStatus> {
    let signals = launch::block_stop_signals()?;
    let Booted {
        recorder,
        target,
        spec,
        kernel,
        vm_fd,
        vcpu,
        mem,
        shared,
        io,
        io_thread,
        vcpu_cpu,
        disk_direct,
    } = boot::boot(args, opts.log)?;
    let (ft, mut supervisor) = match opts.ft {
        Some((ft, sup)) => (Some(ft), Some(sup)),
        None => (None, None),
    };
    if let Some(s) = &supervisor {
        // Also for a VM started alone, whose log (which sets it) starts
        // only at a join.
        lockstep_status::StatusCounters::set(&shared.status.epoch, s.epoch);
    }
    if let Some(ft) = &ft {
        let _ = ft.main_thread.set(std::thread::current());
    }
    let console = launch::console_for(args.console.as_deref())?;
    announce(args, &spec, disk_direct);
    shared.status.set_role(opts.role);
    if opts.role == Role::PrimaryAlone
        && let Ok(mut b) = shared.status.join.alone_because.lock()
    {
        // A primary started without a backup (`--spares` only).
        *b = Some("no backup yet".into());
    }
    let actions = opts.operator.map(|op| {
        op.attach(shared.clone());
        op as Arc<dyn lockstep_status::ActionHandler>
    });
    let _status = launch::serve_status_with(&args.monitor, &shared.status, actions)?;
    let mut io = io;
    // Tell the LAN where the guest is now: a VM that starts on another host
    // than last time (a restarted pair) is found at once.
    if let (Some(mac), Some(ip)) = (spec.mac, spec.guest_ip()) {
        io.send(ToIo::Tx {
            frame: netio::gratuitous_arp(mac, ip),
            seq: 0,
        });
    }
    let mut live = LiveIo::new(shared.clone(), spec.devices(), Some(io));
    live.recorder = recorder;
    live.stream_log = ft.is_some().then_some(KEEPALIVE_EVERY);
    live.pacer = opts.pacer;
    // The VM's fd stays open for the run; a join reads its dirty log.
    let vm_fd = Arc::new(vm_fd);
    if let Some(start) = opts.join {
        let ctl = Arc::new(JoinCtl::default());
        live.join = Some(ctl.clone());
        start(JoinEnv {
            vm: vm_fd.clone(),
            mem: mem.clone(),
            ctl,
            shared: shared.clone(),
            spec: spec.clone(),
            kernel,
            main_thread: std::thread::current(),
            rebind: supervisor.as_ref().map(|s| s.rebinder()),
            current: ft.clone(),
        })?;
    }
    let vm = VmParts {
        vcpu,
        mem,
        cpu: vcpu_cpu,
        exit_index: 0,
    };
    let mut run = drive(
        vm,
        console,
        live,
        shared,
        &signals,
        Duration::from_secs(args.stop_timeout),
        supervisor.as_mut(),
    )?;
    drain(&mut run.io, io_thread);
    run.io.shared.status.set_role(Role::Stopped);
    if let Some(Some(bytes)) = target.map(|t| t.finish()).transpose()? {
        let secs = run.elapsed.as_secs_f64().max(1e-3);
        tracing::info!(
            "log: {bytes} bytes in {secs:.1} s ({:.3} Mbit/s)",
            bytes as f64 * 8.0 / secs / 1e6
        );
    }
    report(run)
}

/// Logs how the run ended; returns the exit status.
pub fn report<S: SyncIo>(run: Driven<S>) -> anyhow::Result<ExitStatus> {
    if let Some(reason) = &run.verdict {
        return Ok(ExitStatus::from(reason));
    }
    let end = run.end.context("running the VM")?;
    let (line, status) = launch::describe_end(&end);
    tracing::info!("{line}");
    tracing::info!("{}", launch::stats_line(&run.stats, end.exits, run.elapsed));
    if status.code() != 0 {
        eprintln!("lockstep: {line}");
    }
    Ok(status)
}

/// Tells the operator where the guest is and how to reach it.
fn announce(args: &VmArgs, spec: &GuestSpec, disk_direct: bool) {
    let ip = args.guest_ip.split('/').next().unwrap_or(&args.guest_ip);
    tracing::info!(
        "disk {} ({} MiB, {}{})",
        args.disk.display(),
        (spec.disk_sectors * 512) >> 20,
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
