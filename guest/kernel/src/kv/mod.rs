//! The key-value workload: recovery, then RESP on 6379 and HTTP on 80 over
//! smoltcp, with every write durable before its reply leaves; and an
//! iperf3-compatible throughput server on 5201 (`iperf.rs`).
//!
//! One loop iteration = one sync call:
//! sync → disk completions (→ batches durable) → TX reap/RX refill →
//! smoltcp poll → serve sockets (parse, execute, release replies) →
//! smoltcp poll (replies become frames) → submit the next group commit →
//! next sync, waiting (deadline = smoltcp's next timer, ≤ 1 s) unless
//! work is left over.

mod boot;
mod iperf;
mod server;

use alloc::vec;
use alloc::vec::Vec;

use lockstep_guest_abi::EV_STOP;
use smoltcp::iface::SocketSet;
use smoltcp::time::Duration;

use crate::blk::Disk;
use crate::cmdline::Settings;
use crate::net::{self, Net, instant};
use crate::{ports, say};

/// Longest WAIT of one sync call.
const MAX_WAIT_NS: u64 = 1_000_000_000;
/// Exit status when the disk log fails (fail-stop: no reply can be made
/// durable any more).
const DISK_FAILED: u32 = 3;

/// Share of the heap the live data may take: the store's own overhead, a
/// compaction snapshot and the connections need the rest.
const MEMORY_SHARE: u64 = 4;
/// Share of the heap all connections' buffers together may take.
const CONNECTION_SHARE: u64 = 4;

/// Runs the service until the host asks the guest to stop.
pub fn run(
    s: &Settings,
    seed: u64,
    heap_bytes: u64,
    net: Option<Net>,
    mut disk: Option<Disk>,
    now0: u64,
) -> ! {
    let mut now = now0;
    let mut engine = boot::open(disk.as_mut(), &mut now);
    engine.set_memory_limit(heap_bytes / MEMORY_SHARE);

    let Some(mut net) = net else {
        say!("kv: no network device: nothing to serve; waiting for the host to stop");
        loop {
            let r = ports::sync(true, now + MAX_WAIT_NS);
            now = now.max(r.now_ns);
            if r.events & EV_STOP != 0 {
                say!("kv: stopped: {} keys", engine.store.len());
                ports::exit(0);
            }
        }
    };

    let mut iface = net::interface(&mut net, s, seed, now);
    let mut sockets = SocketSet::new(vec![]);
    let mut server = server::Server::new(&mut sockets, (heap_bytes / CONNECTION_SHARE) as usize);
    let mut perf = iperf::Service::new(&mut sockets);
    say!(
        "kv: serving RESP on {}:{} and HTTP on :{}",
        s.ip,
        lockstep_guest_services::limits::RESP_PORT,
        lockstep_guest_services::limits::HTTP_PORT
    );

    let mut done = Vec::new();
    let mut busy = false;
    let mut stopping = false;
    let mut flushed = 0u32;
    loop {
        let delay = iface.poll_delay(instant(now), &sockets);
        let wait = !busy && delay != Some(Duration::ZERO) && !net.rx_pending();
        let wait_ns = delay.map_or(MAX_WAIT_NS, |d| d.total_micros().saturating_mul(1000));
        let r = ports::sync(wait, now + wait_ns.min(MAX_WAIT_NS));
        now = now.max(r.now_ns);
        stopping |= r.events & EV_STOP != 0;
        engine.tick(now);

        if let Some(d) = disk.as_mut() {
            d.reap(&mut done);
            for x in done.drain(..) {
                engine.write_done(x.ok);
            }
        }
        if engine.failed() {
            say!("kv: a disk write failed: stopping (replies of unwritten data were never sent)");
            ports::exit(DISK_FAILED);
        }

        let ts = instant(now);
        net.maintain();
        iface.poll(ts, &mut net, &mut sockets);
        let turn = server.service(&mut engine, &mut sockets, !stopping);
        busy = turn.more | perf.service(&mut sockets, now);

        if let Some(d) = disk.as_mut()
            && let Some(w) = engine.next_write()
        {
            d.write(w.sector, w.data, 0);
        }
        if engine.failed() {
            say!("kv: the disk log cannot take the data: stopping");
            ports::exit(DISK_FAILED);
        }
        iface.poll(ts, &mut net, &mut sockets);
        net.maintain();

        if stopping && !engine.has_pending_writes() {
            // Everything is durable and released; give the last replies
            // two more iterations to become frames the VMM takes.
            flushed += 1;
            busy = true;
            if flushed > 2 {
                say!(
                    "kv: stopped: {} keys, durable batch {} ({} connections open)",
                    engine.store.len(),
                    engine.durable(),
                    server.connections()
                );
                ports::exit(0);
            }
        }
    }
}
