//! The devices at a join point: for each slot (net, blk) whether the
//! device exists, and its virtio-mmio transport with its queues
//! (`TransportState`). Only what the guest can observe is carried: the
//! device models' event bits are clear at the end of every sync exit, and
//! a join point is taken only with no disk request in flight
//! (docs/join.md).

use virtio_queue::QueueState;
use vm_memory::GuestMemoryMmap;

use crate::devices::virtio::Devices;
use crate::devices::virtio_mmio::TransportState;

use super::SnapshotError;
use super::wire::{Reader, Writer};

/// At most this many queues per device (net has 2).
const MAX_QUEUES: usize = 8;

/// Both device slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DevicesState {
    pub net: Option<TransportState>,
    pub blk: Option<TransportState>,
}

impl DevicesState {
    /// Reads the devices; refuses while a disk request is in flight.
    pub fn save(devices: &Devices) -> Result<DevicesState, SnapshotError> {
        if let Some(blk) = devices.blk.as_ref() {
            let n = blk.device.in_flight();
            if n > 0 {
                return Err(SnapshotError::InFlight(n));
            }
        }
        Ok(DevicesState {
            net: devices.net.as_ref().map(|d| d.save()),
            blk: devices.blk.as_ref().map(|d| d.save()),
        })
    }

    /// Puts the joiner's fresh devices (built from the same configuration)
    /// in the saved state. A slot present on one side only is a different
    /// guest configuration.
    pub fn restore(
        &self,
        devices: &mut Devices,
        mem: &GuestMemoryMmap,
    ) -> Result<(), SnapshotError> {
        let mismatch = |what: &'static str| SnapshotError::Bad {
            what: "devices",
            why: format!("the {what} device is present on one side only"),
        };
        match (&self.net, devices.net.as_mut()) {
            (Some(st), Some(d)) => d.restore(mem, st).map_err(SnapshotError::Restore)?,
            (None, None) => {}
            _ => return Err(mismatch("network")),
        }
        match (&self.blk, devices.blk.as_mut()) {
            (Some(st), Some(d)) => d.restore(mem, st).map_err(SnapshotError::Restore)?,
            (None, None) => {}
            _ => return Err(mismatch("disk")),
        }
        Ok(())
    }

    pub fn encode(&self, w: &mut Writer) {
        for slot in [&self.net, &self.blk] {
            match slot {
                None => {
                    w.u8(0);
                }
                Some(t) => {
                    w.u8(1);
                    encode_transport(t, w);
                }
            }
        }
    }

    pub fn decode(r: &mut Reader<'_>) -> Result<DevicesState, SnapshotError> {
        let slot = |r: &mut Reader<'_>| -> Result<Option<TransportState>, SnapshotError> {
            match r.u8()? {
                0 => Ok(None),
                1 => decode_transport(r).map(Some),
                b => Err(SnapshotError::Bad {
                    what: "devices",
                    why: format!("device presence byte {b}"),
                }),
            }
        };
        let net = slot(r)?;
        let blk = slot(r)?;
        Ok(DevicesState { net, blk })
    }
}

fn encode_transport(t: &TransportState, w: &mut Writer) {
    w.u32(t.status)
        .u32(t.device_features_sel)
        .u32(t.driver_features_sel)
        .u64(t.driver_features)
        .u32(t.queue_sel)
        .u32(t.config_generation)
        .u8(u8::from(t.active))
        .u64(t.bad_accesses)
        .u8(t.queues.len() as u8);
    for q in &t.queues {
        w.u16(q.max_size)
            .u16(q.next_avail)
            .u16(q.next_used)
            .u16(q.size)
            .u8(u8::from(q.event_idx_enabled))
            .u8(u8::from(q.ready))
            .u64(q.desc_table)
            .u64(q.avail_ring)
            .u64(q.used_ring);
    }
}

fn flag(r: &mut Reader<'_>) -> Result<bool, SnapshotError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        b => Err(SnapshotError::Bad {
            what: "devices",
            why: format!("boolean byte {b}"),
        }),
    }
}

fn decode_transport(r: &mut Reader<'_>) -> Result<TransportState, SnapshotError> {
    let status = r.u32()?;
    let device_features_sel = r.u32()?;
    let driver_features_sel = r.u32()?;
    let driver_features = r.u64()?;
    let queue_sel = r.u32()?;
    let config_generation = r.u32()?;
    let active = flag(r)?;
    let bad_accesses = r.u64()?;
    let n = usize::from(r.u8()?);
    if n > MAX_QUEUES {
        return Err(SnapshotError::Bad {
            what: "devices",
            why: format!("{n} queues"),
        });
    }
    let mut queues = Vec::with_capacity(n);
    for _ in 0..n {
        queues.push(QueueState {
            max_size: r.u16()?,
            next_avail: r.u16()?,
            next_used: r.u16()?,
            size: r.u16()?,
            event_idx_enabled: flag(r)?,
            ready: flag(r)?,
            desc_table: r.u64()?,
            avail_ring: r.u64()?,
            used_ring: r.u64()?,
        });
    }
    Ok(TransportState {
        status,
        device_features_sel,
        driver_features_sel,
        driver_features,
        queue_sel,
        config_generation,
        active,
        bad_accesses,
        queues,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_states_round_trip_and_cut_streams_fail() {
        let q = QueueState {
            max_size: 256,
            next_avail: 7,
            next_used: 7,
            event_idx_enabled: false,
            size: 256,
            ready: true,
            desc_table: 0x10_0000,
            avail_ring: 0x10_1000,
            used_ring: 0x10_2000,
        };
        let st = DevicesState {
            net: Some(TransportState {
                status: 0xf,
                device_features_sel: 1,
                driver_features_sel: 1,
                driver_features: 1 << 32 | 1 << 5,
                queue_sel: 1,
                config_generation: 0,
                active: true,
                bad_accesses: 2,
                queues: vec![q, q],
            }),
            blk: None,
        };
        let mut w = Writer::default();
        st.encode(&mut w);
        let mut r = Reader::new(&w.buf, "devices");
        assert_eq!(DevicesState::decode(&mut r).unwrap(), st);
        r.finish().unwrap();
        for cut in 0..w.buf.len() {
            assert!(DevicesState::decode(&mut Reader::new(&w.buf[..cut], "devices")).is_err());
        }
        let mut bad = w.buf.clone();
        bad[0] = 2;
        assert!(DevicesState::decode(&mut Reader::new(&bad, "devices")).is_err());
    }
}
