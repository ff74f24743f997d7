//! Live clone on real KVM (docs/join.md), in one process: a VM running
//! the disk workload (random reads and writes, four in flight) is copied
//! while it runs — dirty-page pre-copy, then a pause at a sync exit's end —
//! and starts recording at that join point; a second VM built from the
//! same configuration takes the clone and replays the rest of the
//! recording. The replay must reach the recording's end without a
//! divergence, its final memory hash equal to the original's: the clone
//! was exact. A joiner with another memory size is refused before any page
//! is written, and the running VM, unharmed, is cloned again afterwards.

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use blkio::{DiskEngine, DiskImage, DiskOpenOptions};
use kvm_ioctls::VcpuFd;
use lockstep_vmm::dataplane::io_thread::{self, IoThreadError, TAG_DISK, ToIo};
use lockstep_vmm::dataplane::join_point::{JoinCtl, PauseKit, Resume};
use lockstep_vmm::dataplane::live::LiveIo;
use lockstep_vmm::dataplane::shared::VmShared;
use lockstep_vmm::devices::console::Console;
use lockstep_vmm::kvm::vm::Vm;
use lockstep_vmm::machine::{Machine, RunEndKind, Stop, SyncIo};
use lockstep_vmm::replay::cursor::{FileChunks, LogCursor};
use lockstep_vmm::replay::recorder::{DigestPolicy, Recorder};
use lockstep_vmm::replay::replayer::{ReplayIo, ReplayStop};
use lockstep_vmm::snapshot::memory::PreCopy;
use lockstep_vmm::snapshot::stream::{self, CopyOptions};
use lockstep_vmm::snapshot::wire::Plain;
use lockstep_vmm::snapshot::{Hello, JoinStats, MachineState, SnapshotError};
use lockstep_vmm::spec::GuestSpec;
use lockstep_vmm::vcpu::{self, KickCheck, RunEnd, RunError};
use logchan::{FileSink, LogConfig, StreamHeader};

use common::kvm_available;

/// Guest memory: 64 MiB, or `LOCKSTEP_JOIN_MEM_MIB` (to measure the
/// pause at other sizes).
fn mem_size() -> u64 {
    std::env::var("LOCKSTEP_JOIN_MEM_MIB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(64)
        << 20
}

/// The embedded guest, copied to an aligned heap buffer (the ELF reader
/// wants its header aligned; `include_bytes!` promises nothing).
fn kernel() -> &'static [u8] {
    static KERNEL: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    KERNEL.get_or_init(|| lockstep_vmm::EMBEDDED_GUEST.to_vec())
}

struct NoKicks;
impl KickCheck for NoKicks {
    fn after_kick(&mut self) -> Option<Stop> {
        None
    }
}

/// A console whose bytes the test reads afterwards.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);
impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(b);
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn spec(mem_size: u64, disk_sectors: u64) -> GuestSpec {
    GuestSpec {
        mem_size,
        // Long enough to outlast the copy (`LOCKSTEP_JOIN_OPS` for larger
        // guests, whose copy takes longer).
        cmdline: format!(
            "workload=disk ip=10.77.0.2/24 ops={} inflight=4",
            std::env::var("LOCKSTEP_JOIN_OPS").unwrap_or_else(|_| "6000".into())
        ),
        seed: 11,
        mac: None,
        disk_sectors,
        disk_read_only: false,
    }
}

fn hello(spec: &GuestSpec) -> Hello {
    let id = spec.identity(kernel());
    Hello {
        mem_size: id.mem_size,
        kernel_hash: id.kernel_hash,
        boot_hash: id.boot_hash,
    }
}

type VcpuEnd<S> = (
    Result<RunEnd, RunError<<S as SyncIo>::Error>>,
    u64,
    S,
    VcpuFd,
);

/// Runs `vcpu` on a thread of its own to the guest's end.
fn run_vcpu<S: SyncIo + Send + 'static>(
    mut vcpu: VcpuFd,
    mem: vm_memory::GuestMemoryMmap,
    io: S,
    exit_index: u64,
    shared: Arc<VmShared>,
    console: Captured,
) -> JoinHandle<VcpuEnd<S>> {
    std::thread::spawn(move || {
        let _ = shared.vcpu_thread.set(std::thread::current());
        let mut machine = Machine::new(mem, Console::new(Box::new(console)), io);
        machine.exit_index = exit_index;
        let end = vcpu::run(&mut vcpu, &mut machine, &mut NoKicks).and_then(|end| {
            let kind = match end.stop {
                Stop::GuestExit(s) => RunEndKind::GuestExit(s),
                _ => RunEndKind::Error,
            };
            machine.finish(&kind, &vcpu)?;
            Ok(end)
        });
        (end, machine.exit_index, machine.io, vcpu)
    })
}

/// The joiner: a fresh VM of `spec`, taking the clone from `stream`.
fn joiner(
    spec: GuestSpec,
    stream: UnixStream,
) -> JoinHandle<Result<(Vm, MachineState, JoinStats), SnapshotError>> {
    std::thread::spawn(move || {
        let vm = spec
            .build_vm(kernel())
            .map_err(|e| SnapshotError::Protocol(e.to_string()))?;
        let (state, stats) = stream::receive_clone(&mut Plain(stream), &vm.mem, &hello(&spec))?;
        Ok((vm, state, stats))
    })
}

/// Copies the running VM to `stream`: pre-copy, then the pause, at which
/// the VM starts recording with `recorder` (if given).
fn copy(
    fd: &Arc<kvm_ioctls::VmFd>,
    mem: &vm_memory::GuestMemoryMmap,
    ctl: &JoinCtl,
    shared: &VmShared,
    spec: &GuestSpec,
    stream: UnixStream,
    recorder: Option<Recorder>,
) -> Result<JoinStats, SnapshotError> {
    ctl.begin(|| shared.wake_vcpu());
    let mut precopy = PreCopy::start(fd.clone(), mem.clone())?;
    // Check the tracking of the VMM's own writes against every page's hash
    // (`LOCKSTEP_JOIN_VERIFY=0` measures the pause without the check).
    precopy.verify = std::env::var("LOCKSTEP_JOIN_VERIFY").map_or(true, |v| v != "0");
    let mut sink = Plain(stream);
    let sent = stream::send_clone(
        &mut sink,
        precopy,
        &hello(spec),
        CopyOptions::default(),
        &mut |_, _| {},
        |precopy| {
            ctl.pause(
                PauseKit {
                    precopy,
                    recorder,
                    keepalive: None,
                },
                || shared.wake_vcpu(),
                Duration::from_secs(5),
            )
        },
    );
    let switched = ctl.resume(match sent {
        Ok(_) => Resume::Switch(None),
        Err(_) => Resume::Abandon,
    });
    assert!(switched || sent.is_err(), "the vCPU waited for the verdict");
    sent
}

fn recorder_from(spec: &GuestSpec, log: &Path, first_seq: u64) -> (Recorder, FileSink) {
    let mut header = StreamHeader::new(
        spec.identity(kernel()),
        logchan::header::flags::READ_DATA_LOGGED,
        0,
    );
    header.first_seq = first_seq;
    let config = LogConfig {
        first_seq,
        ..LogConfig::new(16, 1 << 20)
    };
    let (producer, consumer) = logchan::log_buffers_with(&config).expect("log buffers");
    let sink = FileSink::create(log, &header, consumer).expect("log file");
    let policy = DigestPolicy {
        every_syncs: 16,
        mem_every_digests: 8,
    };
    (Recorder::new(producer, true, policy), sink)
}

#[test]
fn a_running_vm_is_cloned_exactly_and_a_refused_or_dead_joiner_leaves_it_unharmed() {
    if !kvm_available() || kernel().is_empty() {
        eprintln!("SKIP: needs /dev/kvm and the embedded guest");
        return;
    }
    let dir = common::tempdir();
    let image = DiskImage::open(
        dir.path().join("disk.img"),
        DiskOpenOptions {
            create_size: Some(64 << 20),
            ..Default::default()
        },
    )
    .expect("disk image");
    let spec = spec(mem_size(), image.capacity_sectors());
    let vm = spec.build_vm(kernel()).expect("the original VM");
    let Vm { fd, vcpu, mem, .. } = vm;
    let fd = Arc::new(fd);
    let shared = Arc::new(VmShared::default());
    let (io, io_thread): (_, JoinHandle<Result<(), IoThreadError>>) = io_thread::spawn(
        Some(DiskEngine::new(image, TAG_DISK)),
        None,
        shared.clone(),
        None,
        None,
        true,
    )
    .expect("I/O thread");
    let mut live = LiveIo::new(shared.clone(), spec.devices(), Some(io));
    let ctl = Arc::new(JoinCtl::default());
    live.join = Some(ctl.clone());
    let console = Captured::default();
    let original = run_vcpu(vcpu, mem.clone(), live, 0, shared.clone(), console.clone());
    // Let the workload get going: disk requests in flight, memory dirtied.
    let started = Instant::now();
    while !console.text().contains("workload=disk") && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        console.text().contains("workload=disk"),
        "{}",
        console.text()
    );

    // 1. A joiner with twice the memory: refused at Hello, nothing written;
    //    the copy fails, the VM is untouched.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let wrong = joiner(self::spec(2 * mem_size(), spec.disk_sectors), theirs);
    let refused = copy(&fd, &mem, &ctl, &shared, &spec, ours, None);
    let why = wrong.join().expect("joiner thread").err().expect("refused");
    assert!(
        why.to_string().contains(&format!(
            "memory {} MiB (the joiner has {} MiB)",
            mem_size() >> 20,
            (2 * mem_size()) >> 20
        )),
        "{why}"
    );
    assert!(refused.is_err(), "the copy to a refusing joiner failed");
    assert!(!original.is_finished(), "the VM runs on");

    // 2. A joiner that dies mid-copy (its end of the stream closes after a
    //    few messages): the copy fails, the VM runs on.
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let dying = std::thread::spawn(move || {
        let mut src = Plain(theirs);
        for _ in 0..3 {
            let _ = lockstep_vmm::snapshot::wire::MessageSource::recv(&mut src);
        }
    });
    let died = copy(&fd, &mem, &ctl, &shared, &spec, ours, None);
    dying.join().expect("dying joiner");
    assert!(died.is_err(), "the copy to a dead joiner failed");
    assert!(!original.is_finished(), "the VM runs on");

    // 3. A joiner that follows: the clone, and the log from the join point.
    let log = dir.path().join("after-join.lslog");
    let (recorder, sink) = recorder_from(&spec, &log, 2);
    let (ours, theirs) = UnixStream::pair().expect("socketpair");
    let clone = joiner(spec.clone(), theirs);
    let stats = copy(&fd, &mem, &ctl, &shared, &spec, ours, Some(recorder)).expect("the copy");
    let (clone_vm, state, received) = clone.join().expect("joiner thread").expect("the clone");
    let pause = ctl
        .wait_pause(Duration::from_secs(5))
        .expect("the guest ran again");
    println!(
        "join of a {} MiB guest under the disk workload: {} rounds, {} pages ({} at the pause), pause {:.3} ms (capture {:.3} ms), copy {} ms",
        mem_size() >> 20,
        stats.rounds,
        stats.pages,
        stats.final_pages,
        pause.as_secs_f64() * 1e3,
        stats.pause_us as f64 / 1000.0,
        stats.total_ms
    );
    assert_eq!(received.pages, stats.pages);
    assert_eq!(
        stats.missed, 0,
        "pages changed that neither KVM's dirty log nor the VMM's tracking reported"
    );
    assert!(stats.rounds >= 2);
    assert_eq!(state.first_seq, 2);
    let (end, exits, live, _vcpu) = original.join().expect("original vCPU thread");
    let end = end.expect("the original ran to its end");
    assert_eq!(end.stop, Stop::GuestExit(0), "{}", console.text());
    sink.finish().expect("log written");
    let mut live = live;
    if let Some(io) = live.io.as_mut() {
        io.send(ToIo::Drain);
        io.waker.wake();
    }
    let _ = io_thread.join();

    // The clone replays the recording from the join point to its end.
    let Vm {
        vcpu: clone_vcpu,
        mem: clone_mem,
        fd: _clone_fd,
        ..
    } = clone_vm;
    let mut devices = spec.devices();
    stream::restore(&state, &clone_vcpu, &mut devices, &clone_mem).expect("restore");
    let cursor = LogCursor::new(Box::new(FileChunks::open(&log).expect("log"))).expect("header");
    let replay = ReplayIo::new(devices, cursor, None);
    let clone_console = Captured::default();
    let replayed = run_vcpu(
        clone_vcpu,
        clone_mem,
        replay,
        state.exit_index,
        Arc::new(VmShared::default()),
        clone_console.clone(),
    );
    let (end, clone_exits, replay, _) = replayed.join().expect("clone vCPU thread");
    // The guest exits at the recorded exit with the recorded status (the
    // replay's finish checks it against the log's End), or the log's End
    // stops the replay there.
    let matched = match &end {
        Ok(e) => e.stop == Stop::GuestExit(0),
        Err(e) => matches!(
            e.io_error().and_then(|e| e.stop()),
            Some(ReplayStop::Recorded { status: 0, .. })
        ),
    };
    assert!(matched, "the clone's replay ended with {end:?}");
    assert_eq!(clone_exits, exits, "the clone ended at the original's exit");
    assert!(
        replay.stats.mem_hashes_checked >= 1,
        "the final memory hash was compared"
    );
    assert!(replay.stats.digests_checked > 1);
    // What the original printed after the join point, the clone printed too.
    let tail = clone_console.text();
    assert!(
        console.text().ends_with(&tail) && tail.contains("disk:"),
        "clone console {tail:?}"
    );
}
