//! The logging channel when things go wrong, over real loopback TCP: a
//! proxy that flips one byte or cuts the connection mid-entry, a backup
//! that sends malformed or impossible acks, a backup that vanishes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Instant;

use common::chan::{
    DEADLINE, Fault, Proxy, ReceiverSide, SenderSide, Workload, drive_receiver, drive_sender,
    finish_receiver, finish_sender, ring, small_log, spawn_producer, tcp_pair,
};
use common::header;
use logchan::channel::{
    Ack, AckError, ChannelError, ReceiverEvent, ReceiverOptions, Registration, SenderEvent,
    SenderOptions,
};
use logchan::{DecodeError, STREAM_HEADER_LEN, StreamDecoder, StreamError, StreamItem};

struct Ends {
    sender_events: Vec<SenderEvent>,
    receiver_events: Vec<ReceiverEvent>,
    delivered: Vec<u8>,
}

/// Sender → proxy with `fault` → receiver; runs until both sides ended.
fn through_proxy(wl: Workload, fault: Fault) -> Ends {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let proxy = Proxy::start(listener.local_addr().expect("addr"), fault);
    let client = TcpStream::connect(proxy.addr).expect("connect to proxy");
    let (server, _) = listener.accept().expect("accept");
    let deadline = Instant::now() + DEADLINE;

    let sender = std::thread::spawn(move || {
        let mut ring = ring();
        let (mut side, producer) = SenderSide::new(
            &ring,
            client,
            &small_log(4, 64 << 10),
            SenderOptions::default(),
            Registration::Table,
        );
        let producer = spawn_producer(producer, wl);
        drive_sender(&mut ring, &mut side, deadline, "the sender to close", |s| {
            s.closed()
        })?;
        let SenderSide { engine, events, .. } = finish_sender(&mut ring, side);
        // Dropping the engine drops the consumer: a producer stalled on
        // full buffers fails at once (or it finished first: either is fine).
        drop(engine);
        let _ = producer.join();
        Ok::<_, String>(events)
    });
    let mut r = ring();
    let mut side = ReceiverSide::new(&r, server, ReceiverOptions::default(), Registration::Table);
    drive_receiver(&mut r, &mut side, deadline, "the receiver to end", |s| {
        s.ended()
    })
    .expect("receiver");
    let side = finish_receiver(&mut r, side);
    let sender_events = sender.join().expect("sender thread").expect("sender");
    proxy.join();
    Ends {
        sender_events,
        receiver_events: side.events,
        delivered: side.delivered,
    }
}

fn assert_sender_closed_once(events: &[SenderEvent]) {
    let closed: Vec<_> = events
        .iter()
        .filter(|e| matches!(e, SenderEvent::Closed { .. }))
        .collect();
    assert_eq!(closed.len(), 1, "one Closed event: {events:?}");
    assert!(matches!(events.last(), Some(SenderEvent::Closed { .. })));
}

#[test]
fn a_flipped_byte_is_reported_as_that_entry_and_nothing_after_it_is_handed_on() {
    let wl = Workload::new(21, 4000, 1500);
    let (expected, offsets) = wl.expected(&header());
    let k = 2500;
    let at = offsets[k];
    // The crc, the length (low and high byte: a larger length first looks
    // like "more to come"), the seq, the kind, and the payload.
    for (what, pos) in [
        ("crc", at),
        ("payload_len low byte", at + 4),
        ("payload_len high byte", at + 7),
        ("seq", at + 8),
        ("kind", at + 24),
        ("payload or padding", at + 33),
    ] {
        let ends = through_proxy(wl, Fault::Flip { at: pos });
        let last = ends.receiver_events.last().expect("events");
        let ReceiverEvent::Corrupt {
            error: StreamError::Entry(DecodeError::Corrupt { seq, offset, .. }),
        } = last
        else {
            panic!("{what}: expected a corrupt entry last, got {last:?}");
        };
        assert_eq!(
            (*seq, *offset),
            (k as u64 + 1, at as u64),
            "{what}: names the entry"
        );
        assert!(
            ends.delivered == expected[STREAM_HEADER_LEN..at],
            "{what}: exactly the entries before it were handed on ({} bytes, expected {})",
            ends.delivered.len(),
            at - STREAM_HEADER_LEN
        );
        let corrupt = ends
            .receiver_events
            .iter()
            .filter(|e| matches!(e, ReceiverEvent::Corrupt { .. }))
            .count();
        assert_eq!(corrupt, 1, "{what}: reported once");
        assert!(
            !ends
                .receiver_events
                .iter()
                .any(|e| matches!(e, ReceiverEvent::Closed { .. })),
            "{what}: nothing reported after Corrupt"
        );
        assert_sender_closed_once(&ends.sender_events);
        eprintln!("{what}: {last:?}");
    }
}

#[test]
fn a_flipped_header_byte_is_a_corrupt_header() {
    let wl = Workload::new(22, 100, 500);
    let ends = through_proxy(wl, Fault::Flip { at: 20 });
    assert!(ends.delivered.is_empty());
    assert!(matches!(
        ends.receiver_events.as_slice(),
        [ReceiverEvent::Corrupt {
            error: StreamError::Header(_)
        }]
    ));
    assert_sender_closed_once(&ends.sender_events);
}

#[test]
fn a_cut_mid_entry_delivers_every_whole_entry_then_an_unclean_close() {
    let wl = Workload::new(23, 3000, 1500);
    let (expected, offsets) = wl.expected(&header());
    let k = 1700;
    let ends = through_proxy(
        wl,
        Fault::Cut {
            at: offsets[k] + 13,
        },
    );
    assert!(ends.delivered == expected[STREAM_HEADER_LEN..offsets[k]]);
    let last = ends.receiver_events.last().expect("events");
    assert!(
        matches!(
            last,
            ReceiverEvent::Closed {
                reason: ChannelError::Truncated(StreamError::Entry(DecodeError::Incomplete { .. })),
                clean: false
            }
        ),
        "{last:?}"
    );
    assert_sender_closed_once(&ends.sender_events);
}

#[test]
fn a_cut_between_entries_is_a_clean_close() {
    let wl = Workload::new(24, 3000, 1500);
    let (expected, offsets) = wl.expected(&header());
    let k = 1200;
    let ends = through_proxy(wl, Fault::Cut { at: offsets[k] });
    assert!(ends.delivered == expected[STREAM_HEADER_LEN..offsets[k]]);
    assert_eq!(
        ends.receiver_events.last(),
        Some(&ReceiverEvent::Closed {
            reason: ChannelError::PeerClosed,
            clean: true
        })
    );
    assert_sender_closed_once(&ends.sender_events);
}

/// A hand-made backup: reads the stream with a StreamDecoder on a plain
/// blocking socket and writes whatever acks the test wants.
struct FakeBackup {
    stream: TcpStream,
    dec: StreamDecoder,
    last_seq: u64,
    /// Close with RST (SO_LINGER 0) after the script instead of reading on.
    reset: bool,
}

impl FakeBackup {
    /// Reads until at least `n` entries have arrived.
    fn read_entries(&mut self, n: u64) {
        let mut buf = vec![0u8; 64 << 10];
        while self.last_seq < n {
            let got = self.stream.read(&mut buf).expect("fake backup read");
            assert!(got > 0, "stream ended early");
            let mut feed = self.dec.feed(&buf[..got]);
            while let Some(item) = feed.next() {
                if let StreamItem::Entry(r) = item.expect("valid stream") {
                    self.last_seq = r.header.seq;
                }
            }
        }
    }
}

/// A sender whose peer is a fake backup; `script` writes acks. Returns the
/// sender's events once it has closed.
fn sender_vs_fake(script: impl FnOnce(&mut FakeBackup) + Send + 'static) -> Vec<SenderEvent> {
    let (client, server) = tcp_pair();
    server
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let fake = std::thread::spawn(move || {
        let mut fb = FakeBackup {
            stream: server,
            dec: StreamDecoder::new(),
            last_seq: 0,
            reset: false,
        };
        script(&mut fb);
        if fb.reset {
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            nix::sys::socket::setsockopt(&fb.stream, nix::sys::socket::sockopt::Linger, &linger)
                .expect("SO_LINGER");
            return;
        }
        // Stay until the sender hangs up.
        let mut sink = [0u8; 4096];
        while matches!(fb.stream.read(&mut sink), Ok(n) if n > 0) {}
    });
    let mut ring = ring();
    let (mut side, producer) = SenderSide::new(
        &ring,
        client,
        &small_log(4, 64 << 10),
        SenderOptions::default(),
        Registration::Table,
    );
    let producer = spawn_producer(producer, Workload::new(25, 2000, 1000));
    let deadline = Instant::now() + DEADLINE;
    drive_sender(&mut ring, &mut side, deadline, "the sender to close", |s| {
        s.closed()
    })
    .expect("sender");
    let SenderSide { engine, events, .. } = finish_sender(&mut ring, side);
    drop(engine);
    let _ = producer.join();
    fake.join().expect("fake backup");
    events
}

#[test]
fn split_and_batched_acks_are_accepted_and_a_bad_crc_closes_the_sender() {
    let events = sender_vs_fake(|fb| {
        fb.read_entries(100);
        let first = Ack {
            acked_seq: 10,
            replayed_seq: 5,
            replayed_exit: 3,
            diverged: false,
        }
        .encode();
        // One ack, a byte at a time.
        for b in first {
            fb.stream.write_all(&[b]).expect("write");
        }
        // Two in one write.
        let mut two = Ack {
            acked_seq: 50,
            replayed_seq: 40,
            replayed_exit: 30,
            diverged: false,
        }
        .encode()
        .to_vec();
        two.extend(
            Ack {
                acked_seq: 100,
                replayed_seq: 90,
                replayed_exit: 80,
                diverged: false,
            }
            .encode(),
        );
        fb.stream.write_all(&two).expect("write");
        // Then one with a damaged checksum.
        let mut bad = Ack {
            acked_seq: 100,
            replayed_seq: 100,
            replayed_exit: 90,
            diverged: false,
        }
        .encode();
        bad[36] ^= 1;
        fb.stream.write_all(&bad).expect("write");
    });
    let acked: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            SenderEvent::Acked { acked_seq, .. } => Some(*acked_seq),
            _ => None,
        })
        .collect();
    assert!(acked.windows(2).all(|w| w[0] <= w[1]), "{acked:?}");
    assert_eq!(acked.last(), Some(&100), "{events:?}");
    assert!(acked.contains(&10) || acked.contains(&50) || acked.len() == 1);
    assert!(
        matches!(
            events.last(),
            Some(SenderEvent::Closed {
                reason: ChannelError::BadAck(AckError::BadCrc { .. })
            })
        ),
        "{events:?}"
    );
    assert_sender_closed_once(&events);
}

#[test]
fn an_ack_for_entries_never_sent_closes_the_sender() {
    let events = sender_vs_fake(|fb| {
        fb.read_entries(1);
        let ack = Ack {
            acked_seq: 1 << 40,
            replayed_seq: 0,
            replayed_exit: 0,
            diverged: false,
        };
        fb.stream.write_all(&ack.encode()).expect("write");
    });
    assert!(
        matches!(
            events.as_slice(),
            [SenderEvent::Closed {
                reason: ChannelError::BadAck(AckError::Ahead { .. })
            }]
        ),
        "{events:?}"
    );
}

#[test]
fn a_backup_that_resets_the_connection_closes_the_sender_once() {
    let events = sender_vs_fake(|fb| {
        fb.read_entries(10);
        fb.reset = true;
    });
    assert!(
        matches!(
            events.as_slice(),
            [SenderEvent::Closed {
                reason: ChannelError::Socket { .. } | ChannelError::PeerClosed
            }]
        ),
        "{events:?}"
    );
}
