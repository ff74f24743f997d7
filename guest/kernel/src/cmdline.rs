//! The command line (`key=value` words in BootParams) and its keys:
//!
//! | key | meaning | default |
//! |---|---|---|
//! | `workload` | `kv`, `compute`, `disk`, `idle`, `hostile`, `app` | `kv` |
//! | `app` | app: CRC-32C (hex) the app on the disk must have | any |
//! | `ip` | address/prefix of the guest | `10.77.0.2/24` |
//! | `gw` | default IPv4 gateway | none |
//! | `iters` | compute: millions of steps | `100` |
//! | `ops` | disk: operations | `1000` |
//! | `inflight` | disk: operations in flight (1..=4) | `4` |
//! | `race` | disk: rounds of two racing writes to one block first | `0` |
//! | `duration_ms` | idle, hostile: how long | `1000` |
//! | `tick_ms` | idle: wake-up period | `10` |
//! | `vdso` | app: `0` leaves the personality's vDSO out | on |
//! | `syscalls` | app: `trap` (read by the VMM, not here) installs the app with its `syscall`s unchanged | rewritten |

use lockstep_guest_abi::BootParams;
use lockstep_guest_services::intfmt::parse_usize;
use smoltcp::wire::{IpCidr, Ipv4Address};

/// Which program the guest runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    Kv,
    Compute,
    Disk,
    Idle,
    /// Misuses the devices (broken RX chains, a reset with I/O in flight).
    Hostile,
    /// The Linux personality runs the app on the disk.
    App,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Kv => "kv",
            Workload::Compute => "compute",
            Workload::Disk => "disk",
            Workload::Idle => "idle",
            Workload::Hostile => "hostile",
            Workload::App => "app",
        }
    }
}

/// Parsed settings.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    pub workload: Workload,
    pub ip: Ipv4Address,
    pub prefix: u8,
    pub gateway: Option<Ipv4Address>,
    pub iters_millions: u64,
    pub ops: u64,
    pub inflight: usize,
    pub race: u64,
    pub duration_ms: u64,
    pub tick_ms: u64,
}

/// A decimal number of at most 19 digits (so it cannot overflow).
fn parse_u64(s: &[u8]) -> Option<u64> {
    parse_usize(s).map(|v| v as u64)
}

fn parse_ipv4(s: &[u8]) -> Option<Ipv4Address> {
    let mut o = [0u8; 4];
    let mut parts = s.split(|&b| b == b'.');
    for x in &mut o {
        let v = parse_u64(parts.next()?)?;
        *x = u8::try_from(v).ok()?;
    }
    parts.next().is_none().then(|| Ipv4Address::from(o))
}

/// Parses the command line; an unusable value is reported in the error.
pub fn parse(bp: &BootParams) -> Result<Settings, &'static str> {
    let workload = match bp.param("workload") {
        None | Some(b"kv") => Workload::Kv,
        Some(b"compute") => Workload::Compute,
        Some(b"disk") => Workload::Disk,
        Some(b"idle") => Workload::Idle,
        Some(b"hostile") => Workload::Hostile,
        Some(b"app") => Workload::App,
        Some(_) => return Err("workload= must be kv, compute, disk, idle, hostile or app"),
    };
    let (ip, prefix) = match bp.param("ip") {
        None => (Ipv4Address::new(10, 77, 0, 2), 24),
        Some(v) => {
            let slash = v.iter().position(|&b| b == b'/');
            let (a, p) = match slash {
                Some(i) => (&v[..i], parse_u64(&v[i + 1..]).ok_or("bad ip= prefix")?),
                None => (v, 24),
            };
            if p > 32 {
                return Err("bad ip= prefix");
            }
            (parse_ipv4(a).ok_or("bad ip= address")?, p as u8)
        }
    };
    let gateway = match bp.param("gw") {
        None => None,
        Some(v) => Some(parse_ipv4(v).ok_or("bad gw= address")?),
    };
    let num = |k: &str, d: u64| -> Result<u64, &'static str> {
        match bp.param(k) {
            None => Ok(d),
            Some(v) => parse_u64(v).ok_or("a numeric parameter is not a number"),
        }
    };
    Ok(Settings {
        workload,
        ip,
        prefix,
        gateway,
        iters_millions: num("iters", 100)?,
        ops: num("ops", 1000)?,
        inflight: num("inflight", 4)?.clamp(1, 4) as usize,
        race: num("race", 0)?,
        duration_ms: num("duration_ms", 1000)?,
        tick_ms: num("tick_ms", 10)?,
    })
}

impl Settings {
    /// The interface address.
    pub fn cidr(&self) -> IpCidr {
        IpCidr::new(self.ip.into(), self.prefix)
    }
}
