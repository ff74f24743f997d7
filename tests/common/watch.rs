//! Watching a side's outputs from outside the VMM, for the fencing tests:
//! frames it writes into its tap (a packet socket on the tap, in the tap's
//! namespace) and bytes it writes to storage (the kernel's per-process I/O
//! accounting). Neither trusts anything the VMM says.
#![allow(dead_code)]

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use super::in_netns;

/// Frames a VMM writes into a tap: seen by the kernel as received on it.
pub struct TapWatch {
    fd: OwnedFd,
    /// The last frame counted, for a failure message: `(packet type, the
    /// first bytes)`.
    pub last: Option<(u8, Vec<u8>)>,
}

impl TapWatch {
    /// A packet socket on `tap` in namespace `ns`.
    pub fn start(ns: &str, tap: &str) -> TapWatch {
        let tap = tap.to_string();
        let fd = in_netns(ns, move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // Protocol 0: the socket receives nothing until bind(2) names
            // the protocol and the interface. Created with ETH_P_ALL it
            // would take every interface's packets until then, and the
            // logging link's would be counted as the tap's.
            // SAFETY: socket(2) with constant arguments.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    0,
                )
            };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a fresh descriptor we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = CString::new(tap).expect("tap name");
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            assert!(index > 0, "no tap: {}", std::io::Error::last_os_error());
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            // SAFETY: binds our socket to a sockaddr_ll of the right size.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(r, 0, "bind: {}", std::io::Error::last_os_error());
            fd
        });
        TapWatch { fd, last: None }
    }

    /// Frames the VMM wrote since the last call (frames the kernel sent to
    /// the VMM are not counted).
    pub fn take_from_vmm(&mut self) -> usize {
        let mut n = 0;
        let mut buf = [0u8; 2048];
        loop {
            // SAFETY: all-zero is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: reads into our buffer; `from` has `len` bytes.
            let r = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if r < 0 {
                return n;
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                n += 1;
                let len = usize::try_from(r).unwrap_or(0).min(64);
                self.last = Some((from.sll_pkttype, buf[..len].to_vec()));
            }
        }
    }
}

/// Bytes a process (all its threads, io_uring's workers among them) has
/// sent to the block layer, from `/proc/PID/io`: the kernel counts a direct
/// write when it is submitted, so the count taken while the process is
/// stopped and the count taken at its zombie differ only by writes issued
/// in between. (fanotify is no oracle here: it reports an io_uring write
/// from the submitter's task work, so a write done before a SIGSTOP is
/// reported after the SIGCONT.)
pub fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/io: {e}"));
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no write_bytes in /proc/{pid}/io:\n{io}"))
}

/// Waits (up to `timeout`) for child `pid` to exit without reaping it, so
/// its `/proc` entry can still be read. False on timeout.
pub fn wait_zombie(pid: u32, timeout: std::time::Duration) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        // SAFETY: all-zero is a valid siginfo_t for waitid to fill.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid on our own child; WNOWAIT leaves it unreaped.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid,
                &mut info,
                libc::WEXITED | libc::WNOWAIT | libc::WNOHANG,
            )
        };
        // SAFETY: si_pid is set when waitid reported a child.
        if r == 0 && unsafe { info.si_pid() } != 0 {
            return true;
        }
        if std::time::Instant::now() >= end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
