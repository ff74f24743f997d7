//! Live clone of a running VM (the paper's §3.1 restart of redundancy by a
//! modified VMotion): the state a new backup needs to continue in
//! deterministic lockstep from an exit boundary, its versioned wire format,
//! the dirty-page pre-copy of guest memory, and the joiner's restore.
//! docs/join.md is the design; this module is the mechanism, with no
//! knowledge of the FT pair (the channel, the arbiter) above it.
//!
//! * [`wire`]: framing and bounds-checked reading of the join stream.
//! * [`vcpu`]: registers, sregs, FPU/SSE and MSRs.
//! * [`devices`]: the virtio transports and their queues.
//! * [`memory`]: pre-copy rounds, the final pass, applying pages.
//! * [`stream`]: the messages in order, on both sides.

pub mod devices;
pub mod memory;
pub mod stream;
pub mod vcpu;
pub mod wire;

pub use devices::DevicesState;
pub use vcpu::VcpuState;

use wire::{Reader, Writer};

/// Version of the join stream (`Hello.version` and `State.version`).
pub const VERSION: u16 = 2;

/// Why a clone could not be taken, sent, received or restored.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("{what} ends at byte {at} of {len}: truncated")]
    Short {
        what: &'static str,
        at: usize,
        len: usize,
    },
    #[error("{what}: {why}")]
    Bad { what: &'static str, why: String },
    #[error("a join message of {len} bytes is longer than the limit of {max}")]
    TooLong { len: u64, max: u64 },
    #[error("KVM ioctl {what} failed")]
    Kvm {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("guest page {0} cannot be read or written")]
    Memory(u64),
    #[error("{0} disk requests are in flight: not a join point")]
    InFlight(usize),
    #[error("restoring a device")]
    Restore(#[source] crate::devices::virtio_mmio::RestoreError),
    #[error("the join stream broke")]
    Io(#[source] std::io::Error),
    #[error("the primary gave the join up: {0}")]
    Aborted(String),
    #[error(
        "the joiner cannot follow this guest: {0} (the backup must run the same kernel with the same memory size and configuration)"
    )]
    Mismatch(String),
    #[error("join protocol: {0}")]
    Protocol(String),
}

/// Who the guest is, as the joiner checks it before taking any page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    pub mem_size: u64,
    pub kernel_hash: u64,
    pub boot_hash: u64,
}

impl Hello {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u16(VERSION)
            .u16(0)
            .u32(memory::PAGE as u32)
            .u64(self.mem_size)
            .u64(self.kernel_hash)
            .u64(self.boot_hash);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<Hello, SnapshotError> {
        let mut r = Reader::new(b, "Hello");
        let version = r.u16()?;
        if version != VERSION {
            return Err(SnapshotError::Bad {
                what: "Hello",
                why: format!("join stream version {version} (this build reads {VERSION})"),
            });
        }
        r.reserved(2)?;
        let page = r.u32()?;
        if page as usize != memory::PAGE {
            return Err(SnapshotError::Bad {
                what: "Hello",
                why: format!("page size {page}"),
            });
        }
        let h = Hello {
            mem_size: r.u64()?,
            kernel_hash: r.u64()?,
            boot_hash: r.u64()?,
        };
        r.finish()?;
        Ok(h)
    }

    /// Every field that differs, with both values; `Ok` if none.
    pub fn check(&self, ours: &Hello) -> Result<(), SnapshotError> {
        let mut diff = Vec::new();
        if self.mem_size != ours.mem_size {
            diff.push(format!(
                "memory {} MiB (the joiner has {} MiB)",
                self.mem_size >> 20,
                ours.mem_size >> 20
            ));
        }
        if self.kernel_hash != ours.kernel_hash {
            diff.push(format!(
                "kernel {:016x} (the joiner's is {:016x})",
                self.kernel_hash, ours.kernel_hash
            ));
        }
        if self.boot_hash != ours.boot_hash {
            diff.push("boot configuration".into());
        }
        if diff.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Mismatch(diff.join(", ")))
        }
    }
}

/// The machine at the join point, besides memory.
#[derive(Clone, Debug, PartialEq)]
pub struct MachineState {
    /// The exit the state follows: the joiner's next guest exit is
    /// `exit_index + 1`.
    pub exit_index: u64,
    /// Seq of the first log entry after the join point.
    pub first_seq: u64,
    /// The recorder's output running hash at the join point.
    pub output_hash: u64,
    pub vcpu: VcpuState,
    pub devices: DevicesState,
}

impl MachineState {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u16(VERSION)
            .u16(0)
            .u32(0)
            .u64(self.exit_index)
            .u64(self.first_seq)
            .u64(self.output_hash);
        self.vcpu.encode(&mut w);
        self.devices.encode(&mut w);
        w.buf
    }

    pub fn decode(b: &[u8]) -> Result<MachineState, SnapshotError> {
        let mut r = Reader::new(b, "State");
        let version = r.u16()?;
        if version != VERSION {
            return Err(SnapshotError::Bad {
                what: "State",
                why: format!("version {version} (this build reads {VERSION})"),
            });
        }
        r.reserved(6)?;
        let exit_index = r.u64()?;
        let first_seq = r.u64()?;
        if first_seq == 0 {
            return Err(SnapshotError::Bad {
                what: "State",
                why: "first seq 0".into(),
            });
        }
        let output_hash = r.u64()?;
        let vcpu = VcpuState::decode(&mut r)?;
        let devices = DevicesState::decode(&mut r)?;
        r.finish()?;
        Ok(MachineState {
            exit_index,
            first_seq,
            output_hash,
            vcpu,
            devices,
        })
    }
}

/// What a finished copy reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinStats {
    /// Pre-copy rounds while the guest ran (the first is the whole memory).
    pub rounds: u32,
    /// Pages sent in all, zero pages included.
    pub pages: u64,
    /// Pages sent at the pause.
    pub final_pages: u64,
    /// The guest's pause at the join point, in µs.
    pub pause_us: u64,
    /// The whole copy, in ms.
    pub total_ms: u64,
    /// With verification: changed pages the tracking missed (0 expected).
    pub missed: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_mismatches_name_every_difference() {
        let a = Hello {
            mem_size: 64 << 20,
            kernel_hash: 1,
            boot_hash: 2,
        };
        assert_eq!(Hello::decode(&a.encode()).unwrap(), a);
        a.check(&a).unwrap();
        let b = Hello {
            mem_size: 128 << 20,
            kernel_hash: 3,
            ..a
        };
        let e = a.check(&b).unwrap_err().to_string();
        assert!(e.contains("memory 64 MiB (the joiner has 128 MiB)"), "{e}");
        assert!(e.contains("kernel"), "{e}");
        // Another version is refused by name.
        let mut other = a.encode();
        other[0] = 1;
        let e = Hello::decode(&other).unwrap_err().to_string();
        assert!(e.contains("version 1"), "{e}");
        assert!(Hello::decode(&a.encode()[..20]).is_err());
    }
}
