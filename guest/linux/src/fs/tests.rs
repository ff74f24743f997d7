//! The file system against an in-memory disk that can "crash" after any
//! write: every crash point must mount and keep everything synced.

use alloc::vec;
use alloc::vec::Vec;

use super::layout::BLOCK;
use super::*;

/// A disk in memory; `log` keeps every block write, in order, so a test can
/// rebuild the disk as it was after any prefix of them.
#[derive(Clone, Default)]
struct MemDev {
    data: Vec<u8>,
    log: Vec<(u64, Vec<u8>)>,
    fail_writes: bool,
    /// Applies each batch last write first (the device may finish a
    /// batch's writes in any order).
    reverse: bool,
}

impl MemDev {
    fn new(blocks: u64) -> MemDev {
        MemDev {
            data: vec![0; blocks as usize * BLOCK],
            ..Default::default()
        }
    }
}

impl BlockDev for MemDev {
    fn read(&mut self, block: u64, out: &mut [u8]) -> Result<(), IoError> {
        let at = block as usize * BLOCK;
        out.copy_from_slice(self.data.get(at..at + out.len()).ok_or(IoError)?);
        Ok(())
    }
    fn write(&mut self, writes: &[(u64, &[u8])]) -> Result<(), IoError> {
        if self.fail_writes {
            return Err(IoError);
        }
        let mut order: Vec<&(u64, &[u8])> = writes.iter().collect();
        if self.reverse {
            order.reverse();
        }
        for (block, d) in order {
            for (k, chunk) in d.chunks(BLOCK).enumerate() {
                let b = block + k as u64;
                let at = b as usize * BLOCK;
                self.data
                    .get_mut(at..at + BLOCK)
                    .ok_or(IoError)?
                    .copy_from_slice(chunk);
                self.log.push((b, chunk.to_vec()));
            }
        }
        Ok(())
    }
}

const BLOCKS: u64 = 1024;

/// A file system and its disk.
struct T {
    fs: Fs,
    dev: MemDev,
}

fn fresh() -> T {
    let mut dev = MemDev::new(BLOCKS);
    let (fs, m) = Fs::mount(&mut dev, BLOCKS, 1 << 20, 1).unwrap();
    assert!(m.formatted);
    T { fs, dev }
}

fn remount(mut dev: MemDev) -> T {
    let (fs, m) = Fs::mount(&mut dev, BLOCKS, 1 << 20, 2).unwrap();
    assert!(!m.formatted);
    T { fs, dev }
}

impl T {
    fn read_all(&mut self, ino: u32) -> Vec<u8> {
        let mut v = vec![0u8; self.fs.size(ino).unwrap() as usize];
        assert_eq!(
            self.fs.read(&mut self.dev, ino, 0, &mut v).unwrap(),
            v.len()
        );
        v
    }
    fn write(&mut self, ino: u32, off: u64, data: &[u8], now: u64) -> Result<usize, FsError> {
        self.fs.write(&mut self.dev, ino, off, data, now)
    }
    fn sync(&mut self) -> Result<(), FsError> {
        self.fs.sync(&mut self.dev)
    }
    fn truncate(&mut self, ino: u32, size: u64, now: u64) -> Result<(), FsError> {
        self.fs.truncate(&mut self.dev, ino, size, now)
    }
}

#[test]
fn files_and_directories_survive_a_remount() {
    let mut t = fresh();
    let dir =
        t.fs.create(ROOT, b"appendonlydir", Kind::Dir, 0o755, 5)
            .unwrap();
    let f =
        t.fs.create(dir, b"appendonly.aof.1.incr.aof", Kind::File, 0o644, 5)
            .unwrap();
    let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
    assert_eq!(t.write(f, 0, &payload, 6).unwrap(), payload.len());
    assert_eq!(t.write(f, 20_000, b"tail", 7).unwrap(), 4);
    t.sync().unwrap();
    let mut t = remount(t.dev.clone());
    let dir2 = t.fs.lookup(ROOT, b"appendonlydir").unwrap();
    let f2 = t.fs.lookup(dir2, b"appendonly.aof.1.incr.aof").unwrap();
    let back = t.read_all(f2);
    assert_eq!(back.len(), 20_004);
    assert_eq!(&back[..10_000], &payload[..]);
    assert!(
        back[10_000..20_000].iter().all(|b| *b == 0),
        "a hole reads as zeros"
    );
    assert_eq!(&back[20_000..], b"tail");
    assert_eq!(t.fs.stat(dir2).unwrap().nlink, 2);
    assert_eq!(t.fs.lookup(dir2, b"..").unwrap(), ROOT);
    assert_eq!(t.fs.readdir(ROOT).unwrap()[0].0, b"appendonlydir");
}

#[test]
fn namespace_rules_match_linux() {
    let mut t = fresh();
    let a = t.fs.create(ROOT, b"a", Kind::Dir, 0o755, 1).unwrap();
    let b = t.fs.create(a, b"b", Kind::Dir, 0o755, 1).unwrap();
    let f = t.fs.create(ROOT, b"f", Kind::File, 0o644, 1).unwrap();
    assert_eq!(
        t.fs.create(ROOT, b"f", Kind::File, 0o644, 1),
        Err(FsError::Exists)
    );
    assert_eq!(
        t.fs.rename(ROOT, b"a", b, b"x", 1),
        Err(FsError::Invalid),
        "below itself"
    );
    assert_eq!(t.fs.remove(ROOT, b"a", true, 1), Err(FsError::NotEmpty));
    assert_eq!(t.fs.remove(ROOT, b"a", false, 1), Err(FsError::IsDir));
    assert_eq!(t.fs.remove(ROOT, b"f", true, 1), Err(FsError::NotDir));
    assert_eq!(t.fs.rename(ROOT, b"f", ROOT, b"a", 1), Err(FsError::IsDir));
    assert_eq!(t.fs.lookup(ROOT, b"missing"), Err(FsError::NotFound));
    assert_eq!(t.fs.lookup(f, b"x"), Err(FsError::NotDir));
    assert_eq!(t.fs.lookup(ROOT, &[b'n'; 300]), Err(FsError::NameTooLong));
    // rename over an existing file replaces it; an open file outlives its name
    let g = t.fs.create(ROOT, b"g", Kind::File, 0o644, 1).unwrap();
    t.write(g, 0, b"old", 1).unwrap();
    t.fs.open(g).unwrap();
    t.write(f, 0, b"new", 1).unwrap();
    t.fs.rename(ROOT, b"f", ROOT, b"g", 1).unwrap();
    assert_eq!(t.fs.lookup(ROOT, b"g").unwrap(), f);
    assert_eq!(t.read_all(g), b"old", "still readable while open");
    t.fs.close(g);
    assert_eq!(t.fs.stat(g), Err(FsError::NotFound));
    t.fs.remove(a, b"b", true, 1).unwrap();
    t.fs.remove(ROOT, b"a", true, 1).unwrap();
}

#[test]
fn truncate_frees_blocks_only_after_the_commit_and_zeroes_the_tail() {
    let mut t = fresh();
    let f = t.fs.create(ROOT, b"f", Kind::File, 0o644, 1).unwrap();
    t.write(f, 0, &vec![7u8; 3 * BLOCK], 1).unwrap();
    t.sync().unwrap();
    let free = t.fs.free_bytes();
    t.truncate(f, 100, 2).unwrap();
    assert!(
        t.fs.free_bytes() <= free,
        "freed blocks stay pending until committed"
    );
    t.sync().unwrap();
    assert_eq!(t.fs.free_bytes(), free + 2 * BLOCK as u64);
    t.truncate(f, 5000, 3).unwrap();
    let back = t.read_all(f);
    assert!(back[..100].iter().all(|b| *b == 7));
    assert!(back[100..].iter().all(|b| *b == 0), "growing shows zeros");
}

#[test]
fn a_full_disk_fails_the_write_and_io_errors_fail_the_sync() {
    let mut t = fresh();
    let f = t.fs.create(ROOT, b"big", Kind::File, 0o644, 1).unwrap();
    let huge = vec![1u8; BLOCKS as usize * BLOCK];
    let n = t.write(f, 0, &huge, 1).unwrap();
    assert!(
        n > 0 && n < huge.len(),
        "a short write when the disk fills: {n}"
    );
    assert_eq!(t.write(f, n as u64, b"x", 1), Err(FsError::NoSpace));
    t.dev.fail_writes = true;
    assert_eq!(t.sync(), Err(FsError::Io));
    t.dev.fail_writes = false;
    t.sync().unwrap();
}

#[test]
fn a_crash_after_any_block_write_keeps_every_synced_append() {
    crash_test(false);
    crash_test(true);
}

fn crash_test(reverse: bool) {
    // The redis pattern: append a record, fdatasync, repeat.
    let mut t = fresh();
    t.dev.reverse = reverse;
    let f = t.fs.create(ROOT, b"aof", Kind::File, 0o644, 1).unwrap();
    t.sync().unwrap();
    let base = t.dev.clone();
    let start = base.log.len();
    let mut synced: Vec<(usize, Vec<u8>)> = Vec::new(); // (log length, content)
    let mut content = Vec::new();
    for i in 0..40u32 {
        let rec: Vec<u8> = alloc::format!(
            "*3\r\n$3\r\nSET\r\n$4\r\nk{i:03}\r\n$300\r\n{}\r\n",
            "v".repeat(300)
        )
        .into_bytes();
        let off = content.len() as u64;
        t.write(f, off, &rec, 10 + u64::from(i)).unwrap();
        content.extend_from_slice(&rec);
        t.sync().unwrap();
        synced.push((t.dev.log.len(), content.clone()));
    }
    let log = t.dev.log.clone();
    for cut in start..=log.len() {
        let mut dev = base.clone();
        for (b, d) in &log[start..cut] {
            let at = *b as usize * BLOCK;
            dev.data[at..at + BLOCK].copy_from_slice(d);
        }
        let mut t = remount(dev);
        let f = t.fs.lookup(ROOT, b"aof").unwrap();
        let got = t.read_all(f);
        let must = synced
            .iter()
            .rev()
            .find(|(n, _)| *n <= cut)
            .map_or(&[][..], |(_, c)| c);
        assert!(
            got.len() >= must.len(),
            "crash after write {cut}: lost synced data"
        );
        assert_eq!(
            &got[..],
            &content[..got.len()],
            "crash after write {cut}: garbage"
        );
    }
}
