//! What every command that runs a live VM does first: read the kernel, open
//! the disk image and the tap, build the VM and start the I/O thread. Every
//! bad input surfaces here, before a thread starts, with its reason.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use blkio::{DiskEngine, DiskImage, DiskOpenOptions};
use netio::{Tap, TapEngine};

use lockstep_vmm::dataplane::io_thread::{self, IoChannels, IoThreadError, TAG_DISK, TAG_TAP};
use lockstep_vmm::dataplane::plane::IoPlane;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::replay::recorder::Recorder;
use lockstep_vmm::spec::GuestSpec;

use crate::cli::VmArgs;
use crate::commands::app;
use crate::launch;

/// Reads posted on the tap at any time.
const TAP_RX_DEPTH: usize = 64;

/// Builds the recorder for a guest (configuration, kernel) and says where
/// its log goes; an FT primary also hands the I/O thread its channel.
pub type MakeLog = dyn FnOnce(&GuestSpec, &[u8], &Arc<VmShared>) -> anyhow::Result<LogSetup> + Send;

/// A recorder and where its log goes.
pub struct LogSetup {
    pub recorder: Recorder,
    pub target: LogTarget,
    /// The FT pair's channel and heartbeats, for the I/O thread.
    pub plane: Option<Box<dyn IoPlane>>,
}

/// Where a recording goes.
pub enum LogTarget {
    /// A file, written by a thread of its own.
    File(logchan::FileSink),
    /// The logging channel, sent by the I/O thread.
    Channel,
}

impl LogTarget {
    /// Waits until everything is written; returns the bytes of the stream
    /// if known.
    pub fn finish(self) -> anyhow::Result<Option<u64>> {
        match self {
            LogTarget::File(sink) => Ok(Some(sink.finish().context("writing the log")?.bytes)),
            LogTarget::Channel => Ok(None),
        }
    }
}

/// A VM ready to run, with its I/O thread started.
pub struct Booted {
    pub recorder: Option<Recorder>,
    pub target: Option<LogTarget>,
    pub spec: GuestSpec,
    pub kernel: Vec<u8>,
    pub vm_fd: VmFd,
    pub vcpu: VcpuFd,
    pub mem: GuestMemoryMmap,
    pub shared: Arc<VmShared>,
    pub io: IoChannels,
    pub io_thread: JoinHandle<Result<(), IoThreadError>>,
    pub vcpu_cpu: Option<usize>,
    pub disk_direct: bool,
}

/// Opens everything `args` names and starts the I/O thread.
pub fn boot(args: &VmArgs, make_log: Option<Box<MakeLog>>) -> anyhow::Result<Booted> {
    let kernel = launch::kernel_bytes(args.kernel.as_deref())?;
    let line = launch::guest_cmdline(args)?;
    let app = app::prepare(&args.app, &line)?;
    let cmdline = lockstep_vmm::app::cmdline(line, app.as_ref());
    let mac = launch::parse_mac(&args.mac)?;
    let seed = args.seed.unwrap_or_else(launch::random_seed);
    let (vcpu_cpu, io_cpu) = launch::parse_cpus(args.cpus.as_deref())?;
    lockstep_vmm::cpu::avoid_cpu(vcpu_cpu);

    let image = DiskImage::open(
        &args.disk,
        DiskOpenOptions {
            create_size: Some(args.disk_size << 20),
            ..Default::default()
        },
    )
    .with_context(|| format!("opening disk image {}", args.disk.display()))?;
    if !image.direct() {
        tracing::warn!(
            "{}: the file system does not support O_DIRECT; using O_DSYNC through the page cache",
            args.disk.display()
        );
    }
    let disk_direct = image.direct();
    if let Some(app) = &app {
        app.install(&args.disk)?;
    }
    let tap = match &args.tap {
        Some(name) => Some(Tap::open(name).with_context(|| format!("opening tap {name}"))?),
        None => None,
    };
    let spec = GuestSpec {
        mem_size: args.mem << 20,
        cmdline,
        seed,
        mac: tap.as_ref().map(|_| mac),
        disk_sectors: image.capacity_sectors(),
        disk_read_only: image.read_only(),
    };
    let vm = spec.build_vm(&kernel).context("building the VM")?;
    let disk = DiskEngine::new(image, TAG_DISK);
    let tap = match tap {
        Some(t) => {
            Some(TapEngine::new(t, TAG_TAP, TAP_RX_DEPTH).context("setting up the tap engine")?)
        }
        None => None,
    };
    let shared = Arc::new(VmShared::default());
    let (recorder, target, plane) = match make_log {
        Some(make) => {
            let setup = make(&spec, &kernel, &shared)?;
            (Some(setup.recorder), Some(setup.target), setup.plane)
        }
        None => (None, None, None),
    };
    let (io, io_thread) = io_thread::spawn(Some(disk), tap, shared.clone(), io_cpu, plane, true)
        .context("starting the I/O thread")?;
    Ok(Booted {
        recorder,
        target,
        spec,
        kernel,
        vm_fd: vm.fd,
        vcpu: vm.vcpu,
        mem: vm.mem,
        shared,
        io,
        io_thread,
        vcpu_cpu,
        disk_direct,
    })
}
