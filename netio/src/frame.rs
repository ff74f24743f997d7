//! Ethernet frame limits, the virtio-net header, and the gratuitous ARP
//! announced at go-live.

use std::net::Ipv4Addr;

/// Length of `virtio_net_hdr_v1` (VERSION_1 always uses it; 12 bytes).
pub const NET_HDR_LEN: usize = 12;
/// Largest frame without FCS: 1514 (MTU 1500) plus two VLAN tags.
pub const MAX_FRAME_LEN: usize = 1514 + 8;
/// Smallest frame: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;
/// Smallest RX buffer a driver may post without MRG_RXBUF or GUEST_TSO
/// (virtio 1.2, 5.1.6.3.1): header plus a 1514-byte frame.
pub const MIN_RX_BUFFER: u64 = (NET_HDR_LEN + 1514) as u64;

/// `VIRTIO_NET_HDR_F_NEEDS_CSUM`.
pub(crate) const HDR_F_NEEDS_CSUM: u8 = 1;

/// The header put in front of every received frame: no offloads, one
/// buffer (`num_buffers` = 1, which VERSION_1 requires even without
/// MRG_RXBUF).
pub(crate) fn rx_header() -> [u8; NET_HDR_LEN] {
    let mut h = [0u8; NET_HDR_LEN];
    h[10..12].copy_from_slice(&1u16.to_le_bytes());
    h
}

/// A gratuitous ARP request announcing that `ip` is at `mac`, padded to the
/// Ethernet minimum of 60 bytes. Sent at go-live so switches and neighbours
/// learn where the guest now lives.
pub fn gratuitous_arp(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&[0xff; 6]); // broadcast
    f.extend_from_slice(&mac);
    f.extend_from_slice(&0x0806u16.to_be_bytes()); // ARP
    f.extend_from_slice(&1u16.to_be_bytes()); // Ethernet
    f.extend_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f.push(6);
    f.push(4);
    f.extend_from_slice(&1u16.to_be_bytes()); // request
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&ip.octets()); // target = sender: gratuitous
    f.resize(60, 0);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_layout() {
        let mac = [2, 0, 0, 0, 0, 1];
        let f = gratuitous_arp(mac, Ipv4Addr::new(10, 77, 0, 2));
        assert_eq!(f.len(), 60);
        assert_eq!(&f[0..6], &[0xff; 6]);
        assert_eq!(&f[6..12], &mac);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1]);
        assert_eq!(&f[28..32], &[10, 77, 0, 2]);
        assert_eq!(&f[38..42], &[10, 77, 0, 2]);
    }

    #[test]
    fn rx_header_has_one_buffer() {
        assert_eq!(rx_header(), [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
    }
}
