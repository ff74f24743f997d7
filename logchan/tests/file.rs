//! FileSink writes what the producer appended; LogFileReader reads it back,
//! stopping exactly at a torn tail or a corrupt entry.

mod common;

use std::time::Duration;

use common::{Rng, header, random_entry, samples, stream};
use logchan::{
    DecodeError, ExitKind, FileSink, HeaderError, LogConfig, LogFileReader, ReadError,
    STREAM_HEADER_LEN, log_buffers_with,
};

#[test]
fn sink_and_reader_roundtrip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("run.log");
    let mut rng = Rng(11);
    let pool = rng.bytes(8192);
    let entries: Vec<_> = (0..5000)
        .map(|_| random_entry(&mut rng, &pool, 4000))
        .collect();
    let mut cfg = LogConfig::new(4, 64 * 1024);
    cfg.spin = Duration::from_micros(10);
    let (mut prod, cons) = log_buffers_with(&cfg).expect("buffers");
    let sink = FileSink::create(&path, &header(), cons).expect("sink");
    for (i, e) in entries.iter().enumerate() {
        let seq = i as u64 + 1;
        prod.append(2 * seq, common::exit_kind_for(i), e)
            .expect("append");
        if i % 3 == 0 {
            prod.publish().expect("publish");
        }
    }
    prod.finish().expect("finish");
    let report = sink.finish().expect("sink finished");
    let (expect, _) = stream(&entries);
    assert_eq!(report.bytes, expect.len() as u64);
    assert_eq!(report.last_seq, entries.len() as u64);
    assert!(report.writes <= report.segments);
    let on_disk = std::fs::read(&path).expect("read back");
    assert!(on_disk == expect, "file differs from the reference stream");

    let reader = LogFileReader::open(&path).expect("open");
    assert_eq!(reader.header(), &header());
    let mut n = 0;
    for (i, rec) in reader.entries().enumerate() {
        let rec = rec.expect("good entry");
        assert_eq!(rec.entry, entries[i]);
        assert_eq!(rec.header.seq, i as u64 + 1);
        // Zero-copy: the record points into the reader's bytes.
        let base = reader.bytes().as_ptr() as usize;
        let at = rec.bytes.as_ptr() as usize;
        assert!(at >= base && at < base + reader.bytes().len());
        n += 1;
    }
    assert_eq!(n, entries.len());
}

#[test]
fn bytes_written_is_reported_while_running() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("live.log");
    let (mut prod, cons) = log_buffers_with(&LogConfig::new(2, 4096)).expect("buffers");
    let sink = FileSink::create(&path, &header(), cons).expect("sink");
    prod.append(1, ExitKind::None, &logchan::Entry::KeepAlive)
        .expect("append");
    prod.publish().expect("publish");
    let t = std::time::Instant::now();
    while sink.bytes_written() < 96 {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "sink made no progress"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(prod);
    assert_eq!(sink.finish().expect("finish").bytes, 96);
}

#[test]
fn truncated_file_yields_every_whole_entry_then_incomplete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let entries = samples();
    let (bytes, offs) = stream(&entries);
    let path = dir.path().join("torn.log");
    for cut in 0..=bytes.len() {
        std::fs::write(&path, &bytes[..cut]).expect("write");
        let reader = match LogFileReader::open(&path) {
            Ok(r) => r,
            Err(ReadError::Header(HeaderError::Incomplete { have, need })) => {
                assert!(cut < STREAM_HEADER_LEN);
                assert_eq!((have, need), (cut, STREAM_HEADER_LEN));
                continue;
            }
            Err(e) => panic!("cut {cut}: {e}"),
        };
        // Entry i ends where entry i + 1 starts (the last at the end).
        let ends = offs.iter().skip(1).copied().chain([bytes.len()]);
        let whole = ends.filter(|&end| end <= cut).count();
        let mut it = reader.entries();
        for e in entries.iter().take(whole) {
            let rec = it.next().expect("entry").expect("whole entry");
            assert_eq!(rec.entry, *e);
        }
        match it.next() {
            None => assert!(cut == bytes.len() || offs.contains(&cut)),
            Some(Err(e @ DecodeError::Incomplete { .. })) => {
                let DecodeError::Incomplete {
                    offset, after_seq, ..
                } = e
                else {
                    unreachable!()
                };
                assert_eq!(offset as usize, offs[whole]);
                assert_eq!(after_seq as usize, whole);
                let msg = e.to_string();
                assert!(
                    msg.starts_with(&format!("log ends at offset {offset} after seq {whole}")),
                    "{msg}"
                );
            }
            other => panic!("cut {cut}: {other:?}"),
        }
        assert!(it.next().is_none());
    }
}

#[test]
fn corrupt_entry_stops_the_reader() {
    let entries = samples();
    let (mut bytes, offs) = stream(&entries);
    let bad = 6;
    bytes[offs[bad] + 40] ^= 0x20;
    let reader = LogFileReader::from_bytes(bytes).expect("header is fine");
    let items: Vec<_> = reader.entries().collect();
    assert_eq!(items.len(), bad + 1);
    assert!(items[..bad].iter().all(Result::is_ok));
    match &items[bad] {
        Err(DecodeError::Corrupt { seq, offset, .. }) => {
            assert_eq!(*seq, bad as u64 + 1);
            assert_eq!(*offset as usize, offs[bad]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn open_reports_missing_files_and_bad_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.log");
    assert!(matches!(
        LogFileReader::open(&missing),
        Err(ReadError::Io { .. })
    ));
    let empty = dir.path().join("empty.log");
    std::fs::write(&empty, b"").expect("write");
    assert!(matches!(
        LogFileReader::open(&empty),
        Err(ReadError::Header(HeaderError::Incomplete { have: 0, .. }))
    ));
    let mut b = header().encode();
    b[8] = 2;
    let other = dir.path().join("v2.log");
    std::fs::write(&other, b).expect("write");
    let e = LogFileReader::open(&other).expect_err("version 2");
    assert!(matches!(
        e,
        ReadError::Header(HeaderError::UnsupportedVersion {
            found: 2,
            supported: 1
        })
    ));
}
