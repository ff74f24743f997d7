//! StreamDecoder: any chunking of a stream decodes to exactly what decoding
//! the whole buffer gives, with the same Incomplete/Corrupt semantics.

mod common;

use common::{Rng, random_entry, samples, stream};
use logchan::{
    Corruption, DecodeError, HeaderError, STREAM_HEADER_LEN, StreamDecoder, StreamError,
    StreamItem, StreamState,
};

/// What decoding produced, owned, for comparison.
#[derive(Debug, PartialEq, Eq)]
enum Out {
    Header(logchan::StreamHeader),
    Entry(Vec<u8>),
    Err(StreamError),
}

fn whole(bytes: &[u8]) -> (Vec<Out>, Result<(), StreamError>) {
    let mut out = Vec::new();
    let h = match logchan::StreamHeader::decode(bytes) {
        Ok(h) => h,
        Err(HeaderError::Incomplete { have, need }) => {
            return (out, Err(HeaderError::Incomplete { have, need }.into()));
        }
        Err(e) => {
            out.push(Out::Err(e.into()));
            let fin = Err(out_err(&out));
            return (out, fin);
        }
    };
    out.push(Out::Header(h));
    let mut st = StreamState::new(h.first_seq, STREAM_HEADER_LEN as u64);
    let mut pos = STREAM_HEADER_LEN;
    while pos < bytes.len() {
        match st.decode(&bytes[pos..]) {
            Ok((rec, used)) => {
                out.push(Out::Entry(rec.bytes.to_vec()));
                pos += used;
            }
            Err(e @ DecodeError::Incomplete { .. }) => return (out, Err(e.into())),
            Err(e) => {
                out.push(Out::Err(e.into()));
                let fin = Err(out_err(&out));
                return (out, fin);
            }
        }
    }
    (out, Ok(()))
}

fn out_err(out: &[Out]) -> StreamError {
    match out.last() {
        Some(Out::Err(e)) => e.clone(),
        _ => unreachable!(),
    }
}

fn chunked(bytes: &[u8], cuts: &[usize]) -> (Vec<Out>, Result<(), StreamError>) {
    let mut dec = StreamDecoder::new();
    let mut out = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let mut feed = dec.feed(&bytes[start..end]);
        while let Some(item) = feed.next() {
            out.push(match item {
                Ok(StreamItem::Header(h)) => Out::Header(h),
                Ok(StreamItem::Entry(rec)) => Out::Entry(rec.bytes.to_vec()),
                Err(e) => Out::Err(e),
            });
        }
        drop(feed);
        start = end;
    }
    (out, dec.finish())
}

fn random_cuts(rng: &mut Rng, len: usize, max_chunk: usize) -> Vec<usize> {
    let mut cuts = Vec::new();
    let mut at = 0;
    loop {
        at += rng.below(max_chunk + 1);
        if at >= len {
            return cuts;
        }
        cuts.push(at);
    }
}

fn random_stream(rng: &mut Rng, n: usize) -> Vec<u8> {
    let pool = rng.bytes(8192);
    let entries: Vec<_> = (0..n).map(|_| random_entry(rng, &pool, 3000)).collect();
    stream(&entries).0
}

#[test]
fn random_chunkings_equal_whole_decoding() {
    let mut rng = Rng(0x1234_5678);
    for round in 0..60 {
        let bytes = random_stream(&mut rng, 40);
        let expect = whole(&bytes);
        assert!(expect.1.is_ok());
        assert_eq!(expect.0.len(), 41);
        for max_chunk in [1, 7, 31, 64, 100, 1000, 5000, 100_000] {
            let cuts = random_cuts(&mut rng, bytes.len(), max_chunk);
            assert_eq!(
                chunked(&bytes, &cuts),
                expect,
                "round {round} max {max_chunk}"
            );
        }
    }
}

#[test]
fn truncated_streams_end_incomplete_after_the_whole_entries() {
    let (bytes, offs) = stream(&samples());
    let mut rng = Rng(99);
    for cut in 0..bytes.len() {
        let part = &bytes[..cut];
        let expect = whole(part);
        let got = chunked(part, &random_cuts(&mut rng, cut, 50));
        assert_eq!(got, expect, "cut {cut}");
        let whole_entries = offs.iter().skip(1).filter(|&&o| o <= cut).count();
        match &got.1 {
            Ok(()) => assert!(cut == bytes.len() || offs.contains(&cut)),
            Err(StreamError::Header(HeaderError::Incomplete { have, .. })) => {
                assert!(cut < STREAM_HEADER_LEN);
                assert_eq!(*have, cut);
            }
            Err(StreamError::Entry(DecodeError::Incomplete {
                offset, after_seq, ..
            })) => {
                assert_eq!(*after_seq as usize, whole_entries);
                assert_eq!(*offset as usize, offs[whole_entries]);
            }
            Err(e) => panic!("cut {cut}: {e}"),
        }
    }
}

#[test]
fn corruption_stops_the_stream_at_the_bad_entry() {
    let mut rng = Rng(7);
    let (good, offs) = stream(&samples());
    for _ in 0..200 {
        let mut bad = good.clone();
        let pos = STREAM_HEADER_LEN + rng.below(good.len() - STREAM_HEADER_LEN);
        bad[pos] ^= 1 << rng.below(8);
        let expect = whole(&bad);
        let got = chunked(&bad, &random_cuts(&mut rng, bad.len(), 300));
        assert_eq!(got, expect);
        let bad_entry = offs
            .iter()
            .rposition(|&o| o <= pos)
            .expect("inside an entry");
        match got.1 {
            Err(StreamError::Entry(DecodeError::Corrupt { seq, offset, .. })) => {
                assert_eq!(seq, bad_entry as u64 + 1);
                assert_eq!(offset as usize, offs[bad_entry]);
            }
            // A length field damaged to claim more bytes than the stream
            // has looks like a torn tail (it becomes Corrupt once they come).
            Err(StreamError::Entry(DecodeError::Incomplete { offset, .. })) => {
                assert_eq!(offset as usize, offs[bad_entry]);
                assert!((4..8).contains(&(pos - offs[bad_entry])));
            }
            other => panic!("{other:?}"),
        }
        // Entries before the bad one were all yielded, none after.
        let entries = got.0.iter().filter(|o| matches!(o, Out::Entry(_))).count();
        assert_eq!(entries, bad_entry);
    }
}

#[test]
fn bad_header_is_an_error() {
    let (mut bytes, _) = stream(&samples());
    bytes[8] = 9;
    let (out, fin) = chunked(&bytes, &[3, 40, 70]);
    assert!(matches!(
        fin,
        Err(StreamError::Header(HeaderError::UnsupportedVersion {
            found: 9,
            ..
        }))
    ));
    assert_eq!(out.len(), 1);
}

#[test]
fn stopping_early_keeps_the_rest_of_the_chunk() {
    let (bytes, _) = stream(&samples());
    let expect = whole(&bytes).0;
    let mut dec = StreamDecoder::new();
    let mut got = Vec::new();
    // Take one item per feed, offering the remaining bytes again each time as
    // nothing: the decoder must carry all unread entries itself.
    let mut feed = dec.feed(&bytes);
    if let Some(Ok(StreamItem::Header(h))) = feed.next() {
        got.push(Out::Header(h));
    }
    drop(feed);
    loop {
        let mut feed = dec.feed(&[]);
        match feed.next() {
            Some(Ok(StreamItem::Entry(rec))) => got.push(Out::Entry(rec.bytes.to_vec())),
            None => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got, expect);
    assert_eq!(dec.finish(), Ok(()));
    assert_eq!(dec.buffered(), 0);
    assert_eq!(dec.last_seq(), samples().len() as u64);
}

#[test]
fn seq_checks_apply_across_chunks() {
    use common::encode;
    use logchan::{Entry, ExitKind};
    let mut bytes = common::header().encode().to_vec();
    bytes.extend(encode(1, 1, ExitKind::None, &Entry::KeepAlive));
    bytes.extend(encode(3, 1, ExitKind::None, &Entry::KeepAlive));
    let (_, fin) = chunked(&bytes, &[70, 100]);
    assert_eq!(
        fin,
        Err(StreamError::Entry(DecodeError::Corrupt {
            seq: 2,
            offset: 96,
            reason: Corruption::SeqGap {
                expected: 2,
                found: 3
            }
        }))
    );
}
