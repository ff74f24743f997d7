//! The disk engine on a real io_uring and real files: data round trips,
//! IO serialization, the output gate, drop mode, drain, and IO errors.

use std::os::unix::fs::FileExt;
use std::path::Path;

use blkio::{
    AlignedBuf, BlkError, Completion, DiskEngine, DiskImage, DiskOpenOptions, Request, RequestOp,
    STATUS_IOERR, STATUS_OK,
};
use io_uring::{CompletionQueue, IoUring, SubmissionQueue, Submitter};

const TAG: u8 = 7;
const IMAGE_SIZE: u64 = 1 << 20;

/// An io_uring, or `None` with the reason printed (some sandboxes forbid it).
fn ring_or_skip() -> Option<IoUring> {
    match IoUring::new(64) {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("SKIP: io_uring is not available here: {e}");
            None
        }
    }
}

fn image(dir: &Path) -> DiskImage {
    let img = DiskImage::open(
        dir.join("disk.img"),
        DiskOpenOptions {
            create_size: Some(IMAGE_SIZE),
            read_only: false,
        },
    )
    .expect("open image");
    eprintln!("{}: O_DIRECT = {}", dir.display(), img.direct());
    img
}

fn read(id: u16, sector: u64, len: u32) -> Request {
    Request {
        id,
        op: RequestOp::Read { sector, len },
    }
}

fn write(id: u16, sector: u64, byte: u8, len: usize) -> Request {
    Request {
        id,
        op: RequestOp::Write {
            sector,
            data: AlignedBuf::from_slice(&vec![byte; len]),
        },
    }
}

/// Submits what is in the SQ and handles CQEs until `n` completions arrived.
fn run(
    e: &mut DiskEngine,
    submitter: &Submitter<'_>,
    sq: &mut SubmissionQueue<'_>,
    cq: &mut CompletionQueue<'_>,
    n: usize,
) -> Vec<Completion> {
    let mut out = Vec::new();
    for _ in 0..1000 {
        if out.len() >= n {
            return out;
        }
        sq.sync();
        submitter.submit_and_wait(1).expect("submit");
        cq.sync();
        for cqe in &mut *cq {
            assert_eq!(blkio::user_data_tag(cqe.user_data()), TAG);
            e.on_cqe(cqe.user_data(), cqe.result(), sq, &mut |c| out.push(c));
        }
    }
    panic!("only {} of {n} completions arrived", out.len());
}

fn file_bytes(dir: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = std::fs::File::open(dir.join("disk.img")).expect("reopen");
    let mut v = vec![0u8; len];
    f.read_exact_at(&mut v, offset).expect("pread");
    v
}

fn round_trip_in(dir: &Path) {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let mut e = DiskEngine::new(image(dir), TAG);
    e.submit(write(1, 8, 0xAB, 4096), 0, &mut sq);
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 1);
    assert_eq!(c, vec![Completion::ok(1)]);
    e.submit(read(2, 8, 4096), 0, &mut sq);
    e.submit(read(3, 0, 512), 0, &mut sq);
    let mut c = run(&mut e, &submitter, &mut sq, &mut cq, 2);
    c.sort_by_key(|c| c.id);
    assert_eq!(c[0].status, STATUS_OK);
    assert_eq!(c[0].data_bytes(), &[0xAB; 4096][..]);
    assert_eq!(c[1].data_bytes(), &[0; 512][..]);
    assert_eq!(file_bytes(dir, 8 * 512, 4096), vec![0xAB; 4096]);
    assert!(e.is_idle());
    assert_eq!(e.stats().write_bytes, 4096);
}

#[test]
fn reads_return_what_writes_wrote() {
    let dir = tempfile::tempdir().expect("tempdir");
    round_trip_in(dir.path());
}

#[test]
fn round_trip_on_tmpfs_exercises_the_o_direct_fallback() {
    let shm = Path::new("/dev/shm");
    if !shm.is_dir() {
        eprintln!("SKIP: /dev/shm does not exist");
        return;
    }
    let dir = tempfile::tempdir_in(shm).expect("tempdir in /dev/shm");
    let img = image(dir.path());
    if img.direct() {
        eprintln!("note: this kernel's tmpfs accepts O_DIRECT (Linux >= 6.6); no fallback needed");
    }
    drop(img);
    round_trip_in(dir.path());
}

/// ramfs has no O_DIRECT at all (tmpfs has it since Linux 6.6), so an image
/// there must fall back to O_DSYNC alone and still work.
#[test]
fn round_trip_on_ramfs_uses_the_o_direct_fallback() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mounted = std::process::Command::new("mount")
        .args(["-t", "ramfs", "ramfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("SKIP: cannot mount ramfs here (needs root)");
        return;
    }
    let result = std::panic::catch_unwind(|| {
        let img = image(dir.path());
        assert!(
            !img.direct(),
            "ramfs refuses O_DIRECT: the image must say so"
        );
        drop(img);
        round_trip_in(dir.path());
    });
    let _ = std::process::Command::new("umount")
        .arg(dir.path())
        .status();
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

#[test]
fn overlapping_write_read_write_run_in_take_order() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut e = DiskEngine::new(image(dir.path()), TAG);
    e.submit(write(1, 16, 0xA1, 8192), 0, &mut sq);
    e.submit(read(2, 20, 4096), 0, &mut sq); // overlaps the first write
    e.submit(write(3, 18, 0xB2, 4096), 0, &mut sq); // overlaps both
    e.submit(read(4, 100, 512), 0, &mut sq); // independent
    assert_eq!(
        sq.len(),
        2,
        "only the first write and the independent read may start"
    );
    assert_eq!(e.in_flight(), 4);
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 4);
    let order: Vec<u16> = c.iter().map(|c| c.id).filter(|id| *id != 4).collect();
    assert_eq!(
        order,
        vec![1, 2, 3],
        "overlapping requests complete in take order"
    );
    let r = c.iter().find(|c| c.id == 2).expect("read completion");
    assert_eq!(
        r.data_bytes(),
        &[0xA1; 4096][..],
        "the read sees the first write only"
    );
    assert_eq!(file_bytes(dir.path(), 16 * 512, 1024), vec![0xA1; 1024]);
    assert_eq!(file_bytes(dir.path(), 18 * 512, 4096), vec![0xB2; 4096]);
    assert_eq!(file_bytes(dir.path(), 26 * 512, 1024), vec![0xA1; 1024]);
}

#[test]
fn the_gate_holds_writes_until_released() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut e = DiskEngine::new(image(dir.path()), TAG);
    e.submit(write(1, 0, 0x11, 512), 5, &mut sq);
    e.submit(read(2, 0, 512), 0, &mut sq); // behind the held write
    e.submit(read(3, 64, 512), 0, &mut sq); // independent: runs now
    assert_eq!(sq.len(), 1);
    assert_eq!(e.held_writes(), 1);
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 1);
    assert_eq!(c[0].id, 3);
    assert_eq!(
        file_bytes(dir.path(), 0, 512),
        vec![0; 512],
        "held write is not on disk"
    );
    sq.sync(); // refresh the kernel's head: the SQ is empty again
    e.release(4, &mut sq);
    assert_eq!(sq.len(), 0, "acked 4 < gate 5");
    e.release(5, &mut sq);
    assert_eq!(sq.len(), 1);
    assert_eq!(e.held_writes(), 0);
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 2);
    assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(c[1].data_bytes(), &[0x11; 512][..]);
    assert_eq!(e.gate().acked(), 5);
}

#[test]
fn drop_outputs_completes_writes_without_the_disk() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    // An aligned buffer: the image may be open with O_DIRECT.
    img.file()
        .write_all_at(blkio::AlignedBuf::from_slice(&[0x77; 512]).as_slice(), 0)
        .expect("seed image");
    let mut e = DiskEngine::new(img, TAG);
    e.set_drop_outputs(true);
    e.submit(write(1, 0, 0x99, 512), 9, &mut sq); // gate 9: dropped, not held
    e.submit(read(2, 0, 512), 0, &mut sq);
    e.submit(
        Request {
            id: 3,
            op: RequestOp::Flush,
        },
        0,
        &mut sq,
    );
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 3);
    assert!(c.iter().all(|c| c.status == STATUS_OK));
    let r = c.iter().find(|c| c.id == 2).expect("read");
    assert_eq!(r.data_bytes(), &[0x77; 512][..], "reads still execute");
    assert_eq!(
        file_bytes(dir.path(), 0, 512),
        vec![0x77; 512],
        "the write never reached disk"
    );
    assert_eq!(e.stats().dropped_writes, 1);
}

#[test]
fn drain_completes_every_write() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut e = DiskEngine::new(image(dir.path()), TAG);
    {
        let mut sq = ring.submission();
        for i in 0..40u16 {
            e.submit(write(i, u64::from(i) * 8, i as u8 + 1, 4096), 0, &mut sq);
        }
        e.submit(
            Request {
                id: 100,
                op: RequestOp::Flush,
            },
            0,
            &mut sq,
        );
    }
    let mut done = Vec::new();
    e.drain(&mut ring, &mut |c| done.push(c), &mut |ud, _| {
        panic!("foreign CQE {ud:#x}")
    })
    .expect("drain");
    assert!(e.is_idle());
    assert_eq!(done.len(), 41);
    assert!(done.iter().all(|c| c.status == STATUS_OK));
    assert_eq!(
        done.last().map(|c| c.id),
        Some(100),
        "the flush waits for earlier writes"
    );
    for i in 0..40u64 {
        assert_eq!(
            file_bytes(dir.path(), i * 4096, 4096),
            vec![i as u8 + 1; 4096]
        );
    }
}

#[test]
fn drain_refuses_to_wait_for_held_writes() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let mut e = DiskEngine::new(image(dir.path()), TAG);
    e.submit(write(1, 0, 1, 512), 3, &mut ring.submission());
    let r = e.drain(&mut ring, &mut |_| {}, &mut |_, _| {});
    assert!(matches!(r, Err(BlkError::DrainBlocked { held: 1 })));
    e.release(3, &mut ring.submission());
    let mut n = 0;
    e.drain(&mut ring, &mut |_| n += 1, &mut |_, _| {})
        .expect("drain after release");
    assert_eq!(n, 1);
}

#[test]
fn short_and_failed_io_give_ioerr() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let dir = tempfile::tempdir().expect("tempdir");
    let img = image(dir.path());
    // Someone truncates the image under the engine: reads past the new end
    // come back short, then empty.
    img.file().set_len(64 * 1024).expect("truncate");
    let mut e = DiskEngine::new(img, TAG);
    e.submit(read(1, 126, 4096), 0, &mut sq); // straddles the new end
    e.submit(read(2, 1000, 512), 0, &mut sq); // wholly past it
    e.submit(read(3, 2048, 512), 0, &mut sq); // past the capacity: refused
    e.submit(read(4, 0, 100), 0, &mut sq); // not a sector multiple: refused
    let c = run(&mut e, &submitter, &mut sq, &mut cq, 4);
    assert_eq!(c.len(), 4);
    assert!(
        c.iter()
            .all(|c| c.status == STATUS_IOERR && c.data.is_none()),
        "{c:?}"
    );
    assert!(
        e.stats().short_retries >= 1,
        "the straddling read was retried first"
    );
    assert_eq!(e.stats().errors, 4);
}

#[test]
fn writes_to_a_read_only_image_fail() {
    let Some(mut ring) = ring_or_skip() else {
        return;
    };
    let (submitter, mut sq, mut cq) = ring.split();
    let dir = tempfile::tempdir().expect("tempdir");
    drop(image(dir.path()));
    let ro = DiskImage::open(
        dir.path().join("disk.img"),
        DiskOpenOptions {
            create_size: None,
            read_only: true,
        },
    )
    .expect("open read-only");
    let mut e = DiskEngine::new(ro, TAG);
    e.submit(write(1, 0, 1, 512), 0, &mut sq);
    e.submit(read(2, 0, 512), 0, &mut sq);
    let mut c = run(&mut e, &submitter, &mut sq, &mut cq, 2);
    c.sort_by_key(|c| c.id);
    assert_eq!(c[0].status, STATUS_IOERR);
    assert_eq!(c[1].status, STATUS_OK);
}
