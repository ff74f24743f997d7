//! A tap interface: layer-2 frames, no packet-info prefix, no vnet header
//! (the device offers no offloads, so the kernel hands us plain frames).

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

/// Longest interface name (`IFNAMSIZ` - 1).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;
const TUN_PATH: &str = "/dev/net/tun";

/// Why a tap could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// `/dev/net/tun` is missing or its driver is not loaded.
    #[error("/dev/net/tun is not available (is the tun module loaded? try `modprobe tun`)")]
    TunMissing(#[source] io::Error),
    /// The process may not use tun/tap.
    #[error(
        "no permission to open tap {name}: needs CAP_NET_ADMIN (run as root), or a persistent tap owned by this user (`ip tuntap add {name} mode tap user $USER`)"
    )]
    NoPermission {
        /// The interface name.
        name: String,
        /// The error the kernel gave.
        #[source]
        source: io::Error,
    },
    /// Another process has the tap open.
    #[error("tap {0} is in use by another process")]
    Busy(String),
    /// The name belongs to an interface that is not a single-queue tap.
    #[error("interface {name} exists and is {kind}, not a tap")]
    NotATap {
        /// The interface name.
        name: String,
        /// What it is.
        kind: &'static str,
    },
    /// The name is longer than `IFNAMSIZ - 1`.
    #[error("interface name {0:?} is longer than 15 bytes")]
    NameTooLong(String),
    /// The name is empty or has characters Linux refuses.
    #[error(
        "interface name {0:?} is not valid (empty, '.', '..', or contains '/', ':', '%' or whitespace)"
    )]
    InvalidName(String),
    /// The link could not be brought up.
    #[error("cannot bring tap {name} up (run `ip link set {name} up`)")]
    LinkUp {
        /// The interface name.
        name: String,
        /// The ioctl error.
        #[source]
        source: io::Error,
    },
    /// Any other failure.
    #[error("tap {name}: {what}")]
    Io {
        /// The interface name.
        name: String,
        /// What was being done.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    created: bool,
}

fn validate_name(name: &str) -> Result<(), TapError> {
    if name.len() > MAX_NAME_LEN {
        return Err(TapError::NameTooLong(name.to_string()));
    }
    let bad = name.is_empty()
        || name == "."
        || name == ".."
        || name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b == b'%' || !b.is_ascii_graphic());
    if bad {
        return Err(TapError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// An `ifreq` with `name` filled in. `name` has been validated: ASCII and
/// at most `MAX_NAME_LEN` bytes, so it fits with its NUL.
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: `ifreq` is plain old data (arrays and a union of integers and
    // pointers); all-zero is a valid value of it.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    r
}

/// `struct ethtool_drvinfo` (linux/ethtool.h).
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}
const ETHTOOL_GDRVINFO: u32 = 3;
const ARPHRD_ETHER: u16 = 1;

/// What kind of interface `name` is, for a TUNSETIFF `EINVAL`. Asks the
/// kernel through ioctls (driver name, hardware type) rather than sysfs,
/// which shows the namespace it was mounted in, not the caller's.
fn classify(name: &str) -> &'static str {
    let Ok(sock) = ioctl_socket(name) else {
        return "not a single-queue tap";
    };
    // SAFETY: plain old data; all-zero is valid.
    let mut info: EthtoolDrvinfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO fills the drvinfo struct
    // that `ifru_data` points to; `info` outlives the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    let driver = info.driver.split(|b| *b == 0).next().unwrap_or(&[]);
    if rc < 0 || driver != b"tun" {
        return "not a tun/tap interface";
    }
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFHWADDR fills `ifru_hwaddr` of the `ifreq` we pass.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return "a tun/tap interface of unknown kind";
    }
    // SAFETY: SIOCGIFHWADDR succeeded, so the union holds `ifru_hwaddr`.
    let family = unsafe { req.ifr_ifru.ifru_hwaddr.sa_family };
    if family == ARPHRD_ETHER {
        "a multi-queue tap"
    } else {
        "a tun (layer 3) interface"
    }
}

/// An `AF_INET` datagram socket for the interface ioctls.
fn ioctl_socket(name: &str) -> Result<OwnedFd, TapError> {
    socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| TapError::Io {
        name: name.to_string(),
        what: "socket for interface ioctls",
        source: e.into(),
    })
}

/// How long "in use" is retried (see [`Tap::open`]).
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

impl Tap {
    /// Opens (attaches to) the tap `name`, creating a non-persistent one if
    /// no interface has that name, in the calling thread's network
    /// namespace. The descriptor is non-blocking. Brings the link up if it
    /// is down.
    ///
    /// A tap whose previous user has just exited may still be attached for
    /// a moment: the kernel tears a dead process's io_uring down in the
    /// background, and the ring keeps its files until then. "In use" is
    /// therefore retried for up to a second before it is reported.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        let deadline = std::time::Instant::now() + BUSY_RETRY;
        loop {
            match Self::open_once(name) {
                Err(TapError::Busy(_)) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    fn open_once(name: &str) -> Result<Tap, TapError> {
        validate_name(name)?;
        let existed = nix::net::if_::if_nametoindex(name).is_ok();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(TUN_PATH)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO) => TapError::TunMissing(e),
                Some(libc::EACCES | libc::EPERM) => TapError::NoPermission {
                    name: name.to_string(),
                    source: e,
                },
                _ => TapError::Io {
                    name: name.to_string(),
                    what: "open /dev/net/tun",
                    source: e,
                },
            })?;
        let mut req = ifreq(name);
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF reads and writes one `ifreq`, which `req` is; the
        // fd is the tun control device we just opened.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            let name = name.to_string();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM | libc::EACCES) => TapError::NoPermission { name, source: e },
                Some(libc::EBUSY) => TapError::Busy(name),
                Some(libc::EINVAL) if existed => {
                    let kind = classify(&name);
                    TapError::NotATap { name, kind }
                }
                _ => TapError::Io {
                    name,
                    what: "TUNSETIFF",
                    source: e,
                },
            });
        }
        // SAFETY: the kernel NUL-terminates `ifr_name` within IFNAMSIZ bytes.
        let actual = unsafe { CStr::from_ptr(req.ifr_name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let tap = Tap {
            file,
            name: actual,
            created: !existed,
        };
        tap.bring_up()?;
        Ok(tap)
    }

    /// The interface flags (`SIOCGIFFLAGS`), asked through `sock`.
    fn flags(&self, sock: &OwnedFd) -> Result<libc::c_short, TapError> {
        let mut req = ifreq(&self.name);
        // SAFETY: SIOCGIFFLAGS fills `ifr_flags` of the `ifreq` we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Io {
                name: self.name.clone(),
                what: "SIOCGIFFLAGS",
                source,
            });
        }
        // SAFETY: SIOCGIFFLAGS succeeded, so the union holds `ifru_flags`.
        Ok(unsafe { req.ifr_ifru.ifru_flags })
    }

    fn bring_up(&self) -> Result<(), TapError> {
        let sock = ioctl_socket(&self.name)?;
        let flags = self.flags(&sock)?;
        if flags & libc::IFF_UP as libc::c_short != 0 {
            return Ok(());
        }
        let mut req = ifreq(&self.name);
        req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
        // SAFETY: SIOCSIFFLAGS reads the `ifreq` we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::LinkUp {
                name: self.name.clone(),
                source,
            });
        }
        Ok(())
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True if `open` created the interface (it disappears when the tap is
    /// closed); false if it attached to an existing (persistent) tap.
    pub fn created(&self) -> bool {
        self.created
    }

    /// The interface MTU.
    pub fn mtu(&self) -> Result<u32, TapError> {
        let sock = ioctl_socket(&self.name)?;
        let mut req = ifreq(&self.name);
        // SAFETY: SIOCGIFMTU fills `ifr_mtu` of the `ifreq` we pass.
        if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) } < 0 {
            let source = io::Error::last_os_error();
            return Err(TapError::Io {
                name: self.name.clone(),
                what: "SIOCGIFMTU",
                source,
            });
        }
        // SAFETY: SIOCGIFMTU succeeded, so the union holds `ifru_mtu`.
        Ok(unsafe { req.ifr_ifru.ifru_mtu }.max(0) as u32)
    }

    /// True if the link is administratively up.
    pub fn link_up(&self) -> Result<bool, TapError> {
        let sock = ioctl_socket(&self.name)?;
        Ok(self.flags(&sock)? & libc::IFF_UP as libc::c_short != 0)
    }

    /// Sets or clears `O_NONBLOCK` on the descriptor.
    pub fn set_nonblocking(&self, on: bool) -> Result<(), TapError> {
        let err = |e: nix::Error| TapError::Io {
            name: self.name.clone(),
            what: "fcntl O_NONBLOCK",
            source: e.into(),
        };
        let flags = OFlag::from_bits_truncate(fcntl(&self.file, FcntlArg::F_GETFL).map_err(err)?);
        let flags = if on {
            flags | OFlag::O_NONBLOCK
        } else {
            flags - OFlag::O_NONBLOCK
        };
        fcntl(&self.file, FcntlArg::F_SETFL(flags)).map_err(err)?;
        Ok(())
    }

    /// The open tap file (frames are read and written on it).
    pub fn file(&self) -> &File {
        &self.file
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked_before_the_kernel_sees_them() {
        assert!(matches!(
            validate_name("a-very-long-tap-name"),
            Err(TapError::NameTooLong(_))
        ));
        for bad in ["", ".", "..", "a/b", "a:b", "tap%d", "a b"] {
            assert!(
                matches!(validate_name(bad), Err(TapError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(validate_name("tap0").is_ok());
        assert!(validate_name("exactly15bytes_").is_ok());
    }
}
