//! Arbitrary bytes into the guest's protocol front ends: the RESP and HTTP
//! sessions (parsers + command executor + router) over a durable engine
//! whose commits are completed as they are asked for, and the journal's
//! recovery over an arbitrary disk image. Checks: nothing panics; replies
//! only leave once durable; a session that closes stops producing output.
//!
//! Input: byte 0 picks the chunk size the input is cut into (requests
//! arriving in pieces), byte 1 the mode (bit 0: also feed the bytes as a
//! disk image to recovery; bit 1: prefix a valid RESP command so parsing
//! goes deep), the rest is data.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lockstep_guest_services::journal::format::SECTOR;
use lockstep_guest_services::journal::recovery::{self, Start};
use lockstep_guest_services::journal::{Layout, SUPERBLOCK_READ_SECTORS};
use lockstep_guest_services::store::Store;
use lockstep_guest_services::{Engine, HttpSession, RespSession};

const T0: u64 = 1_700_000_000_000_000_000;

fn engine() -> Engine {
    let layout = Layout::for_capacity(8 + 2 * 256).expect("layout");
    let mut e = Engine::format(layout, T0);
    while e.next_write().is_some() {
        e.write_done(true);
    }
    e
}

fn recover(image: &[u8]) {
    let sectors = (image.len() / SECTOR) as u64;
    let mut sb = vec![0u8; SUPERBLOCK_READ_SECTORS as usize * SECTOR];
    let n = image.len().min(sb.len());
    sb[..n].copy_from_slice(&image[..n]);
    if let Start::Scan(mut r) = recovery::start(&sb, sectors) {
        let mut store = Store::new();
        while let Some((s, len)) = r.next_read() {
            let at = s as usize * SECTOR;
            let mut chunk = vec![0u8; len];
            if at < image.len() {
                let m = (image.len() - at).min(len);
                chunk[..m].copy_from_slice(&image[at..at + m]);
            }
            r.feed(&chunk, &mut store);
        }
        let _ = r.finish(&mut store, T0 / 1_000_000);
    }
}

fuzz_target!(|input: &[u8]| {
    let (chunk, mode, data) = match input {
        [c, m, rest @ ..] => (usize::from(*c).max(1), *m, rest),
        _ => return,
    };
    if mode & 1 != 0 {
        recover(data);
    }
    let mut bytes = Vec::with_capacity(data.len() + 32);
    if mode & 2 != 0 {
        bytes.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n");
    }
    bytes.extend_from_slice(data);

    let mut e = engine();
    let mut resp = RespSession::new(&mut e, b"1.2.3.4:5".to_vec(), b"5.6.7.8:6379".to_vec());
    let mut http = HttpSession::new();
    for piece in bytes.chunks(chunk) {
        resp.push_input(piece);
        http.push_input(piece);
        loop {
            let a = resp.process(&mut e);
            let b = http.process(&mut e);
            // Durable only after the commit completes: before, nothing
            // generated after a write may leave.
            let before = e.durable();
            let _ = resp.sendable(before).len();
            if let Some(w) = e.next_write() {
                assert!(w.data.len() % SECTOR == 0 && !w.data.is_empty());
                e.write_done(true);
            }
            let d = e.durable();
            let n = resp.sendable(d).len();
            resp.consume(n);
            let n = http.sendable(d).len();
            http.consume(n);
            if !a.more && !b.more {
                break;
            }
        }
        assert!(!resp.has_held_output() || e.has_pending_writes());
    }
});
