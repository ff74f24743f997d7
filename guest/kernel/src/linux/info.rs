//! Threads, futexes, signals (recorded, never delivered), identity and
//! limits: the process-wide calls with small answers.

use alloc::vec::Vec;

use linux_raw_sys::errno::{EAGAIN, EINVAL, ENOSYS, ESRCH};
use linux_raw_sys::general as g;
use linux_raw_sys::prctl as pr;

/// Not in the UAPI headers the crate is generated from.
const ARCH_GET_FS: u32 = 0x1003;

use super::entry::Frame;
use super::kernel::Kernel;
use super::sched::{self, PID};
use super::{Call, Sys, time, uaccess};

pub fn clone(k: &mut Kernel, c: &Call, frame: &Frame) -> Sys {
    let [flags, stack, ptid, ctid, tls, _] = c.a;
    let thread = u64::from(g::CLONE_VM | g::CLONE_THREAD | g::CLONE_SIGHAND);
    if flags & thread != thread || flags & u64::from(g::CLONE_VFORK) != 0 {
        // fork, vfork, posix_spawn: one process only (documented).
        k.stats.forks_refused += 1;
        return Err(EAGAIN.into());
    }
    let settls = flags & u64::from(g::CLONE_SETTLS) != 0;
    let clear = if flags & u64::from(g::CLONE_CHILD_CLEARTID) != 0 {
        ctid
    } else {
        0
    };
    if settls && tls == 0 {
        return Err(EINVAL.into());
    }
    uaccess::check(stack.saturating_sub(16), 16)?;
    let tid = sched::clone(k, frame, stack, settls.then_some(tls), clear);
    if flags & u64::from(g::CLONE_PARENT_SETTID) != 0 {
        uaccess::put_u32(ptid, tid)?;
    }
    if flags & u64::from(g::CLONE_CHILD_SETTID) != 0 {
        uaccess::put_u32(ctid, tid)?;
    }
    Ok(u64::from(tid))
}

pub fn futex(k: &mut Kernel, c: &Call) -> Sys {
    let [addr, op, val, arg3, addr2, val3] = c.a;
    let cmd = op as u32 & g::FUTEX_CMD_MASK as u32;
    let val32 = val as u32;
    match cmd {
        g::FUTEX_WAIT | g::FUTEX_WAIT_BITSET => {
            let t = time::timespec_timeout(arg3)?;
            let deadline = match (cmd, t) {
                (_, None) => None,
                (g::FUTEX_WAIT, Some(t)) => Some(k.now.saturating_add(t)),
                // An absolute time on CLOCK_MONOTONIC or CLOCK_REALTIME.
                (_, Some(abs)) => {
                    let now = if op as u32 & g::FUTEX_CLOCK_REALTIME != 0 {
                        k.now
                    } else {
                        k.monotonic()
                    };
                    Some(k.now.saturating_add(abs.saturating_sub(now)))
                }
            };
            sched::futex_wait(k, addr, val32, deadline)
        }
        g::FUTEX_WAKE | g::FUTEX_WAKE_BITSET => Ok(sched::wake(k, addr, u64::from(val32))),
        g::FUTEX_REQUEUE | g::FUTEX_CMP_REQUEUE => {
            if cmd == g::FUTEX_CMP_REQUEUE && uaccess::get_u32(addr)? != val3 as u32 {
                return Err(EAGAIN.into());
            }
            uaccess::check(addr2, 4)?;
            Ok(sched::requeue(
                k,
                addr,
                u64::from(val32),
                addr2,
                u64::from(arg3 as u32),
            ))
        }
        _ => {
            k.stats
                .unsupported(u64::from(g::__NR_futex), &mut k.console);
            Err(ENOSYS.into())
        }
    }
}

pub fn set_tid_address(k: &mut Kernel, addr: u64) -> Sys {
    if let Some(t) = k.threads.current() {
        t.clear_tid = addr;
    }
    Ok(u64::from(k.threads.cur))
}

/// A signal the app sends itself: ignored if it ignores it, otherwise its
/// default action ends the app (no handler ever runs).
pub fn kill(k: &mut Kernel, c: &Call) -> Sys {
    let (target, sig) = if c.nr == u64::from(g::__NR_tgkill) {
        (c.a[1], c.a[2])
    } else {
        (c.a[0], c.a[1])
    };
    let me = target == u64::from(PID)
        || target == 0
        || (target as i64) == -1
        || target == u64::from(k.threads.cur);
    if !me {
        return Err(ESRCH.into());
    }
    if sig == 0 {
        return Ok(0);
    }
    if sig > 64 {
        return Err(EINVAL.into());
    }
    let handler = u64::from_le_bytes(
        k.sigactions[sig as usize - 1][..8]
            .try_into()
            .unwrap_or_default(),
    );
    let ignored_by_default =
        [g::SIGCHLD, g::SIGURG, g::SIGWINCH, g::SIGCONT].contains(&(sig as u32));
    if handler == 1 || (handler == 0 && ignored_by_default) {
        return Ok(0);
    }
    k.say(format_args!(
        "linux: the app raised signal {sig}; no signal is delivered here, so it ends"
    ));
    k.shutdown(128 + sig as u32)
}

pub fn getaffinity(size: u64, mask: u64) -> Sys {
    if size < 8 {
        return Err(EINVAL.into());
    }
    uaccess::put_u64(mask, 1)?;
    Ok(8)
}

pub fn uname(buf: u64) -> Sys {
    let mut b = [0u8; 390];
    for (i, s) in [
        "Linux",
        "lockstep",
        "6.1.0-lockstep",
        "#1 SMP lockstep Linux personality",
        "x86_64",
        "(none)",
    ]
    .iter()
    .enumerate()
    {
        b[i * 65..i * 65 + s.len()].copy_from_slice(s.as_bytes());
    }
    uaccess::put(buf, &b)?;
    Ok(0)
}

pub fn sysinfo(k: &mut Kernel, buf: u64) -> Sys {
    let mut b = [0u8; 112];
    let put = |b: &mut [u8; 112], o: usize, v: u64| b[o..o + 8].copy_from_slice(&v.to_le_bytes());
    put(&mut b, 0, k.monotonic() / 1_000_000_000);
    put(&mut b, 32, k.mem_size);
    put(&mut b, 40, k.mem_size.saturating_sub(k.space.mapped()) / 2);
    b[80..82].copy_from_slice(&(k.threads.count() as u16).to_le_bytes());
    b[104..108].copy_from_slice(&1u32.to_le_bytes());
    uaccess::put(buf, &b)?;
    Ok(0)
}

pub fn prlimit(pid: u64, resource: u64, _new: u64, old: u64) -> Sys {
    if pid != 0 && pid != u64::from(PID) {
        return Err(ESRCH.into());
    }
    let (cur, max) = match resource as u32 {
        g::RLIMIT_NOFILE => (super::fd::MAX_FDS as u64, super::fd::MAX_FDS as u64),
        g::RLIMIT_STACK => (8 << 20, u64::MAX),
        g::RLIMIT_NPROC => (1, 1),
        r if r < g::RLIM_NLIMITS => (u64::MAX, u64::MAX),
        _ => return Err(EINVAL.into()),
    };
    if old != 0 {
        uaccess::put_u64(old, cur)?;
        uaccess::put_u64(old + 8, max)?;
    }
    Ok(0)
}

pub fn getrusage(k: &mut Kernel, buf: u64) -> Sys {
    let mut b = [0u8; 144];
    let t = k.monotonic() - 1_000_000_000;
    b[..8].copy_from_slice(&(t / 1_000_000_000).to_le_bytes());
    b[8..16].copy_from_slice(&((t % 1_000_000_000) / 1000).to_le_bytes());
    b[32..40].copy_from_slice(&(k.space.mapped() / 1024).to_le_bytes());
    uaccess::put(buf, &b)?;
    Ok(0)
}

pub fn times(k: &mut Kernel, buf: u64) -> Sys {
    let ticks = k.monotonic() / 10_000_000;
    if buf != 0 {
        let mut b = [0u8; 32];
        b[..8].copy_from_slice(&ticks.to_le_bytes());
        uaccess::put(buf, &b)?;
    }
    Ok(ticks)
}

pub fn umask(k: &mut Kernel, mask: u64) -> Sys {
    let old = k.umask;
    k.umask = mask as u32 & 0o777;
    Ok(u64::from(old))
}

pub fn getres(a: u64, b: u64, c: u64) -> Sys {
    for p in [a, b, c] {
        uaccess::put_u32(p, 0)?;
    }
    Ok(0)
}

pub fn arch_prctl(k: &mut Kernel, code: u64, addr: u64) -> Sys {
    match code as u32 {
        g::ARCH_SET_FS => {
            k.threads.set_fs(addr);
            Ok(0)
        }
        ARCH_GET_FS => {
            uaccess::put_u64(addr, k.threads.fs())?;
            Ok(0)
        }
        _ => Err(EINVAL.into()),
    }
}

pub fn prctl(k: &mut Kernel, option: u64, arg: u64) -> Sys {
    match option as u32 {
        pr::PR_SET_NAME
        | pr::PR_SET_DUMPABLE
        | pr::PR_SET_NO_NEW_PRIVS
        | pr::PR_SET_PDEATHSIG
        | pr::PR_SET_TIMERSLACK
        | pr::PR_SET_KEEPCAPS
        | pr::PR_SET_THP_DISABLE => Ok(0),
        pr::PR_GET_DUMPABLE => Ok(1),
        pr::PR_GET_NAME => {
            let mut b = [0u8; 16];
            let n = k.name.len().min(15);
            b[..n].copy_from_slice(&k.name[..n]);
            uaccess::put(arg, &b)?;
            Ok(0)
        }
        _ => Err(EINVAL.into()),
    }
}

pub fn sigaction(k: &mut Kernel, sig: u64, act: u64, old: u64, size: u64) -> Sys {
    if sig == 0 || sig > 64 || size != 8 {
        return Err(EINVAL.into());
    }
    let i = sig as usize - 1;
    if act != 0 && (sig == u64::from(g::SIGKILL) || sig == u64::from(g::SIGSTOP)) {
        return Err(EINVAL.into());
    }
    if old != 0 {
        uaccess::put(old, &k.sigactions[i])?;
    }
    if act != 0 {
        k.sigactions[i].copy_from_slice(uaccess::slice(act, 32)?);
    }
    Ok(0)
}

pub fn sigprocmask(k: &mut Kernel, how: u64, set: u64, old: u64, size: u64) -> Sys {
    if size != 8 {
        return Err(EINVAL.into());
    }
    let new = if set != 0 {
        Some(uaccess::get_u64(set)?)
    } else {
        None
    };
    let Some(t) = k.threads.current() else {
        return Ok(0);
    };
    if old != 0 {
        uaccess::put_u64(old, t.sigmask)?;
    }
    if let Some(s) = new {
        t.sigmask = match how as u32 {
            g::SIG_BLOCK => t.sigmask | s,
            g::SIG_UNBLOCK => t.sigmask & !s,
            g::SIG_SETMASK => s,
            _ => return Err(EINVAL.into()),
        };
    }
    Ok(0)
}

pub fn sigaltstack(old: u64) -> Sys {
    if old != 0 {
        let mut b: Vec<u8> = alloc::vec![0u8; 24];
        b[8..12].copy_from_slice(&g::SS_DISABLE.to_le_bytes());
        uaccess::put(old, &b)?;
    }
    Ok(0)
}

pub fn itimer(old: u64) -> Sys {
    if old != 0 {
        uaccess::put(old, &[0u8; 32])?;
    }
    Ok(0)
}
