//! The guest's configuration: everything a VM that replays this one must
//! share with it (memory, command line, seed, devices). It travels in the
//! log's `Boot` entry, and its hash is part of the stream header's guest
//! identity, so a log is never replayed against another configuration.

use blkio::{BlkConfig, BlkDevice};
use logchan::GuestIdentity;
use netio::NetDevice;

use crate::devices::virtio::Devices;
use crate::kvm::vm::{Vm, VmConfig, VmError};

/// Version of the `Boot` entry encoding below.
const ENCODING_VERSION: u16 = 1;
const FLAG_NET: u32 = 1 << 0;
const FLAG_DISK_RO: u32 = 1 << 1;
const FIXED_LEN: usize = 40;

/// The disk serial the guest sees.
pub const DISK_SERIAL: &[u8; 20] = b"lockstep-disk\0\0\0\0\0\0\0";

/// The guest configuration (the kernel is identified by its hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestSpec {
    pub mem_size: u64,
    pub cmdline: String,
    pub seed: u64,
    pub mac: Option<[u8; 6]>,
    pub disk_sectors: u64,
    pub disk_read_only: bool,
}

/// Why a `Boot` entry could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("boot configuration of {0} bytes is too short")]
    Short(usize),
    #[error("boot configuration encoding version {0} is not supported (this build reads 1)")]
    Version(u16),
    #[error("boot configuration has unknown flags {0:#x}")]
    Flags(u32),
    #[error("boot configuration command line is not UTF-8 or has the wrong length")]
    Cmdline,
}

impl GuestSpec {
    /// The `Boot` entry's bytes:
    /// `version u16, reserved u16, flags u32, mem_size u64, seed u64,
    /// disk_sectors u64, mac [u8; 6], cmdline_len u16, cmdline`.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(FIXED_LEN + self.cmdline.len());
        out.extend_from_slice(&ENCODING_VERSION.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        let flags = if self.mac.is_some() { FLAG_NET } else { 0 }
            | if self.disk_read_only { FLAG_DISK_RO } else { 0 };
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&self.mem_size.to_le_bytes());
        out.extend_from_slice(&self.seed.to_le_bytes());
        out.extend_from_slice(&self.disk_sectors.to_le_bytes());
        out.extend_from_slice(&self.mac.unwrap_or_default());
        out.extend_from_slice(&(self.cmdline.len() as u16).to_le_bytes());
        out.extend_from_slice(self.cmdline.as_bytes());
        out
    }

    pub fn decode(b: &[u8]) -> Result<GuestSpec, SpecError> {
        if b.len() < FIXED_LEN {
            return Err(SpecError::Short(b.len()));
        }
        let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap_or_default());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
        let version = u16_at(0);
        if version != ENCODING_VERSION {
            return Err(SpecError::Version(version));
        }
        let flags = u32_at(4);
        if flags & !(FLAG_NET | FLAG_DISK_RO) != 0 {
            return Err(SpecError::Flags(flags));
        }
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&b[32..38]);
        let len = u16_at(38) as usize;
        let cmdline = b
            .get(FIXED_LEN..)
            .filter(|c| c.len() == len)
            .and_then(|c| std::str::from_utf8(c).ok())
            .ok_or(SpecError::Cmdline)?;
        Ok(GuestSpec {
            mem_size: u64_at(8),
            seed: u64_at(16),
            disk_sectors: u64_at(24),
            mac: (flags & FLAG_NET != 0).then_some(mac),
            disk_read_only: flags & FLAG_DISK_RO != 0,
            cmdline: cmdline.to_string(),
        })
    }

    /// The guest's IPv4 address from its command line (`ip=A.B.C.D/P`).
    pub fn guest_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.cmdline
            .split_whitespace()
            .find_map(|w| w.strip_prefix("ip="))
            .and_then(|v| v.split('/').next())
            .and_then(|a| a.parse().ok())
    }

    /// The identity a log of this guest carries in its header.
    pub fn identity(&self, kernel: &[u8]) -> GuestIdentity {
        GuestIdentity {
            kernel_hash: logchan::content_hash(kernel),
            boot_hash: logchan::content_hash(&self.encode()),
            mem_size: self.mem_size,
        }
    }

    /// Fresh device models for this guest.
    pub fn devices(&self) -> Devices {
        let net = self.mac.map(NetDevice::new);
        let blk = BlkDevice::new(BlkConfig {
            capacity_sectors: self.disk_sectors,
            read_only: self.disk_read_only,
            serial: *DISK_SERIAL,
        });
        Devices::new(net, Some(blk))
    }

    /// The VM, booted to its first instruction.
    pub fn build_vm(&self, kernel: &[u8]) -> Result<Vm, VmError> {
        Vm::new(&VmConfig {
            mem_size: self.mem_size,
            kernel,
            cmdline: self.cmdline.clone(),
            seed: self.seed,
            net: self.mac.is_some(),
            blk: true,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_entry_roundtrips_and_refuses_garbage() {
        let spec = GuestSpec {
            mem_size: 256 << 20,
            cmdline: "workload=kv ip=10.77.0.2/24".into(),
            seed: 0xdead_beef,
            mac: Some([0x52, 0x54, 0, 1, 2, 3]),
            disk_sectors: 131_072,
            disk_read_only: false,
        };
        let bytes = spec.encode();
        assert_eq!(GuestSpec::decode(&bytes).unwrap(), spec);
        let no_net = GuestSpec {
            mac: None,
            ..spec.clone()
        };
        assert_eq!(GuestSpec::decode(&no_net.encode()).unwrap(), no_net);
        assert!(matches!(
            GuestSpec::decode(&bytes[..10]),
            Err(SpecError::Short(10))
        ));
        let mut v2 = bytes.clone();
        v2[0] = 2;
        assert!(matches!(GuestSpec::decode(&v2), Err(SpecError::Version(2))));
        let mut cut = bytes.clone();
        cut.pop();
        assert!(matches!(GuestSpec::decode(&cut), Err(SpecError::Cmdline)));
        let other = GuestSpec {
            seed: 1,
            ..spec.clone()
        };
        assert_ne!(
            spec.identity(b"k").boot_hash,
            other.identity(b"k").boot_hash
        );
        assert_ne!(
            spec.identity(b"k").kernel_hash,
            spec.identity(b"j").kernel_hash
        );
    }
}
