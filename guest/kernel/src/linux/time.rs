//! Time and randomness. The clocks read the virtual time of the last sync
//! call (logged, so a replay reads the same); they do not advance between
//! sync calls, and a thread that polls a clock in a loop gets a sync call
//! every [`super::kernel::SPIN_LIMIT`] reads. `getrandom` and
//! `/dev/urandom` draw from the boot seed.

use linux_raw_sys::errno::{EFAULT, EINVAL};
use linux_raw_sys::general as g;

use super::kernel::Kernel;
use super::{Call, Fail, Sys, Wait, uaccess};

const NS: u64 = 1_000_000_000;

/// Absolute deadline (virtual ns) of a call that waits `timeout`: `None`
/// waits forever. A retry keeps the deadline of its first attempt.
pub fn deadline(k: &Kernel, c: &Call, timeout: Option<u64>) -> Option<u64> {
    match c.deadline {
        Some(u64::MAX) => None,
        Some(d) => Some(d),
        None => timeout.map(|t| k.now.saturating_add(t)),
    }
}

/// The block a call that waits until `deadline` returns.
pub fn block(deadline: Option<u64>) -> Fail {
    Fail::Block(Wait::Retry { deadline })
}

/// A timeout in milliseconds (negative: none).
pub fn ms_timeout(ms: u64) -> Option<u64> {
    let ms = ms as i32;
    (ms >= 0).then(|| ms as u64 * 1_000_000)
}

fn read_ts(addr: u64, unit: u64) -> Result<u64, Fail> {
    let b = uaccess::slice(addr, 16)?;
    let sec = i64::from_le_bytes(b[..8].try_into().map_err(|_| Fail::E(EFAULT))?);
    let sub = i64::from_le_bytes(b[8..].try_into().map_err(|_| Fail::E(EFAULT))?);
    if sec < 0 || sub < 0 || sub as u64 >= NS / unit {
        return Err(EINVAL.into());
    }
    Ok((sec as u64)
        .saturating_mul(NS)
        .saturating_add(sub as u64 * unit))
}

/// A `struct timespec *` timeout (NULL: none).
pub fn timespec_timeout(addr: u64) -> Result<Option<u64>, Fail> {
    if addr == 0 {
        Ok(None)
    } else {
        read_ts(addr, 1).map(Some)
    }
}

/// A `struct timeval *` timeout (NULL: none).
pub fn timeval_timeout(addr: u64) -> Result<Option<u64>, Fail> {
    if addr == 0 {
        Ok(None)
    } else {
        read_ts(addr, 1000).map(Some)
    }
}

fn put_ts(addr: u64, ns: u64, unit: u64) -> Sys {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&(ns / NS).to_le_bytes());
    b[8..].copy_from_slice(&((ns % NS) / unit).to_le_bytes());
    uaccess::put(addr, &b)?;
    Ok(0)
}

/// The reading of clock `id`.
fn clock(k: &Kernel, id: u64) -> Result<u64, Fail> {
    Ok(match id as u32 {
        g::CLOCK_REALTIME | g::CLOCK_REALTIME_COARSE | g::CLOCK_TAI => k.now,
        g::CLOCK_MONOTONIC
        | g::CLOCK_MONOTONIC_RAW
        | g::CLOCK_MONOTONIC_COARSE
        | g::CLOCK_BOOTTIME
        | g::CLOCK_PROCESS_CPUTIME_ID
        | g::CLOCK_THREAD_CPUTIME_ID => k.monotonic(),
        _ => return Err(EINVAL.into()),
    })
}

pub fn clock_gettime(k: &mut Kernel, id: u64, ts: u64) -> Sys {
    let t = clock(k, id)?;
    k.idle_poll();
    put_ts(ts, t, 1)
}

pub fn clock_getres(ts: u64) -> Sys {
    if ts == 0 { Ok(0) } else { put_ts(ts, 1, 1) }
}

pub fn gettimeofday(k: &mut Kernel, tv: u64) -> Sys {
    k.idle_poll();
    if tv == 0 {
        Ok(0)
    } else {
        put_ts(tv, k.now, 1000)
    }
}

pub fn time(k: &mut Kernel, t: u64) -> Sys {
    k.idle_poll();
    let secs = k.now / NS;
    if t != 0 {
        uaccess::put_u64(t, secs)?;
    }
    Ok(secs)
}

pub fn nanosleep(k: &mut Kernel, req: u64, c: &Call) -> Sys {
    let d = deadline(k, c, Some(read_ts(req, 1)?));
    sleep_until(k, d)
}

pub fn clock_nanosleep(k: &mut Kernel, id: u64, flags: u64, req: u64, c: &Call) -> Sys {
    let t = read_ts(req, 1)?;
    let d = if flags & u64::from(g::TIMER_ABSTIME) != 0 {
        // An absolute time on `id`'s scale, converted to virtual time.
        let now = clock(k, id)?;
        deadline(k, c, Some(t.saturating_sub(now)))
    } else {
        deadline(k, c, Some(t))
    };
    sleep_until(k, d)
}

fn sleep_until(k: &mut Kernel, d: Option<u64>) -> Sys {
    match d {
        Some(d) if k.now >= d => {
            k.idle_poll();
            Ok(0)
        }
        _ => Err(block(d)),
    }
}

pub fn getrandom(k: &mut Kernel, buf: u64, len: u64) -> Sys {
    let n = len.min(1 << 25) as usize;
    let out = uaccess::slice_mut(buf, n)?;
    k.rng.fill(out);
    Ok(n as u64)
}
