//! The generated part of the namespace: what redis and libc read from
//! /proc, /sys and /dev, made from the personality's own (deterministic)
//! state. Anything else under these prefixes does not exist.

use alloc::format;
use alloc::vec::Vec;

use linux_raw_sys::errno::ENOENT;

use super::Fail;
use super::fd::Kind;
use super::kernel::Kernel;
use super::sched::PID;

fn is(comps: &[Vec<u8>], path: &[&str]) -> bool {
    comps.len() == path.len() && comps.iter().zip(path).all(|(c, p)| c == p.as_bytes())
}

/// `/proc/self/stat`: field 24 is the resident set in pages (redis's
/// `used_memory_rss`), here the app's mapped memory.
fn proc_stat(k: &Kernel) -> Vec<u8> {
    let name = core::str::from_utf8(&k.name).unwrap_or("app");
    let rss_pages = k.space.mapped() / 4096;
    let ticks = k.monotonic() / 10_000_000;
    format!(
        "{PID} ({name}) R 1 {PID} {PID} 0 -1 4194560 0 0 0 0 {ticks} 0 0 0 20 0 {threads} 0 0 {vsize} {rss_pages} \
         18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n",
        threads = k.threads.count(),
        vsize = rss_pages * 4096,
    )
    .into_bytes()
}

/// The description for `comps` if it lies in the generated namespace:
/// `None` for a path on the disk, `Some(Err)` for a missing one.
pub fn open(k: &Kernel, comps: &[Vec<u8>]) -> Option<Result<Kind, Fail>> {
    let top = comps.first()?;
    if top != b"proc" && top != b"sys" && top != b"dev" {
        return None;
    }
    let pid = format!("{PID}");
    let me = |c: &[Vec<u8>], rest: &[&str]| {
        c.len() == rest.len() + 2
            && c[0] == b"proc"
            && (c[1] == b"self" || c[1] == pid.as_bytes())
            && c[2..].iter().zip(rest).all(|(a, b)| a == b.as_bytes())
    };
    let text = |s: &str| Some(Ok(Kind::Synth(s.as_bytes().to_vec())));
    if me(comps, &["stat"]) {
        return Some(Ok(Kind::Synth(proc_stat(k))));
    }
    if me(comps, &["cmdline"]) {
        let mut v = k.name.clone();
        v.push(0);
        return Some(Ok(Kind::Synth(v)));
    }
    if me(comps, &["status"]) {
        let kb = k.space.mapped() / 1024;
        let name = core::str::from_utf8(&k.name).unwrap_or("app");
        return Some(Ok(Kind::Synth(
            format!(
                "Name:\t{name}\nPid:\t{PID}\nVmRSS:\t{kb} kB\nThreads:\t{}\n",
                k.threads.count()
            )
            .into_bytes(),
        )));
    }
    match () {
        _ if is(comps, &["dev", "null"]) => Some(Ok(Kind::Null)),
        _ if is(comps, &["dev", "zero"]) => Some(Ok(Kind::Zero)),
        _ if is(comps, &["dev", "urandom"]) || is(comps, &["dev", "random"]) => {
            Some(Ok(Kind::Random))
        }
        _ if is(comps, &["dev", "stdout"]) || is(comps, &["dev", "stderr"]) => {
            Some(Ok(Kind::Console))
        }
        _ if is(comps, &["proc", "sys", "net", "core", "somaxconn"]) => text("4096\n"),
        _ if is(comps, &["proc", "sys", "vm", "overcommit_memory"]) => text("1\n"),
        _ if is(comps, &["proc", "loadavg"]) => text("0.00 0.00 0.00 1/1 1000\n"),
        _ if is(
            comps,
            &["sys", "kernel", "mm", "transparent_hugepage", "enabled"],
        ) =>
        {
            text("always madvise [never]\n")
        }
        _ if is(
            comps,
            &[
                "sys",
                "devices",
                "system",
                "clocksource",
                "clocksource0",
                "current_clocksource",
            ],
        ) =>
        {
            text("lockstep\n")
        }
        _ => Some(Err(ENOENT.into())),
    }
}
