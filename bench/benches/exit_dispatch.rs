//! Exit dispatch on the vCPU thread: `Machine::handle` with made-up exits
//! (no KVM), as `src/machine/tests.rs` drives it — the VMM's share of every
//! exit beside the ~25–45 µs world switch of this host's software KVM.
//! The sync call's I/O side answers at once, so what is measured is the
//! dispatcher itself: reading the sync block from guest memory, the
//! request, writing the result back, counting the exit.
//!
//! Run: `cargo bench -p lockstep-bench --bench exit_dispatch`

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use lockstep_guest_abi as abi;
use lockstep_vmm::devices::console::Console;
use lockstep_vmm::machine::{
    Flow, Machine, MachineError, SyncIo, SyncOutcome, SyncRequest, VmExit,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Answers every sync call at once with fixed events and a clock.
struct InstantIo {
    now_ns: u64,
}

impl SyncIo for InstantIo {
    type Error = std::convert::Infallible;

    fn sync(&mut self, _: &GuestMemoryMmap, req: &SyncRequest) -> Result<SyncOutcome, Self::Error> {
        self.now_ns += 1_000;
        Ok(SyncOutcome {
            events: abi::EV_NET_RX,
            now_ns: self.now_ns + req.exit_index,
            waited_ns: 0,
        })
    }
    fn mmio_read(&mut self, _: &GuestMemoryMmap, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        addr == abi::MMIO_NET
    }
    fn mmio_write(&mut self, _: &GuestMemoryMmap, addr: u64, _: &[u8]) -> bool {
        addr == abi::MMIO_NET
    }
}

const SYNC_BLOCK: u64 = 0x30_0000;
const CONSOLE_DESC: u64 = 0x21_0000;
const CONSOLE_TEXT: u64 = 0x20_0000;

fn machine() -> Machine<InstantIo> {
    let mem = match GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]) {
        Ok(m) => m,
        Err(e) => panic!("guest memory: {e}"),
    };
    let text = b"kv: a console line of typical length\n";
    let writes = [
        mem.write_slice(&0u32.to_le_bytes(), GuestAddress(SYNC_BLOCK)),
        mem.write_slice(text, GuestAddress(CONSOLE_TEXT)),
        mem.write_slice(&CONSOLE_TEXT.to_le_bytes(), GuestAddress(CONSOLE_DESC)),
        mem.write_slice(
            &(text.len() as u64).to_le_bytes(),
            GuestAddress(CONSOLE_DESC + 8),
        ),
    ];
    if writes.iter().any(Result::is_err) {
        panic!("cannot lay out guest memory");
    }
    Machine::new(
        mem,
        Console::new(Box::new(std::io::sink())),
        InstantIo { now_ns: 0 },
    )
}

fn expect_continue(r: Result<Flow, MachineError<std::convert::Infallible>>) {
    match r {
        Ok(Flow::Continue) => {}
        other => panic!("unexpected dispatch result: {other:?}"),
    }
}

fn bench_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("exit_dispatch");
    g.throughput(Throughput::Elements(1));
    let mut m = machine();
    let sync_arg = (SYNC_BLOCK as u32).to_le_bytes();
    g.bench_function("sync_call", |b| {
        b.iter(|| {
            expect_continue(m.handle(VmExit::IoOut {
                port: abi::PORT_SYNC,
                data: black_box(&sync_arg),
            }))
        })
    });
    let console_arg = (CONSOLE_DESC as u32).to_le_bytes();
    g.bench_function("console_write", |b| {
        b.iter(|| {
            expect_continue(m.handle(VmExit::IoOut {
                port: abi::PORT_CONSOLE,
                data: black_box(&console_arg),
            }))
        })
    });
    let mut word = [0u8; 4];
    g.bench_function("mmio_read", |b| {
        b.iter(|| {
            expect_continue(m.handle(VmExit::MmioRead {
                addr: abi::MMIO_NET,
                data: black_box(&mut word),
            }))
        })
    });
    g.bench_function("host_interrupt", |b| {
        b.iter(|| expect_continue(m.handle(black_box(VmExit::Interrupted))))
    });
    g.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_dispatch
}
criterion_main!(benches);
