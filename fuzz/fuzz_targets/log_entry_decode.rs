//! Arbitrary bytes into the log decoders (`decode`, `StreamState`,
//! `StreamDecoder`). Checks: nothing panics; every decoded entry re-encodes
//! to exactly its bytes; decoding a stream in chunks gives exactly what
//! decoding it whole gives.
//!
//! Input: byte 0 picks the mode, byte 1 the chunk sizes, the rest is data.
//! Mode bit 0 prepends a valid stream header, bit 1 fixes up every entry's
//! crc first — without these the fuzzer would almost never get past the
//! checksums to the payload parsers.

#![no_main]

use libfuzzer_sys::fuzz_target;
use logchan::{
    DecodeError, GuestIdentity, MAX_PAYLOAD, STREAM_HEADER_LEN, StreamDecoder, StreamError,
    StreamHeader, StreamItem, StreamState, checksum, decode, encode_into, entry_len_for_payload,
};

fuzz_target!(|input: &[u8]| {
    let (mode, chunk, data) = match input {
        [m, c, rest @ ..] => (*m, *c, rest),
        _ => return,
    };
    let mut bytes = Vec::with_capacity(data.len() + STREAM_HEADER_LEN);
    if mode & 1 != 0 {
        let h = StreamHeader::new(
            GuestIdentity {
                kernel_hash: 1,
                boot_hash: 2,
                mem_size: 3,
            },
            0,
            0,
        );
        bytes.extend_from_slice(&h.encode());
    }
    let body_start = bytes.len();
    bytes.extend_from_slice(data);
    if mode & 2 != 0 {
        fix_crcs(&mut bytes[body_start..]);
    }

    // Bare decoding from the start of the body.
    let mut pos = body_start;
    while let Some(rest) = bytes.get(pos..).filter(|r| !r.is_empty()) {
        match decode(rest) {
            Ok((rec, used)) => {
                assert_eq!(used, rec.bytes.len());
                assert_reencodes(&rec);
                pos += used;
            }
            Err(_) => break,
        }
    }

    // Whole-stream decoding against chunked decoding.
    let whole = decode_whole(&bytes);
    let chunked = decode_chunked(&bytes, usize::from(chunk % 64) + 1);
    assert_eq!(whole, chunked);
});

/// Rewrites each entry's crc so the payload parsers see the data.
fn fix_crcs(body: &mut [u8]) {
    let mut pos = 0;
    while body.len() - pos >= 32 {
        let mut l = [0u8; 4];
        l.copy_from_slice(&body[pos + 4..pos + 8]);
        let len = u32::from_le_bytes(l) as usize;
        if len > MAX_PAYLOAD {
            return;
        }
        let total = entry_len_for_payload(len);
        if body.len() - pos < total {
            return;
        }
        let crc = checksum(&body[pos + 4..pos + 32 + len]);
        body[pos..pos + 4].copy_from_slice(&crc.to_le_bytes());
        pos += total;
    }
}

fn assert_reencodes(rec: &logchan::Record<'_>) {
    let mut out = vec![0xffu8; rec.bytes.len()];
    let h = &rec.header;
    let n = encode_into(&mut out, h.seq, h.exit_index, h.exit_kind, &rec.entry)
        .expect("a decoded entry encodes");
    assert_eq!(n, rec.bytes.len());
    assert_eq!(&out[..], rec.bytes);
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    Header(StreamHeader),
    Entry(Vec<u8>),
}

fn decode_whole(bytes: &[u8]) -> (Vec<Item>, Result<(), StreamError>) {
    let mut items = Vec::new();
    let h = match StreamHeader::decode(bytes) {
        Ok(h) => h,
        Err(e) => return (items, Err(e.into())),
    };
    items.push(Item::Header(h));
    let mut st = StreamState::new(h.first_seq, STREAM_HEADER_LEN as u64);
    let mut pos = STREAM_HEADER_LEN;
    while pos < bytes.len() {
        match st.decode(&bytes[pos..]) {
            Ok((rec, used)) => {
                assert_reencodes(&rec);
                items.push(Item::Entry(rec.bytes.to_vec()));
                pos += used;
            }
            Err(e) => return (items, Err(normalize(e.into()))),
        }
    }
    (items, Ok(()))
}

fn decode_chunked(bytes: &[u8], chunk: usize) -> (Vec<Item>, Result<(), StreamError>) {
    let mut dec = StreamDecoder::new();
    let mut items = Vec::new();
    for piece in bytes.chunks(chunk) {
        let mut feed = dec.feed(piece);
        while let Some(item) = feed.next() {
            match item {
                Ok(StreamItem::Header(h)) => items.push(Item::Header(h)),
                Ok(StreamItem::Entry(rec)) => {
                    assert_reencodes(&rec);
                    items.push(Item::Entry(rec.bytes.to_vec()));
                }
                Err(_) => break,
            }
        }
    }
    (items, dec.finish().map_err(normalize))
}

/// `need` of an incomplete entry depends on how much of it arrived (header
/// only vs more), which differs between whole and chunked decoding only in
/// that field; compare the rest.
fn normalize(e: StreamError) -> StreamError {
    match e {
        StreamError::Entry(DecodeError::Incomplete {
            offset,
            after_seq,
            have,
            ..
        }) => StreamError::Entry(DecodeError::Incomplete {
            offset,
            after_seq,
            have,
            need: 0,
        }),
        other => other,
    }
}
