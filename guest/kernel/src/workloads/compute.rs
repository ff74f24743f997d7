//! `workload=compute`: deterministic CPU-bound integer work (an xorshift
//! state folded through a multiply mix), with a non-waiting sync call about
//! every millisecond of work so host events (EV_STOP) are seen.

use lockstep_guest_abi::EV_STOP;

use crate::{ports, say};

/// Steps between sync calls (roughly a millisecond here).
const SLICE: u64 = 1 << 19;

/// Runs `iters_millions` million steps, prints the result and exits 0.
pub fn run(iters_millions: u64) -> ! {
    let total = iters_millions.saturating_mul(1_000_000);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < total {
        let end = (i + SLICE).min(total);
        while i < end {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            sum = sum.rotate_left(5) ^ x.wrapping_mul(0x2545_F491_4F6C_DD1D);
            i += 1;
        }
        if ports::sync(false, 0).events & EV_STOP != 0 {
            say!("compute: stopped by the host after {i} steps");
            ports::exit(0);
        }
    }
    say!("compute: result={x} checksum=0x{sum:016x}");
    ports::exit(0)
}
