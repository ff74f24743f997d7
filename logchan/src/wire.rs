//! Byte-level helpers shared by the fixed-size messages (stream header, ack,
//! heartbeat) and the entry decoder: little-endian field reads and the
//! crc32c trailer that closes each message.

/// The little-endian `u16` at `b[o..o + 2]`.
pub(crate) fn u16_at(b: &[u8], o: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[o..o + 2]);
    u16::from_le_bytes(a)
}

/// The little-endian `u32` at `b[o..o + 4]`.
pub(crate) fn u32_at(b: &[u8], o: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[o..o + 4]);
    u32::from_le_bytes(a)
}

/// The little-endian `u64` at `b[o..o + 8]`.
pub(crate) fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

/// Stores the crc32c of `b[..crc_off]` at `b[crc_off..crc_off + 4]`.
pub(crate) fn seal(b: &mut [u8], crc_off: usize) {
    let crc = crate::hash::checksum(&b[..crc_off]);
    b[crc_off..crc_off + 4].copy_from_slice(&crc.to_le_bytes());
}

/// `Err((stored, computed))` unless the crc stored at `crc_off` is that of
/// `b[..crc_off]`.
pub(crate) fn check_seal(b: &[u8], crc_off: usize) -> Result<(), (u32, u32)> {
    let stored = u32_at(b, crc_off);
    let computed = crate::hash::checksum(&b[..crc_off]);
    if stored == computed {
        Ok(())
    } else {
        Err((stored, computed))
    }
}
