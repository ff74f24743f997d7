//! `user_data` of every SQE on the I/O thread's ring:
//!
//! ```text
//! bits 63..56  tag   which engine (the I/O thread dispatches on it)
//! bits 55..48  kind  which of the engine's operations (read, write, ack, …)
//! bits 47..0   id    the engine's own slot or counter
//! ```

/// Bits of `user_data` below the tag and kind bytes.
pub const ID_MASK: u64 = (1 << 48) - 1;

/// `tag` (top byte) | `kind` (next byte) | `id` (low 48 bits).
pub fn user_data(tag: u8, kind: u8, id: u64) -> u64 {
    (u64::from(tag) << 56) | (u64::from(kind) << 48) | (id & ID_MASK)
}

/// The engine tag in the top byte.
pub fn user_data_tag(user_data: u64) -> u8 {
    (user_data >> 56) as u8
}

/// The operation kind in the second byte.
pub fn user_data_kind(user_data: u64) -> u8 {
    (user_data >> 48) as u8
}

/// The low 48 bits.
pub fn user_data_id(user_data: u64) -> u64 {
    user_data & ID_MASK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_roundtrip_and_the_id_is_masked() {
        let ud = user_data(0xab, 0x12, 0x1234_5678_9abc);
        assert_eq!(user_data_tag(ud), 0xab);
        assert_eq!(user_data_kind(ud), 0x12);
        assert_eq!(user_data_id(ud), 0x1234_5678_9abc);
        let wide = user_data(1, 2, u64::MAX);
        assert_eq!((user_data_tag(wide), user_data_kind(wide)), (1, 2));
        assert_eq!(user_data_id(wide), ID_MASK);
    }
}
