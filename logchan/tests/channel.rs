//! The logging channel end to end: a producer thread appends random
//! entries, a SenderEngine on its own io_uring ships them over loopback TCP,
//! a ReceiverEngine on another thread and ring verifies and hands them on
//! and acks. Checks: the delivered bytes are the produced stream exactly,
//! acks reach the last seq, every segment is released, in every send mode.

mod common;

use std::time::Instant;

use common::chan::{
    DEADLINE, ReceiverSide, SenderSide, Workload, drive_receiver, drive_sender, finish_receiver,
    finish_sender, opened_pair, ring, small_log, spawn_producer, tcp_pair,
};
use common::header;
use logchan::channel::io_uring::{Probe, opcode};
use logchan::channel::{
    ChannelError, ReceiverEvent, ReceiverOptions, RecvMode, Registration, SendMode, SenderEvent,
    SenderOptions, SenderStats,
};
use logchan::secure::PairKey;
use logchan::{LogConfig, STREAM_HEADER_LEN};

struct Case {
    wl: Workload,
    log: LogConfig,
    send: SenderOptions,
    send_reg: Registration,
    recv: ReceiverOptions,
    recv_reg: Registration,
    /// Through an authenticated channel (records under a fresh session).
    sealed: bool,
}

struct Outcome {
    /// The mode `attach` chose, and the one at the end.
    attached: SendMode,
    mode: SendMode,
    recv_mode: RecvMode,
    stats: SenderStats,
}

fn kernel_has_send_zc() -> bool {
    let r = ring();
    let mut p = Probe::new();
    r.submitter().register_probe(&mut p).expect("probe");
    p.is_supported(opcode::SendZc::CODE)
}

/// Runs one whole stream and checks everything the contract promises.
fn run_case(case: Case) -> Outcome {
    let Case {
        wl,
        log,
        send,
        send_reg,
        recv,
        recv_reg,
        sealed,
    } = case;
    let ((client, send_session), (server, recv_session)) = if sealed {
        let key = PairKey::generate().expect("key");
        let ((c, cs), (s, ss)) = opened_pair(&key);
        ((c, cs.records), (s, ss.records))
    } else {
        let (c, s) = tcp_pair();
        ((c, None), (s, None))
    };
    let deadline = Instant::now() + DEADLINE;

    let sender = std::thread::spawn(move || {
        let mut ring = ring();
        let (mut side, producer) =
            SenderSide::sealed(&ring, client, &log, send, send_reg, send_session);
        let producer = spawn_producer(producer, wl);
        drive_sender(&mut ring, &mut side, deadline, "every entry acked", |s| {
            s.closed_or_all_acked()
        })?;
        let side = finish_sender(&mut ring, side);
        let last = producer.join().map_err(|_| "producer panicked")??;
        Ok::<_, String>((side, last))
    });
    let receiver = std::thread::spawn(move || {
        let mut ring = ring();
        let mut side = ReceiverSide::sealed(&ring, server, recv, recv_reg, recv_session);
        drive_receiver(&mut ring, &mut side, deadline, "end of stream", |s| {
            s.ended()
        })?;
        Ok::<_, String>(finish_receiver(&mut ring, side))
    });
    let (sender, last_seq): (SenderSide, u64) =
        sender.join().expect("sender thread").expect("sender side");
    let receiver = receiver
        .join()
        .expect("receiver thread")
        .expect("receiver side");

    // The receiver: header, entries exactly as produced, a clean end.
    let (expected, offsets) = wl.expected(&header());
    assert_eq!(last_seq, wl.entries as u64);
    assert_eq!(offsets.len(), wl.entries);
    assert_eq!(
        receiver.events.first(),
        Some(&ReceiverEvent::Header(header()))
    );
    assert_eq!(
        receiver.events.last(),
        Some(&ReceiverEvent::Closed {
            reason: ChannelError::PeerClosed,
            clean: true
        })
    );
    assert!(
        receiver.delivered == expected[STREAM_HEADER_LEN..],
        "delivered {} bytes, expected {}; first difference at {:?}",
        receiver.delivered.len(),
        expected.len() - STREAM_HEADER_LEN,
        receiver
            .delivered
            .iter()
            .zip(&expected[STREAM_HEADER_LEN..])
            .position(|(a, b)| a != b)
    );
    // Entries events are contiguous and describe their bytes.
    let mut next_seq = 1;
    for e in &receiver.events {
        if let ReceiverEvent::Entries {
            bytes,
            first_seq,
            last_seq,
            ..
        } = e
        {
            assert_eq!(*first_seq, next_seq);
            assert!(last_seq >= first_seq && !bytes.is_empty());
            next_seq = last_seq + 1;
        }
    }
    assert_eq!(next_seq, last_seq + 1);
    let rstats = receiver.engine.stats();
    assert_eq!(rstats.entries_received, last_seq);
    // Sealed, the wire carries the records: the stream plus a prefix and a
    // tag per record.
    let wire = if sealed {
        expected.len() as u64..=expected.len() as u64 * 2
    } else {
        expected.len() as u64..=expected.len() as u64
    };
    assert!(wire.contains(&rstats.bytes_received), "{rstats:?}");
    assert_eq!(receiver.engine.received_seq(), last_seq);

    // The sender: everything sent, acked up to the last seq, all released.
    let stats = sender.engine.stats();
    assert!(!sender.closed(), "sender closed: {:?}", sender.events);
    assert_eq!(stats.bytes_sent, rstats.bytes_received);
    assert_eq!(stats.entries_sent, last_seq);
    assert_eq!(stats.segments_in_flight, 0, "every segment released");
    assert_eq!(stats.acked_seq, last_seq);
    assert!(stats.last_ack.is_some() && stats.acks_received > 0);
    let log = sender.engine.log_stats();
    assert_eq!(log.entries, last_seq);
    assert_eq!(stats.segments_sent, log.segments);
    let mut prev = 0;
    for e in &sender.events {
        if let SenderEvent::Acked {
            acked_seq,
            replayed_seq,
            ..
        } = e
        {
            assert!(*acked_seq >= prev && replayed_seq <= acked_seq);
            prev = *acked_seq;
        }
    }
    assert_eq!(prev, last_seq);
    if sender.attached != SendMode::Copy {
        // Zero-copy sends were made, and their notifications came back.
        assert!(stats.zc_notifications > 0);
    }
    eprintln!(
        "mode {:?}/{:?}: {} bytes, {} entries, {} segments in {} sends ({} partial), \
         {} zc notifications ({} copied), {} acks",
        stats.mode,
        rstats.mode,
        stats.bytes_sent,
        stats.entries_sent,
        stats.segments_sent,
        stats.send_ops,
        stats.partial_sends,
        stats.zc_notifications,
        stats.zc_copied,
        stats.acks_received
    );
    Outcome {
        attached: sender.attached,
        mode: stats.mode.expect("attached"),
        recv_mode: rstats.mode.expect("attached"),
        stats,
    }
}

fn default_case(seed: u64) -> Case {
    Case {
        wl: Workload::new(seed, 20_000, 3000),
        log: small_log(4, 256 << 10),
        send: SenderOptions::default(),
        send_reg: Registration::Table,
        recv: ReceiverOptions::default(),
        recv_reg: Registration::Table,
        sealed: false,
    }
}

#[test]
fn stream_arrives_exactly_and_is_acked_in_the_automatic_mode() {
    let out = run_case(default_case(1));
    assert_eq!(out.recv_mode, RecvMode::Fixed);
    if !kernel_has_send_zc() {
        eprintln!("SKIP zero-copy check: this kernel's io_uring lacks IORING_OP_SEND_ZC");
        assert_eq!(out.attached, SendMode::Copy);
        return;
    }
    assert_eq!(out.attached, SendMode::ZeroCopyFixed);
    // Loopback copies every zero-copy send (the notifications say so):
    // after a run of those the sender switches to plain sends.
    let st = out.stats;
    if st.zc_copied == st.zc_notifications && st.zc_notifications >= 64 {
        assert_eq!(out.mode, SendMode::Copy);
        assert!(st.send_ops > st.zc_notifications, "plain sends followed");
    } else {
        assert_eq!(out.mode, SendMode::ZeroCopyFixed);
    }
}

#[test]
fn stream_arrives_exactly_and_is_acked_with_send_zc_from_registered_buffers() {
    if !kernel_has_send_zc() {
        eprintln!("SKIP: this kernel's io_uring lacks IORING_OP_SEND_ZC");
        return;
    }
    let case = Case {
        send: SenderOptions::forced(SendMode::ZeroCopyFixed),
        ..default_case(7)
    };
    let out = run_case(case);
    // Forced: kept to the end, every send but the header's zero-copy.
    assert_eq!(out.attached, SendMode::ZeroCopyFixed);
    assert_eq!(out.mode, SendMode::ZeroCopyFixed);
    assert_eq!(out.stats.zc_notifications, out.stats.send_ops - 1);
}

#[test]
fn a_sealed_stream_arrives_exactly_and_is_acked_in_the_automatic_mode() {
    let out = run_case(Case {
        sealed: true,
        ..default_case(11)
    });
    assert_eq!(out.recv_mode, RecvMode::Fixed);
    assert!(out.stats.acks_received > 0);
}

#[test]
fn a_sealed_stream_arrives_exactly_with_send_zc_from_the_sealed_buffers() {
    if !kernel_has_send_zc() {
        eprintln!("SKIP: this kernel's io_uring lacks IORING_OP_SEND_ZC");
        return;
    }
    let out = run_case(Case {
        sealed: true,
        send: SenderOptions::forced(SendMode::ZeroCopyFixed),
        ..default_case(12)
    });
    assert_eq!(out.mode, SendMode::ZeroCopyFixed);
    // Sealed, the header goes as a record like everything else.
    assert_eq!(out.stats.zc_notifications, out.stats.send_ops);
}

#[test]
fn a_sealed_stream_through_two_small_buffers_with_plain_sends_releases_every_segment() {
    let out = run_case(Case {
        sealed: true,
        wl: Workload::new(13, 60_000, 1500),
        log: small_log(2, 64 << 10),
        send: SenderOptions {
            max_send: 100 << 10,
            ..SenderOptions::forced(SendMode::Copy)
        },
        ..default_case(13)
    });
    assert_eq!(out.stats.segments_in_flight, 0);
}

#[test]
fn stream_arrives_exactly_and_is_acked_with_plain_sends() {
    let case = Case {
        send: SenderOptions::forced(SendMode::Copy),
        ..default_case(2)
    };
    let out = run_case(case);
    assert_eq!(out.mode, SendMode::Copy);
    assert_eq!(out.stats.zc_notifications, 0);
}

#[test]
fn stream_with_send_zc_without_registered_buffers_and_plain_receives() {
    if !kernel_has_send_zc() {
        eprintln!("SKIP: this kernel's io_uring lacks IORING_OP_SEND_ZC");
        return;
    }
    let case = Case {
        send: SenderOptions::forced(SendMode::ZeroCopy),
        send_reg: Registration::None,
        recv: ReceiverOptions {
            mode: Some(RecvMode::Plain),
            ..ReceiverOptions::default()
        },
        recv_reg: Registration::None,
        ..default_case(3)
    };
    let out = run_case(case);
    assert_eq!(out.mode, SendMode::ZeroCopy);
    assert_eq!(out.stats.zc_notifications, out.stats.send_ops - 1);
    assert_eq!(out.recv_mode, RecvMode::Plain);
}

#[test]
fn buffers_go_into_slots_of_a_shared_sparse_table() {
    // The VMM's ring is shared by several engines: the I/O thread creates
    // a sparse table and gives each engine a range of slots.
    let (client, server) = tcp_pair();
    let deadline = Instant::now() + DEADLINE;
    let wl = Workload::new(4, 3000, 2000);
    let sender = std::thread::spawn(move || {
        let mut ring = ring();
        ring.submitter()
            .register_buffers_sparse(16)
            .expect("sparse table");
        let (mut side, producer) = SenderSide::new(
            &ring,
            client,
            &small_log(4, 64 << 10),
            SenderOptions::default(),
            Registration::Slots { offset: 5 },
        );
        let producer = spawn_producer(producer, wl);
        drive_sender(&mut ring, &mut side, deadline, "every entry acked", |s| {
            s.closed_or_all_acked()
        })?;
        let attached = side.attached;
        let side = finish_sender(&mut ring, side);
        producer.join().map_err(|_| "producer panicked")??;
        if kernel_has_send_zc() && attached != SendMode::ZeroCopyFixed {
            return Err(format!("attached in {attached:?}"));
        }
        Ok::<_, String>(side.engine.stats())
    });
    let receiver = std::thread::spawn(move || {
        let mut ring = ring();
        ring.submitter()
            .register_buffers_sparse(8)
            .expect("sparse table");
        let mut side = ReceiverSide::new(
            &ring,
            server,
            ReceiverOptions::default(),
            Registration::Slots { offset: 3 },
        );
        drive_receiver(&mut ring, &mut side, deadline, "end of stream", |s| {
            s.ended()
        })?;
        Ok::<_, String>(finish_receiver(&mut ring, side))
    });
    let stats = sender.join().expect("sender thread").expect("sender");
    let recv = receiver.join().expect("receiver thread").expect("receiver");
    let (expected, _) = wl.expected(&header());
    assert_eq!(recv.delivered, expected[STREAM_HEADER_LEN..]);
    assert_eq!(stats.acked_seq, 3000);
    if kernel_has_send_zc() {
        assert!(stats.zc_notifications > 0, "sent from the registered slots");
    }
    assert_eq!(recv.engine.mode(), Some(RecvMode::Fixed));
}

#[test]
fn long_run_through_two_small_buffers_releases_every_segment() {
    // 2 buffers of 64 KiB carry ~100 MiB: the producer can only go on if
    // the sender gives every segment back once the kernel is done with it.
    let case = Case {
        wl: Workload::new(5, 60_000, 3500),
        log: small_log(2, 64 << 10),
        ..default_case(5)
    };
    let out = run_case(case);
    assert_eq!(out.stats.entries_sent, 60_000);
}

#[test]
fn header_alone_then_a_clean_end() {
    let case = Case {
        wl: Workload::new(6, 0, 0),
        ..default_case(6)
    };
    let (client, server) = tcp_pair();
    let deadline = Instant::now() + DEADLINE;
    let Case { log, send, .. } = case;
    let sender = std::thread::spawn(move || {
        let mut ring = ring();
        let (mut side, producer) = SenderSide::new(&ring, client, &log, send, Registration::Table);
        producer.finish().map_err(|e| e.to_string())?;
        drive_sender(&mut ring, &mut side, deadline, "header sent", |s| {
            s.engine.is_drained() && !s.engine.has_unsent()
        })?;
        Ok::<_, String>(finish_sender(&mut ring, side).engine.stats())
    });
    let mut r = ring();
    let mut side = ReceiverSide::new(&r, server, ReceiverOptions::default(), Registration::Table);
    drive_receiver(&mut r, &mut side, deadline, "end of stream", |s| s.ended()).expect("receiver");
    let side = finish_receiver(&mut r, side);
    let stats = sender.join().expect("sender thread").expect("sender");
    assert_eq!(stats.bytes_sent, STREAM_HEADER_LEN as u64);
    assert_eq!(
        side.events,
        vec![
            ReceiverEvent::Header(header()),
            ReceiverEvent::Closed {
                reason: ChannelError::PeerClosed,
                clean: true
            }
        ]
    );
}
