//! `workload=idle`: only waiting sync calls with deadlines, for
//! `duration_ms` of virtual time, waking every `tick_ms` (a timer-driven
//! idle guest: each deadline is computed from the time the last call
//! returned).

use lockstep_guest_abi::EV_STOP;

use crate::{ports, say};

/// Waits `duration_ms` in ticks of `tick_ms`, prints and exits 0.
pub fn run(duration_ms: u64, tick_ms: u64, start: u64) -> ! {
    let tick = tick_ms.max(1).saturating_mul(1_000_000);
    let end = start.saturating_add(duration_ms.saturating_mul(1_000_000));
    let mut now = start;
    let mut calls = 0u64;
    while now < end {
        let r = ports::sync(true, end.min(now.saturating_add(tick)));
        calls += 1;
        now = now.max(r.now_ns);
        if r.events & EV_STOP != 0 {
            say!(
                "idle: stopped by the host after {} ms ({calls} sync calls)",
                (now - start) / 1_000_000
            );
            ports::exit(0);
        }
    }
    say!(
        "idle: done after {} ms ({calls} sync calls)",
        (now - start) / 1_000_000
    );
    ports::exit(0)
}
