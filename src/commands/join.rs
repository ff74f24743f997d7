//! `lockstep backup`: joining a running primary by live clone
//! (docs/join.md). A primary whose attach request starts its log after
//! seq 1 sends a join stream first, on the same authenticated connection:
//! the backup builds the VM of the attach's configuration, takes the
//! guest's memory, vCPU and devices from the stream, and then replays the
//! log that follows from the join point.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use lockstep_ft::join::transport::JoinChannel;
use lockstep_vmm::devices::virtio::Devices;
use lockstep_vmm::kvm::vm::Vm;
use lockstep_vmm::snapshot::stream::{receive_clone, restore};
use lockstep_vmm::snapshot::{Hello, MachineState};
use lockstep_vmm::spec::GuestSpec;
use logchan::secure::{AttachRequest, RecordLayer};

/// How long the joiner waits for any byte of the join stream.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A backup restored from a live clone, ready to replay.
pub struct Joined {
    pub spec: GuestSpec,
    pub vm: Vm,
    pub devices: Devices,
    pub state: MachineState,
}

/// Whether this attach begins with a join stream.
pub fn is_join(attach: &AttachRequest) -> bool {
    attach.header.first_seq > 1
}

/// Receives the clone and restores it into a fresh VM.
pub fn receive(
    stream: &TcpStream,
    records: Option<&mut RecordLayer>,
    attach: &AttachRequest,
    kernel: &[u8],
    disk_sectors: u64,
) -> anyhow::Result<Joined> {
    let started = Instant::now();
    let spec = GuestSpec::decode(&attach.boot).context("reading the attach's configuration")?;
    if spec.disk_sectors != disk_sectors {
        bail!(
            "the primary's disk has {} sectors, this backup's {disk_sectors}: not the same disk",
            spec.disk_sectors
        );
    }
    let vm = spec.build_vm(kernel).context("building the VM to join")?;
    let id = spec.identity(kernel);
    let ours = Hello {
        mem_size: id.mem_size,
        kernel_hash: id.kernel_hash,
        boot_hash: id.boot_hash,
    };
    stream
        .set_read_timeout(Some(READ_TIMEOUT))
        .context("join stream timeout")?;
    let mut source = JoinChannel::new(stream, records);
    let (state, stats) =
        receive_clone(&mut source, &vm.mem, &ours).context("receiving the live clone")?;
    if source.has_leftover() {
        bail!("the join stream ended inside a record");
    }
    if state.first_seq != attach.header.first_seq {
        bail!(
            "the clone continues at seq {}, the attach said {}",
            state.first_seq,
            attach.header.first_seq
        );
    }
    stream
        .set_read_timeout(None)
        .context("join stream timeout")?;
    let mut devices = spec.devices();
    restore(&state, &vm.vcpu, &mut devices, &vm.mem).context("restoring the clone")?;
    tracing::info!(
        "joined by live clone at exit {} (log from seq {}): {} pages in {} pre-copy rounds, {} at the pause; the primary's guest paused {:.3} ms; {} ms here",
        state.exit_index,
        state.first_seq,
        stats.pages,
        stats.rounds,
        stats.final_pages,
        stats.pause_us as f64 / 1000.0,
        started.elapsed().as_millis()
    );
    Ok(Joined {
        spec,
        vm,
        devices,
        state,
    })
}
