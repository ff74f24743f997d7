//! Entry and stream-header encoding: roundtrips, and that every kind of
//! damage is reported as such (never decoded into something else).

mod common;

use common::{encode, exit_kind_for, header, samples, stream};
use logchan::{
    Corruption, DecodeError, ENTRY_HEADER_LEN, EncodeError, Entry, EntryKind, ExitKind,
    GuestIdentity, HeaderError, IdentityField, MAX_PAYLOAD, STREAM_HEADER_LEN, StreamHeader,
    StreamState, decode, encode_into, encoded_len, entry_need,
};

#[test]
fn every_kind_roundtrips() {
    for (i, e) in samples().iter().enumerate() {
        let seq = 1000 + i as u64;
        let bytes = encode(seq, 77 + i as u64, exit_kind_for(i), e);
        assert_eq!(bytes.len() % 8, 0);
        assert_eq!(bytes.len(), encoded_len(e));
        let (rec, used) = decode(&bytes).expect("decodes");
        assert_eq!(used, bytes.len());
        assert_eq!(rec.entry, *e);
        assert_eq!(rec.entry.kind(), e.kind());
        assert_eq!(rec.header.seq, seq);
        assert_eq!(rec.header.exit_index, 77 + i as u64);
        assert_eq!(rec.header.exit_kind, exit_kind_for(i));
        assert_eq!(rec.header.payload_len as usize, e.payload_len());
        assert_eq!(rec.header.encoded_len(), bytes.len());
        assert_eq!(rec.bytes, &bytes[..]);
        // Decoding ignores what follows the entry.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xff; 100]);
        assert_eq!(decode(&longer).expect("decodes").1, bytes.len());
    }
}

#[test]
fn sizes_match_the_documented_table() {
    let frame = [0u8; 1500];
    let block = [0u8; 4096];
    let cases: [(Entry<'_>, usize); 6] = [
        (
            Entry::Sync {
                flags: 0,
                events: 0,
                now_ns: 0,
                deadline_ns: 0,
            },
            56,
        ),
        (Entry::NetRx { frame: &frame }, 1536),
        (
            Entry::BlkDone {
                id: 0,
                status: 0,
                data: &block,
            },
            4136,
        ),
        (Entry::KeepAlive, 32),
        (
            Entry::Digest {
                regs: [0; 18],
                output_hash: 0,
                mem_hash: 0,
            },
            192,
        ),
        (
            Entry::End {
                reason: logchan::EndReason::HostStop,
                status: 0,
            },
            40,
        ),
    ];
    for (e, len) in cases {
        assert_eq!(encoded_len(&e), len, "{:?}", e.kind());
    }
}

#[test]
fn encode_refuses_bad_entries_and_small_buffers() {
    let big = vec![0u8; MAX_PAYLOAD + 1];
    let mut buf = vec![0u8; MAX_PAYLOAD + 64];
    assert_eq!(
        encode_into(
            &mut buf,
            1,
            0,
            ExitKind::None,
            &Entry::NetRx { frame: &big }
        ),
        Err(EncodeError::PayloadTooLarge {
            len: MAX_PAYLOAD + 1
        })
    );
    let max = vec![0u8; MAX_PAYLOAD];
    let n = encode_into(
        &mut buf,
        1,
        0,
        ExitKind::None,
        &Entry::NetRx { frame: &max },
    )
    .expect("the maximum fits");
    assert_eq!(
        decode(&buf[..n]).expect("decodes").0.entry,
        Entry::NetRx { frame: &max }
    );
    let mut small = [0u8; 40];
    assert_eq!(
        encode_into(
            &mut small,
            1,
            0,
            ExitKind::None,
            &Entry::NetRx { frame: &[1; 9] }
        ),
        Err(EncodeError::BufferTooSmall { need: 48, have: 40 })
    );
}

/// Every single-byte change of an encoded entry — header, payload or padding —
/// is refused. With enough bytes after it (as inside a stream) it is Corrupt;
/// only the length field, whose damage can look like "more is coming", may be
/// Incomplete at the very end of the data.
#[test]
fn any_flipped_byte_is_detected() {
    let mut checked = 0;
    for (i, e) in samples().iter().enumerate() {
        let good = encode(5, 9, exit_kind_for(i), e);
        for pos in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[pos] ^= flip;
                // Followed by a good entry and slack, as inside a stream.
                let mut followed = bad.clone();
                followed.extend(encode(6, 9, ExitKind::None, &Entry::KeepAlive));
                followed.resize(followed.len() + 70_000, 0);
                match decode(&followed) {
                    Err(DecodeError::Corrupt { offset, .. }) => assert_eq!(offset, 0),
                    other => panic!("kind {i} byte {pos} ^{flip:#x}: {other:?}"),
                }
                // Alone: never decoded; Incomplete only for the length field.
                match decode(&bad) {
                    Err(DecodeError::Corrupt { .. }) => {}
                    Err(DecodeError::Incomplete { .. }) if (4..8).contains(&pos) => {}
                    other => panic!("kind {i} byte {pos} ^{flip:#x} alone: {other:?}"),
                }
                checked += 1;
            }
        }
    }
    assert!(checked > 1000);
}

#[test]
fn a_flipped_byte_inside_a_stream_names_seq_and_offset() {
    let entries = samples();
    let (good, offs) = stream(&entries);
    let target = 4;
    let mut bad = good.clone();
    bad[offs[target] + ENTRY_HEADER_LEN + 1] ^= 0x10;
    let mut st = StreamState::new(1, STREAM_HEADER_LEN as u64);
    let mut pos = STREAM_HEADER_LEN;
    for _ in 0..target {
        let (_, used) = st.decode(&bad[pos..]).expect("earlier entries are fine");
        pos += used;
    }
    match st.decode(&bad[pos..]) {
        Err(DecodeError::Corrupt {
            seq,
            offset,
            reason: Corruption::Crc { .. },
        }) => {
            assert_eq!(seq, target as u64 + 1);
            assert_eq!(offset, offs[target] as u64);
        }
        other => panic!("{other:?}"),
    }
    // Nothing advanced.
    assert_eq!(st.offset(), offs[target] as u64);
    assert_eq!(st.last_seq(), target as u64);
}

#[test]
fn truncation_at_every_offset_is_incomplete() {
    for (i, e) in samples().iter().enumerate() {
        let good = encode(1, 1, exit_kind_for(i), e);
        for cut in 0..good.len() {
            match decode(&good[..cut]) {
                Err(DecodeError::Incomplete {
                    have, need, offset, ..
                }) => {
                    assert_eq!(have, cut);
                    assert_eq!(offset, 0);
                    let expect = if cut < ENTRY_HEADER_LEN {
                        ENTRY_HEADER_LEN
                    } else {
                        good.len()
                    };
                    assert_eq!(need, expect);
                    assert_eq!(entry_need(&good[..cut]), Ok(expect));
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
        }
    }
}

#[test]
fn oversized_length_is_corrupt_without_waiting() {
    let mut e = encode(3, 1, ExitKind::None, &Entry::KeepAlive);
    e[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
    assert!(matches!(
        decode(&e[..ENTRY_HEADER_LEN]),
        Err(DecodeError::Corrupt {
            seq: 3,
            reason: Corruption::PayloadTooLarge { .. },
            ..
        })
    ));
}

/// Builds an entry with a valid crc over arbitrary header fields and payload,
/// as a broken encoder would.
fn forge(kind: u16, exit_kind: u16, reserved: u32, payload: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; (ENTRY_HEADER_LEN + payload.len()).next_multiple_of(8)];
    b[4..8].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    b[8..16].copy_from_slice(&1u64.to_le_bytes());
    b[24..26].copy_from_slice(&kind.to_le_bytes());
    b[26..28].copy_from_slice(&exit_kind.to_le_bytes());
    b[28..32].copy_from_slice(&reserved.to_le_bytes());
    b[32..32 + payload.len()].copy_from_slice(payload);
    let crc = crc32c::crc32c(&b[4..32 + payload.len()]);
    b[0..4].copy_from_slice(&crc.to_le_bytes());
    b
}

fn reason(buf: &[u8]) -> Corruption {
    match decode(buf) {
        Err(DecodeError::Corrupt { reason, .. }) => reason,
        other => panic!("{other:?}"),
    }
}

#[test]
fn well_checksummed_nonsense_is_corrupt() {
    assert_eq!(
        reason(&forge(0, 0, 0, &[])),
        Corruption::UnknownKind { kind: 0 }
    );
    assert_eq!(
        reason(&forge(10, 0, 0, &[])),
        Corruption::UnknownKind { kind: 10 }
    );
    assert_eq!(
        reason(&forge(7, 6, 0, &[])),
        Corruption::UnknownExitKind { exit_kind: 6 }
    );
    assert_eq!(
        reason(&forge(7, 0, 1, &[])),
        Corruption::Reserved { value: 1 }
    );
    let bad_payload =
        |kind, p: &[u8]| matches!(reason(&forge(kind, 0, 0, p)), Corruption::BadPayload { .. });
    assert!(bad_payload(1, &[0; 15])); // Sync too short
    assert!(bad_payload(3, &[0; 3])); // BlkDone without fixed fields
    assert!(bad_payload(3, &[0, 0, 0, 1])); // BlkDone reserved byte
    // Kind 4 is reserved: whatever its payload, the entry is refused.
    for p in [&[0u8; 8][..], &[0u8; 9][..]] {
        assert_eq!(
            reason(&forge(4, 0, 0, p)),
            Corruption::UnknownKind { kind: 4 }
        );
    }
    assert!(bad_payload(
        5,
        &[3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    )); // what
    assert!(bad_payload(
        5,
        &[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    )); // reserved
    assert!(bad_payload(6, &[0; 152]));
    assert!(bad_payload(7, &[0]));
    assert!(bad_payload(8, &[0; 8])); // End reason 0
    // Non-zero padding (outside the crc) is refused too.
    let mut p = forge(2, 0, 0, &[1]);
    let last = p.len() - 1;
    p[last] = 1;
    assert_eq!(reason(&p), Corruption::Padding);
}

#[test]
fn seq_gap_and_backwards_exit_index_are_corrupt() {
    let mut s = header().encode().to_vec();
    s.extend(encode(1, 10, ExitKind::SyncPort, &Entry::KeepAlive));
    s.extend(encode(3, 10, ExitKind::SyncPort, &Entry::KeepAlive));
    let mut st = StreamState::new(1, STREAM_HEADER_LEN as u64);
    st.decode(&s[64..]).expect("first is fine");
    assert_eq!(
        st.decode(&s[96..]),
        Err(DecodeError::Corrupt {
            seq: 2,
            offset: 96,
            reason: Corruption::SeqGap {
                expected: 2,
                found: 3
            }
        })
    );

    let mut s = encode(1, 10, ExitKind::SyncPort, &Entry::KeepAlive);
    s.extend(encode(2, 10, ExitKind::SyncPort, &Entry::KeepAlive)); // equal: fine
    s.extend(encode(3, 9, ExitKind::SyncPort, &Entry::KeepAlive));
    let mut st = StreamState::new(1, 0);
    st.decode(&s).expect("1");
    st.decode(&s[32..]).expect("2");
    assert_eq!(
        st.decode(&s[64..]),
        Err(DecodeError::Corrupt {
            seq: 3,
            offset: 64,
            reason: Corruption::ExitIndexBackwards {
                previous: 10,
                found: 9
            }
        })
    );
}

#[test]
fn stream_header_roundtrips_and_refuses_damage() {
    let mut h = header();
    h.epoch = 7;
    h.first_seq = 99;
    let b = h.encode();
    assert_eq!(&b[..8], b"LSTPLOG\0");
    assert_eq!(StreamHeader::decode(&b), Ok(h));
    assert!(h.read_data_logged());

    for cut in 0..b.len() {
        assert_eq!(
            StreamHeader::decode(&b[..cut]),
            Err(HeaderError::Incomplete {
                have: cut,
                need: 64
            })
        );
    }
    // Every single-byte change is refused.
    for pos in 0..b.len() {
        let mut bad = b;
        bad[pos] ^= 0x04;
        assert!(StreamHeader::decode(&bad).is_err(), "byte {pos}");
    }
    let mut bad = b;
    bad[0] = b'X';
    assert!(matches!(
        StreamHeader::decode(&bad),
        Err(HeaderError::BadMagic { .. })
    ));
    let mut bad = b;
    bad[20] ^= 1;
    assert!(matches!(
        StreamHeader::decode(&bad),
        Err(HeaderError::BadCrc { .. })
    ));
}

#[test]
fn another_version_is_named() {
    let mut b = header().encode();
    b[8..10].copy_from_slice(&2u16.to_le_bytes());
    let e = StreamHeader::decode(&b).expect_err("version 2 is refused");
    assert_eq!(
        e,
        HeaderError::UnsupportedVersion {
            found: 2,
            supported: 1
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("version 2") && msg.contains("version 1"),
        "{msg}"
    );
}

#[test]
fn unknown_flags_and_zero_first_seq_are_refused() {
    let mut h = header();
    h.flags = 0x8000_0000;
    assert_eq!(
        StreamHeader::decode(&h.encode()),
        Err(HeaderError::UnknownFlags { flags: 0x8000_0000 })
    );
    let mut h = header();
    h.first_seq = 0;
    assert_eq!(
        StreamHeader::decode(&h.encode()),
        Err(HeaderError::ZeroFirstSeq)
    );
}

#[test]
fn identity_check_names_what_differs() {
    let h = header();
    assert_eq!(h.check_identity(&h.identity), Ok(()));
    let ours = GuestIdentity {
        kernel_hash: 1,
        ..h.identity
    };
    let e = h.check_identity(&ours).expect_err("kernel differs");
    assert_eq!(e.diffs.len(), 1);
    assert_eq!(e.diffs[0].field, IdentityField::KernelHash);
    assert!(e.to_string().contains("kernel hash"), "{e}");
    let ours = GuestIdentity {
        kernel_hash: 1,
        boot_hash: 2,
        mem_size: 3,
    };
    let e = h.check_identity(&ours).expect_err("all differ");
    let fields: Vec<_> = e.diffs.iter().map(|d| d.field).collect();
    assert_eq!(
        fields,
        [
            IdentityField::KernelHash,
            IdentityField::BootHash,
            IdentityField::MemSize
        ]
    );
}

#[test]
fn hashes_are_stable_and_order_sensitive() {
    use logchan::{RunningHash, content_hash, mem_hash, output_hash};
    assert_eq!(output_hash(b"abc"), content_hash(b"abc"));
    assert_eq!(mem_hash(b"abc"), output_hash(b"abc"));
    assert_ne!(output_hash(b"abc"), output_hash(b"abd"));
    let mut a = RunningHash::new();
    let mut b = RunningHash::new();
    assert_eq!(a.value(), 0);
    let h1 = a.push_output(b"one");
    a.push_output(b"two");
    b.push(output_hash(b"two"));
    b.push(h1);
    assert_ne!(a.value(), b.value());
    let mut c = RunningHash::new();
    c.push(h1);
    c.push(output_hash(b"two"));
    assert_eq!(a, c);
    assert_eq!(a.count(), 2);
}

#[test]
fn kinds_have_their_documented_numbers() {
    for (k, n) in [
        (EntryKind::Sync, 1u16),
        (EntryKind::NetRx, 2),
        (EntryKind::BlkDone, 3),
        (EntryKind::Output, 5),
        (EntryKind::Digest, 6),
        (EntryKind::KeepAlive, 7),
        (EntryKind::End, 8),
        (EntryKind::Boot, 9),
    ] {
        assert_eq!(k as u16, n);
        assert_eq!(EntryKind::from_u16(n), Some(k));
    }
    assert_eq!(EntryKind::from_u16(4), None, "kind 4 is reserved");
}
