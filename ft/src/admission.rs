//! Which primary a backup follows (docs/threat-model.md, "the logging
//! link"): only one that proved it holds the pair key gets this far (the
//! channel's handshake), and even then the backup checks what it is asked
//! to run against what it knows itself before it builds anything —
//! the kernel it was given, the disk it opened, the memory, MAC and address
//! its own command line names — and that the run's epoch is the one the
//! arbiter has seen begin. The listener calls [`Admission::judge`] with
//! the primary's attach request; a refusal goes back to that primary as
//! its reason, and the backup keeps waiting for the right one.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use lockstep_vmm::spec::GuestSpec;
use logchan::GuestIdentity;
use logchan::secure::AttachRequest;

use crate::arbiter::Arbiter;

/// What the backup's own command line says about the guest (each `None`:
/// not given, not checked).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expected {
    pub mem_size: Option<u64>,
    pub mac: Option<[u8; 6]>,
    pub guest_ip: Option<Ipv4Addr>,
}

/// Where the backup learns its disk's size.
pub enum DiskCheck {
    /// The image at this path, opened when a primary asks.
    Image(PathBuf),
    /// A known number of sectors (tests).
    Sectors(u64),
}

impl DiskCheck {
    fn sectors(&self) -> Result<u64, String> {
        match self {
            DiskCheck::Sectors(n) => Ok(*n),
            DiskCheck::Image(path) => {
                blkio::DiskImage::open(path, blkio::DiskOpenOptions::default())
                    .map(|i| i.capacity_sectors())
                    .map_err(|e| {
                        format!("this backup cannot open its disk {}: {e}", path.display())
                    })
            }
        }
    }
}

/// The backup's side of the checks.
pub struct Admission {
    /// The kernel this backup would run.
    pub kernel: Vec<u8>,
    /// The disk this backup will open (the primary creates it, so it is
    /// looked at when a primary asks, not before).
    pub disk: DiskCheck,
    pub expected: Expected,
    pub arbiter: Box<dyn Arbiter>,
}

impl Admission {
    /// `Ok` if this backup can and may follow the primary asking; else the
    /// reason, for the primary and the backup's log.
    pub fn judge(&self, a: &AttachRequest) -> Result<GuestSpec, String> {
        let header = &a.header;
        if header.lease_ms == 0 {
            return Err("the primary holds no output lease (a log file's header, or an older build): the backup could not know when going live is safe".into());
        }
        let spec =
            GuestSpec::decode(&a.boot).map_err(|e| format!("its boot configuration: {e}"))?;
        let ours: GuestIdentity = spec.identity(&self.kernel);
        header
            .check_identity(&ours)
            .map_err(|e| format!("it runs another guest than this backup can: {e}"))?;
        let sectors = self.disk.sectors()?;
        if spec.disk_sectors != sectors {
            return Err(format!(
                "its disk has {} sectors, this backup's {sectors}: not the same disk",
                spec.disk_sectors
            ));
        }
        let x = &self.expected;
        if let Some(mem) = x.mem_size.filter(|m| *m != spec.mem_size) {
            return Err(format!(
                "its guest has {} MiB of memory, this backup's --mem says {} MiB",
                spec.mem_size >> 20,
                mem >> 20
            ));
        }
        if let Some(mac) = x.mac.filter(|m| Some(*m) != spec.mac) {
            return Err(format!(
                "its guest's MAC is {}, this backup's --mac says {}",
                spec.mac.map_or_else(|| "none".into(), |m| mac_text(&m)),
                mac_text(&mac)
            ));
        }
        if let Some(ip) = x.guest_ip.filter(|ip| Some(*ip) != spec.guest_ip()) {
            return Err(format!(
                "its guest's address is {}, this backup's --guest-ip says {ip}",
                spec.guest_ip()
                    .map_or_else(|| "none".into(), |a| a.to_string())
            ));
        }
        self.check_epoch(header.epoch)?;
        Ok(spec)
    }

    /// The epoch must have been begun at the arbiter, and be its latest:
    /// a backup never follows a run nobody started, nor a stale one.
    fn check_epoch(&self, epoch: u64) -> Result<(), String> {
        let at = self.arbiter.describe();
        let unreachable = |e| format!("the arbiter {at} cannot confirm epoch {epoch}: {e}");
        if epoch == 0 {
            return Err("epoch 0 is no pair run's epoch".into());
        }
        if self.arbiter.begun_by(epoch).map_err(unreachable)?.is_none() {
            return Err(format!(
                "epoch {epoch} was never begun at the arbiter {at} (another arbiter, or a forged run?)"
            ));
        }
        let latest = self.arbiter.latest_epoch().map_err(unreachable)?;
        if latest > epoch {
            return Err(format!(
                "epoch {epoch} is stale: epoch {latest} has begun since at {at}"
            ));
        }
        Ok(())
    }
}

fn mac_text(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arbiter::{Claimant, FileArbiter};
    use logchan::StreamHeader;

    fn spec() -> GuestSpec {
        GuestSpec {
            mem_size: 128 << 20,
            cmdline: "workload=kv ip=10.77.0.2/24".into(),
            seed: 1,
            mac: Some([0x52, 0x54, 0, 0x12, 0x34, 0x56]),
            disk_sectors: 1000,
            disk_read_only: false,
        }
    }

    fn setup() -> (tempfile::TempDir, Admission, u64) {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("arbiter");
        let uri = format!("file:{}", path.display());
        let arbiter = FileArbiter::new(&uri, path.to_str().expect("utf-8")).expect("arbiter");
        let epoch = arbiter
            .begin_next(&Claimant::new("p").expect("claimant"))
            .expect("begin");
        let admission = Admission {
            kernel: b"kernel".to_vec(),
            disk: DiskCheck::Sectors(1000),
            expected: Expected::default(),
            arbiter: Box::new(arbiter),
        };
        (dir, admission, epoch)
    }

    fn attach(spec: &GuestSpec, epoch: u64) -> AttachRequest {
        AttachRequest {
            header: StreamHeader::new(spec.identity(b"kernel"), 0, epoch).with_lease_ms(50),
            boot: spec.encode(),
        }
    }

    #[test]
    fn a_matching_primary_of_the_begun_epoch_is_followed() {
        let (_d, adm, epoch) = setup();
        assert_eq!(adm.judge(&attach(&spec(), epoch)), Ok(spec()));
    }

    #[test]
    fn unbegun_stale_and_impossible_epochs_are_refused() {
        let (_d, adm, epoch) = setup();
        let e = adm.judge(&attach(&spec(), epoch + 1)).unwrap_err();
        assert!(e.contains("never begun"), "{e}");
        let e = adm.judge(&attach(&spec(), u64::MAX)).unwrap_err();
        assert!(e.contains("never begun"), "{e}");
        adm.arbiter
            .begin_next(&Claimant::new("q").expect("claimant"))
            .expect("begin");
        let e = adm.judge(&attach(&spec(), epoch)).unwrap_err();
        assert!(e.contains("stale"), "{e}");
    }

    #[test]
    fn a_guest_unlike_the_backups_command_line_is_refused() {
        let (_d, mut adm, epoch) = setup();
        let other_kernel = AttachRequest {
            header: StreamHeader::new(spec().identity(b"other"), 0, epoch).with_lease_ms(50),
            boot: spec().encode(),
        };
        assert!(
            adm.judge(&other_kernel)
                .unwrap_err()
                .contains("another guest")
        );
        adm.disk = DiskCheck::Sectors(2000);
        assert!(
            adm.judge(&attach(&spec(), epoch))
                .unwrap_err()
                .contains("sectors")
        );
        adm.disk = DiskCheck::Sectors(1000);
        adm.expected.mem_size = Some(256 << 20);
        assert!(
            adm.judge(&attach(&spec(), epoch))
                .unwrap_err()
                .contains("--mem")
        );
        adm.expected.mem_size = Some(128 << 20);
        adm.expected.mac = Some([0x52, 0x54, 0, 0, 0, 1]);
        assert!(
            adm.judge(&attach(&spec(), epoch))
                .unwrap_err()
                .contains("--mac")
        );
        adm.expected.mac = None;
        adm.expected.guest_ip = Some(Ipv4Addr::new(10, 77, 0, 9));
        assert!(
            adm.judge(&attach(&spec(), epoch))
                .unwrap_err()
                .contains("--guest-ip")
        );
        adm.expected.guest_ip = Some(Ipv4Addr::new(10, 77, 0, 2));
        assert!(adm.judge(&attach(&spec(), epoch)).is_ok());
        let no_lease = AttachRequest {
            header: StreamHeader::new(spec().identity(b"kernel"), 0, epoch),
            boot: spec().encode(),
        };
        assert!(adm.judge(&no_lease).unwrap_err().contains("lease"));
    }
}
