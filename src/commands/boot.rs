//! What every command that runs a live VM does first: read the kernel, open
//! the disk image and the tap, build the VM and start the I/O thread. Every
//! bad input surfaces here, before a thread starts, with its reason.

use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context;
use kvm_ioctls::{VcpuFd, VmFd};
use vm_memory::GuestMemoryMmap;

use blkio::{BlkConfig, BlkDevice, DiskEngine, DiskImage, DiskOpenOptions};
use netio::{NetDevice, Tap, TapEngine};

use crate::cli::VmArgs;
use crate::dataplane::io_thread::{self, IoChannels, IoThreadError, TAG_DISK, TAG_TAP};
use crate::dataplane::shared::VmShared;
use crate::devices::virtio::Devices;
use crate::launch;
use crate::vmm::vm::{Vm, VmConfig};

/// Reads posted on the tap at any time.
const TAP_RX_DEPTH: usize = 64;

/// The guest configuration that must be identical on every VM that replays
/// this one: what the guest can observe at boot.
#[derive(Clone, Debug)]
pub struct GuestSpec {
    pub kernel: Vec<u8>,
    pub mem_size: u64,
    pub cmdline: String,
    pub seed: u64,
    pub mac: Option<[u8; 6]>,
    pub disk_sectors: u64,
    pub disk_read_only: bool,
}

/// The disk serial the guest sees.
pub const DISK_SERIAL: &[u8; 20] = b"lockstep-disk\0\0\0\0\0\0\0";

impl GuestSpec {
    pub fn devices(&self) -> Devices {
        let net = self.mac.map(NetDevice::new);
        let blk = BlkDevice::new(BlkConfig {
            capacity_sectors: self.disk_sectors,
            read_only: self.disk_read_only,
            serial: *DISK_SERIAL,
        });
        Devices::new(net, Some(blk))
    }

    pub fn build_vm(&self) -> anyhow::Result<Vm> {
        Vm::new(&VmConfig {
            mem_size: self.mem_size,
            kernel: &self.kernel,
            cmdline: self.cmdline.clone(),
            seed: self.seed,
            net: self.mac.is_some(),
            blk: true,
        })
        .context("building the VM")
    }
}

/// A VM ready to run, with its I/O thread started.
pub struct Booted {
    pub spec: GuestSpec,
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
pub fn boot(args: &VmArgs) -> anyhow::Result<Booted> {
    let kernel = launch::kernel_bytes(args.kernel.as_deref())?;
    let cmdline = launch::guest_cmdline(args)?;
    let mac = launch::parse_mac(&args.mac)?;
    let seed = args.seed.unwrap_or_else(launch::random_seed);
    let (vcpu_cpu, io_cpu) = launch::parse_cpus(args.cpus.as_deref())?;

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
    let tap = match &args.tap {
        Some(name) => Some(Tap::open(name).with_context(|| format!("opening tap {name}"))?),
        None => None,
    };
    let spec = GuestSpec {
        kernel,
        mem_size: args.mem << 20,
        cmdline,
        seed,
        mac: tap.as_ref().map(|_| mac),
        disk_sectors: image.capacity_sectors(),
        disk_read_only: image.read_only(),
    };
    let vm = spec.build_vm()?;
    let disk = DiskEngine::new(image, TAG_DISK);
    let tap = match tap {
        Some(t) => {
            Some(TapEngine::new(t, TAG_TAP, TAP_RX_DEPTH).context("setting up the tap engine")?)
        }
        None => None,
    };
    let shared = Arc::new(VmShared::default());
    let (io, io_thread) = io_thread::spawn(Some(disk), tap, shared.clone(), io_cpu)
        .context("starting the I/O thread")?;
    Ok(Booted {
        spec,
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
