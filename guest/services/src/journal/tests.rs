//! Journal tests over a simulated disk: roundtrip, torn and corrupt tails,
//! stale generations, compaction crash points, and a model-based random
//! crash test that checks the durability contract itself.

extern crate std;

use alloc::collections::BTreeMap;
use alloc::vec;
use alloc::vec::Vec;

use super::format::{COMMIT_HEADER, SECTOR, Superblock};
use super::recovery::{SUPERBLOCK_READ_SECTORS, Start, start};
use super::*;
use crate::engine::Engine;
use crate::store::Store;

/// A disk image in memory.
struct SimDisk {
    bytes: Vec<u8>,
}

impl SimDisk {
    fn new(sectors: u64) -> Self {
        SimDisk {
            bytes: vec![0; sectors as usize * SECTOR],
        }
    }
    fn sectors(&self) -> u64 {
        (self.bytes.len() / SECTOR) as u64
    }
    fn write(&mut self, w: &DiskWrite) {
        let at = w.sector as usize * SECTOR;
        self.bytes[at..at + w.data.len()].copy_from_slice(&w.data);
    }
    /// Writes only the sectors of `w` for which `keep(i)` holds.
    fn write_some(&mut self, w: &DiskWrite, mut keep: impl FnMut(usize) -> bool) {
        for (i, s) in w.data.chunks(SECTOR).enumerate() {
            if keep(i) {
                let at = (w.sector as usize + i) * SECTOR;
                self.bytes[at..at + SECTOR].copy_from_slice(s);
            }
        }
    }
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, u64)>;

fn live(store: &Store, now_ms: u64) -> Model {
    store
        .iter()
        .filter(|(_, e)| !e.expired(now_ms))
        .map(|(k, e)| (k.clone(), (e.value.clone(), e.expire_at_ms)))
        .collect()
}

/// Boots an engine from the disk the way the kernel does.
fn boot(disk: &mut SimDisk, now_ns: u64) -> (Engine, Option<RecoveryReport>) {
    let sb = disk.bytes[..SUPERBLOCK_READ_SECTORS as usize * SECTOR].to_vec();
    match start(&sb, disk.sectors()) {
        Start::Blank(layout) => {
            let mut e = Engine::format(layout, now_ns);
            settle(&mut e, disk);
            (e, None)
        }
        Start::TooSmall => panic!("disk too small"),
        Start::Scan(mut r) => {
            let mut store = Store::new();
            while let Some((s, n)) = r.next_read() {
                let at = s as usize * SECTOR;
                let data = disk.bytes[at..at + n].to_vec();
                r.feed(&data, &mut store);
            }
            let (j, report) = r.finish(&mut store, now_ns / 1_000_000);
            let mut e = Engine::durable_with(store, j, now_ns);
            e.recovery = Some(report);
            (e, Some(report))
        }
    }
}

/// Runs every pending write to completion.
fn settle(e: &mut Engine, disk: &mut SimDisk) {
    while let Some(w) = e.next_write() {
        disk.write(&w);
        e.write_done(true);
    }
}

const NOW: u64 = 1_700_000_000_000_000_000;

#[test]
fn roundtrip_through_the_disk() {
    let mut disk = SimDisk::new(4096);
    let (mut e, rep) = boot(&mut disk, NOW);
    assert!(rep.is_none(), "blank disk is formatted");
    e.set(b"a", b"1".to_vec(), 0);
    e.set(b"b", b"2".to_vec(), 0);
    settle(&mut e, &mut disk);
    e.append(b"a", b"23");
    e.del(b"b");
    e.set(b"c", vec![7; 3000], 0);
    e.set(b"t", b"x".to_vec(), NOW / 1_000_000 + 50);
    e.expire(b"c", NOW / 1_000_000 + 1_000_000);
    settle(&mut e, &mut disk);
    assert_eq!(e.durable(), 2);
    let want = live(&e.store, NOW / 1_000_000);

    let (e2, rep) = boot(&mut disk, NOW);
    let rep = rep.expect("recovered");
    assert_eq!(rep.commits, 2);
    assert_eq!(rep.records, 7);
    assert_eq!(rep.tail, Tail::Clean);
    assert_eq!(live(&e2.store, NOW / 1_000_000), want);

    // Later than the TTL: the expired key is dropped at recovery.
    let (e3, rep) = boot(&mut disk, NOW + 100_000_000);
    assert_eq!(rep.map(|r| r.expired), Some(1));
    assert!(e3.store.peek(b"t").is_none());
    assert_eq!(e3.store.len(), 2);
}

#[test]
fn flush_and_recreate_replays_in_order() {
    let mut disk = SimDisk::new(4096);
    let (mut e, _) = boot(&mut disk, NOW);
    e.set(b"k", b"old".to_vec(), 0);
    e.flush();
    e.set(b"k", b"new".to_vec(), 0);
    settle(&mut e, &mut disk);
    let (e2, _) = boot(&mut disk, NOW);
    assert_eq!(e2.store.peek(b"k").map(|x| &x.value[..]), Some(&b"new"[..]));
}

/// Writes two batches, the second spanning several sectors, and returns
/// the disk plus the second batch's write (not yet applied).
fn two_batches() -> (SimDisk, DiskWrite, Model) {
    let mut disk = SimDisk::new(4096);
    let (mut e, _) = boot(&mut disk, NOW);
    e.set(b"first", b"1".to_vec(), 0);
    settle(&mut e, &mut disk);
    let want = live(&e.store, 0);
    e.set(b"second", vec![9; 2000], 0);
    e.set(b"third", b"3".to_vec(), 0);
    let w = e.next_write().expect("a commit");
    assert!(w.data.len() >= 4 * SECTOR);
    (disk, w, want)
}

#[test]
fn torn_commit_is_dropped_whole() {
    for keep in [
        &[true, false, false, false, false][..],
        &[true, true, true, false, true],
        &[false, true, true, true, true],
    ] {
        let (mut disk, w, want) = two_batches();
        disk.write_some(&w, |i| keep.get(i).copied().unwrap_or(true));
        let (e, rep) = boot(&mut disk, NOW);
        let rep = rep.expect("recovered");
        assert_eq!(live(&e.store, 0), want, "keep {keep:?}");
        assert_eq!(rep.commits, 1);
        if keep[0] {
            assert!(
                matches!(rep.tail, Tail::Dropped { at_sector, .. } if at_sector == w.sector),
                "{:?}",
                rep.tail
            );
        } else {
            assert_eq!(rep.tail, Tail::Clean, "first sector never written");
        }
    }
}

#[test]
fn truncated_mid_record_is_dropped() {
    let (mut disk, w, want) = two_batches();
    let mut cut = w.clone();
    // The write stopped 100 bytes into the second record's sector.
    let stop = COMMIT_HEADER + 700;
    for b in &mut cut.data[stop..] {
        *b = 0;
    }
    disk.write(&cut);
    let (e, rep) = boot(&mut disk, NOW);
    assert_eq!(live(&e.store, 0), want);
    assert!(matches!(
        rep.map(|r| r.tail),
        Some(Tail::Dropped {
            reason: "torn or corrupt commit",
            ..
        })
    ));
}

#[test]
fn corrupted_byte_in_the_tail_is_dropped() {
    for offset in [4, 30, COMMIT_HEADER + 3, COMMIT_HEADER + 20, 1500] {
        let (mut disk, w, want) = two_batches();
        disk.write(&w);
        disk.bytes[w.sector as usize * SECTOR + offset] ^= 0x10;
        let (e, rep) = boot(&mut disk, NOW);
        let rep = rep.expect("recovered");
        assert_eq!(live(&e.store, 0), want, "offset {offset}");
        assert!(
            matches!(rep.tail, Tail::Dropped { .. }),
            "offset {offset}: {:?}",
            rep.tail
        );
    }
}

#[test]
fn writes_after_a_dropped_tail_never_resurrect_it() {
    let (mut disk, w, want) = two_batches();
    // Everything but the first sector of the second commit reached the disk.
    disk.write_some(&w, |i| i != 0);
    let (mut e, _) = boot(&mut disk, NOW);
    assert_eq!(live(&e.store, 0), want);
    // A new, shorter commit lands where the torn one started; the torn
    // commit's later sectors still follow it on the disk.
    e.set(b"fourth", b"4".to_vec(), 0);
    settle(&mut e, &mut disk);
    let mut want2 = want.clone();
    want2.insert(b"fourth".to_vec(), (b"4".to_vec(), 0));
    let (e2, rep) = boot(&mut disk, NOW);
    assert_eq!(live(&e2.store, 0), want2);
    assert!(matches!(
        rep.map(|r| r.tail),
        Some(Tail::Clean | Tail::Stale)
    ));
}

/// Fills a small disk until the next commit compacts; returns the engine,
/// the disk, the state after the last durable batch, and the snapshot
/// write (not yet applied).
fn until_compaction() -> (Engine, SimDisk, Model, DiskWrite) {
    let mut disk = SimDisk::new(8 + 2 * 64);
    let (mut e, _) = boot(&mut disk, NOW);
    let g = e.journal().map(|j| j.generation());
    let mut i = 0u32;
    loop {
        let before = live(&e.store, 0);
        // Overwrite a few keys so the live data stays small.
        e.set(&[b'k', (i % 4) as u8], vec![i as u8; 900], 0);
        i += 1;
        let w = e.next_write().expect("a write");
        if e.journal().map(|j| j.record_generation()) != g {
            return (e, disk, before, w);
        }
        disk.write(&w);
        e.write_done(true);
    }
}

#[test]
fn compaction_crash_points() {
    // 1. Crash before the snapshot reaches the disk, or with it torn.
    for keep_all in [false, true] {
        let (e, mut disk, before, snap) = until_compaction();
        let _ = e;
        if keep_all {
            disk.write(&snap); // snapshot complete, superblock not written
        } else {
            disk.write_some(&snap, |i| i % 2 == 0);
        }
        let (r, rep) = boot(&mut disk, NOW);
        assert_eq!(live(&r.store, 0), before);
        assert_eq!(rep.map(|r| r.generation), Some(1));
    }
    // 2. Crash with a torn superblock: the old one wins.
    let (mut e, mut disk, before, snap) = until_compaction();
    disk.write(&snap);
    e.write_done(true);
    let sbw = e.next_write().expect("the superblock write");
    assert_eq!(sbw.data.len(), SECTOR);
    let mut torn = sbw.clone();
    torn.data[100..].fill(0xAA);
    torn.data[20] ^= 1;
    disk.write(&torn);
    let (r, rep) = boot(&mut disk, NOW);
    assert_eq!(live(&r.store, 0), before);
    assert_eq!(rep.map(|r| r.generation), Some(1));
    // 3. The superblock is durable: the new half wins and holds the batch.
    let after = live(&e.store, 0);
    disk.write(&sbw);
    e.write_done(true);
    assert_eq!(e.durable(), e.open_batch() - 1);
    let (r, rep) = boot(&mut disk, NOW);
    assert_eq!(live(&r.store, 0), after);
    assert_eq!(rep.map(|r| r.generation), Some(2));
}

#[test]
fn stale_generation_in_a_reused_half_is_ignored() {
    // Run through several compactions so half 1 is reused by generation 3.
    let mut disk = SimDisk::new(8 + 2 * 64);
    let (mut e, _) = boot(&mut disk, NOW);
    let mut i = 0u32;
    while e.journal().map(|j| j.generation()) != Some(3) {
        e.set(&[b'k', (i % 3) as u8], vec![i as u8; 700], 0);
        let g = e.journal().map(|j| j.generation()).unwrap_or(0);
        e.set(b"gen", g.to_le_bytes().to_vec(), 0);
        i += 1;
        settle(&mut e, &mut disk);
    }
    let want = live(&e.store, 0);
    let sb = Superblock::decode(&disk.bytes[SECTOR..2 * SECTOR], disk.sectors());
    assert_eq!(sb.map(|s| s.generation), Some(3));
    let (r, rep) = boot(&mut disk, NOW);
    let rep = rep.expect("recovered");
    assert_eq!(rep.generation, 3);
    assert_eq!(live(&r.store, 0), want);
    assert!(matches!(rep.tail, Tail::Stale | Tail::Clean));
}

#[test]
fn full_disk_refuses_growth_but_allows_deletes() {
    let mut disk = SimDisk::new(8 + 2 * 64);
    let (mut e, _) = boot(&mut disk, NOW);
    let mut n = 0;
    loop {
        let v = vec![1u8; 1000];
        if e.admit(crate::journal::format::set_record_len(2, v.len()) as u64)
            .is_err()
        {
            break;
        }
        e.set(&[b'k', n], v, 0);
        n += 1;
        settle(&mut e, &mut disk);
    }
    assert!(n > 5);
    assert!(e.admit_shrink().is_ok());
    assert!(e.del(&[b'k', 0]));
    settle(&mut e, &mut disk);
    assert!(!e.failed());
    let want = live(&e.store, 0);
    let (r, _) = boot(&mut disk, NOW);
    assert_eq!(live(&r.store, 0), want);
}

/// Tiny deterministic PRNG for the model test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The durability contract under random crashes: after any crash the
/// recovered state equals the state after some batch between the last
/// acknowledged one and the last one submitted.
#[test]
fn random_crashes_never_lose_acknowledged_batches() {
    let mut max_generation = 0;
    let mut dropped_tails = 0;
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut disk = SimDisk::new(8 + 2 * 96);
        let mut now = NOW;
        let (mut e, _) = boot(&mut disk, now);
        for _crash in 0..6 {
            // States after each closed batch, by batch id.
            let mut states: BTreeMap<u64, Model> = BTreeMap::new();
            states.insert(e.durable(), live(&e.store, 0));
            let base_durable = e.durable();
            let mut inflight: Option<DiskWrite> = None;
            let steps = 20 + rng.below(60);
            for _ in 0..steps {
                now += rng.below(50) * 1_000_000;
                e.tick(now);
                for _ in 0..rng.below(4) {
                    let key = [b'k', rng.below(12) as u8];
                    let grow = 2000;
                    if e.admit(grow).is_err() {
                        e.del(&key);
                        continue;
                    }
                    match rng.below(10) {
                        0..=4 => {
                            let len = rng.below(600) as usize;
                            let exp = if rng.below(4) == 0 {
                                now / 1_000_000 + rng.below(200)
                            } else {
                                0
                            };
                            e.set(&key, vec![rng.below(256) as u8; len], exp);
                        }
                        5 => {
                            e.del(&key);
                        }
                        6 => {
                            e.append(&key, &[rng.below(256) as u8; 17]);
                        }
                        7 => {
                            e.expire(&key, now / 1_000_000 + rng.below(100));
                        }
                        8 => {
                            e.expire(&key, 0);
                        }
                        _ => {
                            if rng.below(8) == 0 {
                                e.flush();
                            }
                        }
                    }
                }
                if let Some(w) = inflight.take() {
                    if rng.below(3) == 0 {
                        inflight = Some(w);
                    } else {
                        disk.write(&w);
                        e.write_done(true);
                    }
                }
                if inflight.is_none() && !e.write_in_flight() {
                    let closing = e.open_batch();
                    let snapshot = live(&e.store, 0);
                    if let Some(w) = e.next_write() {
                        if e.open_batch() != closing {
                            states.insert(closing, snapshot);
                        }
                        inflight = Some(w);
                    }
                }
                assert!(!e.failed());
            }
            // Crash, maybe with the in-flight write partly on disk.
            if let Some(w) = inflight.take() {
                match rng.below(3) {
                    0 => {}
                    1 => disk.write(&w),
                    _ => {
                        let mask = rng.next();
                        disk.write_some(&w, |i| mask >> (i % 64) & 1 == 1);
                    }
                }
            }
            let acked = e.durable();
            let (r, rep) = boot(&mut disk, now);
            let got = live(&r.store, now / 1_000_000);
            let ok = states.range(acked.max(base_durable)..).any(|(_, m)| {
                let m: Model = m
                    .iter()
                    .filter(|(_, (_, x))| *x == 0 || *x > now / 1_000_000)
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                m == got
            });
            assert!(
                ok,
                "seed {seed}: recovered state matches no batch ≥ {acked}; {rep:?}"
            );
            if let Some(rep) = rep {
                max_generation = max_generation.max(rep.generation);
                dropped_tails += usize::from(matches!(rep.tail, Tail::Dropped { .. }));
            }
            e = r;
        }
    }
    assert!(max_generation >= 3, "the test must exercise compactions");
    assert!(dropped_tails > 0, "the test must exercise torn tails");
}
