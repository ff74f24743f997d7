//! Exit handling on made-up exits: no KVM involved.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use lockstep_guest_abi as abi;

use super::*;

/// Answers sync calls with fixed values and records what it was asked.
#[derive(Default)]
struct FakeIo {
    asked: Vec<SyncRequest>,
    mmio: Vec<(u64, usize)>,
}

impl SyncIo for FakeIo {
    type Error = std::convert::Infallible;

    fn sync(&mut self, _: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, Self::Error> {
        self.asked.push(*req);
        Ok(SyncOutcome {
            events: abi::EV_NET_RX | abi::EV_TIMER,
            now_ns: 1_000 + req.exit_index,
            waited_ns: if req.wait() { 1 } else { 0 },
        })
    }
    fn mmio_read(&mut self, _: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool {
        self.mmio.push((addr, data.len()));
        data.fill(0xab);
        addr == abi::MMIO_NET
    }
    fn mmio_write(&mut self, _: &GuestMemoryMmap, addr: u64, data: &[u8]) -> bool {
        self.mmio.push((addr, data.len()));
        addr == abi::MMIO_NET
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn machine() -> (Machine<FakeIo>, Sink) {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
    let sink = Sink::default();
    (
        Machine::new(mem, Console::new(Box::new(sink.clone())), FakeIo::default()),
        sink,
    )
}

/// An `OUT` to `port` with `data`.
fn out(
    m: &mut Machine<FakeIo>,
    port: u16,
    data: &[u8],
) -> Result<Flow, MachineError<std::convert::Infallible>> {
    m.handle(VmExit::IoOut { port, data })
}

#[test]
fn a_sync_exit_fills_the_block_and_counts_one_exit() {
    let (mut m, _) = machine();
    let block = 0x30_0000u64;
    m.mem
        .write_slice(&abi::SYNC_WAIT.to_le_bytes(), GuestAddress(block))
        .unwrap();
    m.mem
        .write_slice(&5_000u64.to_le_bytes(), GuestAddress(block + 8))
        .unwrap();
    let data = (block as u32).to_le_bytes();
    let flow = out(&mut m, abi::PORT_SYNC, &data).unwrap();
    assert_eq!(flow, Flow::Continue);
    assert_eq!(m.exit_index, 1);
    let req = m.io.asked[0];
    assert_eq!(
        (req.exit_index, req.flags, req.deadline_ns),
        (1, abi::SYNC_WAIT, 5_000)
    );
    let mut events = [0u8; 4];
    m.mem
        .read_slice(&mut events, GuestAddress(block + 4))
        .unwrap();
    assert_eq!(u32::from_le_bytes(events), abi::EV_NET_RX | abi::EV_TIMER);
    let now: u64 = m.mem.read_obj(GuestAddress(block + 16)).unwrap();
    assert_eq!(now, 1_001);
    assert_eq!(m.stats.sync_waits, 1);
}

#[test]
fn host_interruptions_do_not_move_the_exit_index() {
    let (mut m, _) = machine();
    assert_eq!(m.handle(VmExit::Interrupted).unwrap(), Flow::Continue);
    assert_eq!(m.exit_index, 0);
    assert_eq!(m.stats.host_interrupts, 1);
    let data = 0u32.to_le_bytes();
    assert_eq!(
        out(&mut m, abi::PORT_EXIT, &data).unwrap(),
        Flow::Stop(Stop::GuestExit(0))
    );
    assert_eq!(m.exit_index, 1);
}

#[test]
fn a_misaligned_or_wild_sync_block_is_a_guest_error() {
    let (mut m, _) = machine();
    for addr in [0x30_0004u32, 0x30_0ff0, 0x7fff_fff0] {
        let data = addr.to_le_bytes();
        let err = out(&mut m, abi::PORT_SYNC, &data).unwrap_err();
        assert!(
            matches!(err, MachineError::Guest { .. }),
            "{addr:#x}: {err}"
        );
    }
    let short = [0u8; 2];
    let err = out(&mut m, abi::PORT_SYNC, &short).unwrap_err();
    assert!(err.to_string().contains("broke the ABI"), "{err}");
    assert!(m.io.asked.is_empty(), "nothing reached the I/O side");
}

#[test]
fn console_writes_whole_buffers_and_survives_bad_ones() {
    let (mut m, sink) = machine();
    let text = b"banner line\n";
    m.mem.write_slice(text, GuestAddress(0x20_0000)).unwrap();
    m.mem
        .write_obj(0x20_0000u64, GuestAddress(0x21_0000))
        .unwrap();
    m.mem
        .write_obj(text.len() as u64, GuestAddress(0x21_0008))
        .unwrap();
    let data = 0x21_0000u32.to_le_bytes();
    out(&mut m, abi::PORT_CONSOLE, &data).unwrap();
    assert_eq!(&*sink.0.lock().unwrap(), text);
    // Too long, and pointing outside memory: warned about, not fatal.
    m.mem
        .write_obj(abi::CONSOLE_MAX + 1, GuestAddress(0x21_0008))
        .unwrap();
    assert_eq!(
        out(&mut m, abi::PORT_CONSOLE, &data).unwrap(),
        Flow::Continue
    );
    m.mem
        .write_obj(0x7000_0000u64, GuestAddress(0x21_0000))
        .unwrap();
    m.mem.write_obj(4u64, GuestAddress(0x21_0008)).unwrap();
    assert_eq!(
        out(&mut m, abi::PORT_CONSOLE, &data).unwrap(),
        Flow::Continue
    );
    assert_eq!(sink.0.lock().unwrap().len(), text.len());
    assert_eq!(m.console.bytes, text.len() as u64);
}

#[test]
fn undefined_ports_unknown_mmio_and_odd_exits_are_errors_or_stops() {
    let (mut m, _) = machine();
    let data = [0u8; 1];
    assert!(matches!(
        out(&mut m, 0x3f8, &data),
        Err(MachineError::UnknownPort {
            port: 0x3f8,
            dir: "out"
        })
    ));
    let mut buf = [0u8; 4];
    assert!(matches!(
        m.handle(VmExit::IoIn {
            port: abi::PORT_SYNC,
            data: &mut buf
        }),
        Err(MachineError::UnknownPort { dir: "in", .. })
    ));
    assert_eq!(
        m.handle(VmExit::MmioRead {
            addr: abi::MMIO_NET,
            data: &mut buf
        })
        .unwrap(),
        Flow::Continue
    );
    assert_eq!(buf, [0xab; 4]);
    assert!(matches!(
        m.handle(VmExit::MmioWrite {
            addr: 0xdead_0000,
            data: &buf
        }),
        Err(MachineError::UnknownMmio {
            addr: 0xdead_0000,
            ..
        })
    ));
    let vector = 14u32.to_le_bytes();
    assert_eq!(
        out(&mut m, abi::PORT_FAULT, &vector).unwrap(),
        Flow::Stop(Stop::Fault(14))
    );
    assert_eq!(
        m.handle(VmExit::Shutdown).unwrap(),
        Flow::Stop(Stop::TripleFault)
    );
    assert_eq!(
        m.handle(VmExit::InternalError).unwrap(),
        Flow::Stop(Stop::EmulationFailure)
    );
    assert_eq!(m.handle(VmExit::Hlt).unwrap(), Flow::Stop(Stop::Halted));
    assert!(m.handle(VmExit::FailEntry { reason: 7 }).is_err());
    assert_eq!(
        m.exit_index, 9,
        "every guest-caused exit counted, errors included"
    );
}
