//! The two 40-byte wire messages of the logging channel: the ack (backup →
//! primary, on the TCP connection) and the heartbeat (UDP, both ways).
//! Exact layout, round trips, and every single damaged bit refused.

use logchan::channel::{ACK_LEN, Ack, AckError, HEARTBEAT_LEN, Heartbeat, HeartbeatError, Role};

fn ack() -> Ack {
    Ack {
        acked_seq: 0x0102_0304_0506_0708,
        replayed_seq: 0x0102_0304_0506_0700,
        replayed_exit: 0xdead_beef,
        diverged: false,
    }
}

/// Recomputes the crc of a 40-byte message edited by a test, so only the
/// edited field is wrong.
fn reseal(b: &mut [u8; 40]) {
    let crc = crc32c::crc32c(&b[..36]);
    b[36..].copy_from_slice(&crc.to_le_bytes());
}

fn beat() -> Heartbeat {
    Heartbeat {
        role: Role::Backup,
        flags: 0,
        epoch: 42,
        counter: 7,
        log_seq: 123_456,
    }
}

#[test]
fn ack_layout_is_as_documented() {
    let b = ack().encode();
    assert_eq!(b.len(), ACK_LEN);
    assert_eq!(&b[0..4], b"LSAK");
    assert_eq!(&b[4..6], &1u16.to_le_bytes());
    assert_eq!(&b[6..8], &[0, 0]);
    assert_eq!(&b[8..16], &ack().acked_seq.to_le_bytes());
    assert_eq!(&b[16..24], &ack().replayed_seq.to_le_bytes());
    assert_eq!(&b[24..32], &ack().replayed_exit.to_le_bytes());
    assert_eq!(&b[32..36], &[0; 4]);
    assert_eq!(&b[36..40], &crc32c::crc32c(&b[..36]).to_le_bytes());
    assert_eq!(Ack::decode(&b), Ok(ack()));
}

#[test]
fn every_damaged_ack_bit_is_refused() {
    let good = ack().encode();
    for bit in 0..ACK_LEN * 8 {
        let mut b = good;
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(Ack::decode(&b).is_err(), "bit {bit} flipped was accepted");
    }
}

#[test]
fn ack_errors_name_what_is_wrong() {
    let mut b = ack().encode();
    b[0] = b'X';
    assert!(matches!(Ack::decode(&b), Err(AckError::BadMagic { .. })));

    // Another version is named as such, not as a checksum failure.
    let mut b = ack().encode();
    b[4] = 2;
    let e = Ack::decode(&b).expect_err("version 2");
    assert_eq!(e, AckError::UnsupportedVersion { found: 2 });
    assert_eq!(
        e.to_string(),
        "ack version 2 is not supported: this build reads version 1"
    );

    // Only flag bit 0 (diverged) is defined; reserved must be 0, even
    // with a valid crc.
    let mut b = ack().encode();
    b[6] = 2;
    reseal(&mut b);
    assert_eq!(Ack::decode(&b), Err(AckError::Flags { flags: 2 }));
    let last = Ack {
        diverged: true,
        ..ack()
    };
    let b = last.encode();
    assert_eq!(b[6], 1, "diverged is bit 0 of the flags");
    assert_eq!(Ack::decode(&b), Ok(last));
    let mut b = ack().encode();
    b[33] = 1;
    reseal(&mut b);
    assert_eq!(Ack::decode(&b), Err(AckError::Reserved { value: 0x100 }));
}

#[test]
fn ack_plausibility() {
    let a = |acked_seq, replayed_seq| Ack {
        acked_seq,
        replayed_seq,
        replayed_exit: 0,
        diverged: false,
    };
    assert_eq!(a(5, 3).check(5, 10), Ok(()));
    assert_eq!(a(10, 10).check(5, 10), Ok(()));
    assert_eq!(
        a(4, 0).check(5, 10),
        Err(AckError::Regressed {
            previous: 5,
            acked: 4
        })
    );
    assert_eq!(
        a(11, 0).check(5, 10),
        Err(AckError::Ahead {
            acked: 11,
            sent: 10
        })
    );
    assert_eq!(
        a(6, 7).check(5, 10),
        Err(AckError::ReplayedAhead {
            replayed: 7,
            acked: 6
        })
    );
}

#[test]
fn heartbeat_layout_is_as_documented() {
    let b = beat().encode();
    assert_eq!(b.len(), HEARTBEAT_LEN);
    assert_eq!(&b[0..4], b"LSHB");
    assert_eq!(&b[4..6], &1u16.to_le_bytes());
    assert_eq!(b[6], 2);
    assert_eq!(b[7], 0);
    assert_eq!(&b[8..16], &42u64.to_le_bytes());
    assert_eq!(&b[16..24], &7u64.to_le_bytes());
    assert_eq!(&b[24..32], &123_456u64.to_le_bytes());
    assert_eq!(&b[32..36], &[0; 4]);
    assert_eq!(&b[36..40], &crc32c::crc32c(&b[..36]).to_le_bytes());
    assert_eq!(Heartbeat::decode(&b), Ok(beat()));
    // Flags are passed through (version 1 defines none).
    let flagged = Heartbeat {
        flags: 0x80,
        ..beat()
    };
    assert_eq!(Heartbeat::decode(&flagged.encode()), Ok(flagged));
}

#[test]
fn every_damaged_heartbeat_bit_and_every_other_size_is_refused() {
    let good = beat().encode();
    for bit in 0..HEARTBEAT_LEN * 8 {
        let mut b = good;
        b[bit / 8] ^= 1 << (bit % 8);
        assert!(
            Heartbeat::decode(&b).is_err(),
            "bit {bit} flipped was accepted"
        );
    }
    for len in [0, 1, 39, 41, 64] {
        let mut v = good.to_vec();
        v.resize(len, 0);
        assert_eq!(
            Heartbeat::decode(&v),
            Err(HeartbeatError::Length { len }),
            "{len} bytes"
        );
    }
    let mut b = good;
    b[6] = 3;
    reseal(&mut b);
    assert_eq!(
        Heartbeat::decode(&b),
        Err(HeartbeatError::UnknownRole { role: 3 })
    );
}

#[test]
fn engines_can_move_to_the_io_thread() {
    // Built on the main thread, moved to the I/O thread that owns the ring.
    fn send<T: Send>() {}
    send::<logchan::SenderEngine>();
    send::<logchan::ReceiverEngine>();
    send::<logchan::HeartbeatEngine>();
    send::<logchan::FailureDetector>();
}
