//! The output fence on a real io_uring: the kernel refuses an output whose
//! lease ran out, even one a slow thread had already checked and queued,
//! and lets outputs through again once the lease is renewed.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use ioengine::{Fence, FenceEvent, FenceState, user_data_tag};

const TAG: u8 = 9;
const WRITE: u64 = 1;

fn tmpfile() -> (tempfile::NamedTempFile, File) {
    let f = tempfile::NamedTempFile::new().expect("temp file");
    let w = File::options().write(true).open(f.path()).expect("open");
    (f, w)
}

/// Submits a write of `data` through fixed slot 0 and returns its result,
/// handing every fence CQE to `fence` on the way (the write goes in a
/// submission of its own, after whatever the fence queued).
fn write_through_slot(ring: &mut IoUring, fence: &mut Fence, data: &[u8]) -> i32 {
    let e = opcode::Write::new(types::Fixed(0), data.as_ptr(), data.len() as u32)
        .offset(0)
        .build()
        .user_data(WRITE);
    // SAFETY: `data` outlives the wait for this write's CQE below.
    unsafe { ring.submission().push(&e).expect("room") };
    wait_for_write(ring, fence)
}

/// Hands the fence its CQEs; returns the write's result if it came.
fn reap(ring: &mut IoUring, fence: &mut Fence) -> (Option<i32>, Vec<FenceEvent>) {
    let cqes: Vec<_> = ring
        .completion()
        .map(|c| (c.user_data(), c.result()))
        .collect();
    let (mut write, mut events) = (None, Vec::new());
    for (ud, res) in cqes {
        if ud == WRITE {
            write = Some(res);
        } else if user_data_tag(ud) == TAG {
            let (submitter, _, _) = ring.split();
            if let Some(e) = fence.on_cqe(ud, res, &submitter).expect("fence CQE") {
                events.push(e);
            }
        }
    }
    (write, events)
}

fn wait_for_write(ring: &mut IoUring, fence: &mut Fence) -> i32 {
    loop {
        ring.submit_and_wait(1).expect("submit");
        if let (Some(r), _) = reap(ring, fence) {
            return r;
        }
    }
}

/// Runs the ring until the fence reaches `state`.
fn until(ring: &mut IoUring, fence: &mut Fence, want: impl Fn(FenceState) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !want(fence.state()) {
        assert!(
            Instant::now() < deadline,
            "the fence stays {:?}",
            fence.state()
        );
        ring.submit_and_wait(1).expect("submit");
        reap(ring, fence);
    }
}

fn renew(ring: &mut IoUring, fence: &mut Fence, until_: Instant) {
    let (submitter, mut sq, _) = ring.split();
    fence.renew(until_, &submitter, &mut sq).expect("renew");
}

fn new_fence(ring: &mut IoUring, w: &File) -> Fence {
    let (submitter, _, _) = ring.split();
    Fence::new(
        &submitter,
        vec![w.as_raw_fd()],
        TAG,
        Duration::from_millis(5),
    )
    .expect("fence")
}

fn contents(f: &tempfile::NamedTempFile) -> String {
    let mut s = String::new();
    File::open(f.path())
        .expect("reopen")
        .read_to_string(&mut s)
        .expect("read");
    s
}

#[test]
fn an_expired_lease_fences_in_the_kernel_and_a_renewal_restores() {
    let (file, w) = tmpfile();
    let mut ring = IoUring::new(16).expect("ring");
    let mut fence = new_fence(&mut ring, &w);
    assert_eq!(fence.state(), FenceState::Fired, "empty from the start");
    assert_eq!(
        write_through_slot(&mut ring, &mut fence, b"fenced"),
        -libc::EBADF,
        "nothing leaves before a renewal"
    );
    renew(
        &mut ring,
        &mut fence,
        Instant::now() + Duration::from_secs(60),
    );
    until(&mut ring, &mut fence, |s| matches!(s, FenceState::Armed(_)));
    assert_eq!(write_through_slot(&mut ring, &mut fence, b"leased"), 6);
    {
        let (submitter, mut sq, _) = ring.split();
        fence.close(&submitter, &mut sq).expect("close");
    }
    assert_eq!(
        write_through_slot(&mut ring, &mut fence, b"closed"),
        -libc::EBADF,
        "a side that lost is fenced for good"
    );
    assert_eq!(contents(&file), "leased");
}

#[test]
fn a_thread_slow_between_its_check_and_its_submit_is_fenced_by_the_kernel() {
    let (file, w) = tmpfile();
    let mut ring = IoUring::new(16).expect("ring");
    let mut fence = new_fence(&mut ring, &w);
    let lease = Instant::now() + Duration::from_millis(40);
    renew(&mut ring, &mut fence, lease);
    until(&mut ring, &mut fence, |s| matches!(s, FenceState::Armed(_)));
    // The user-space check passes and the write is queued...
    assert!(Instant::now() < lease);
    let data = b"stale";
    let e = opcode::Write::new(types::Fixed(0), data.as_ptr(), data.len() as u32)
        .offset(0)
        .build()
        .user_data(WRITE);
    // SAFETY: `data` outlives the wait for this write's CQE below.
    unsafe { ring.submission().push(&e).expect("room") };
    // ...then the thread does not run on until the lease is long over (a
    // pause, a starved CPU): the kernel empties the slot meanwhile.
    let stalled = Instant::now();
    while stalled.elapsed() < Duration::from_millis(120) {
        std::hint::spin_loop();
    }
    assert_eq!(wait_for_write(&mut ring, &mut fence), -libc::EBADF);
    assert_eq!(
        contents(&file),
        "",
        "the stale write never reached the file"
    );
    assert_eq!(fence.state(), FenceState::Fired);
}

#[test]
fn lifted_there_is_no_deadline() {
    let (file, w) = tmpfile();
    let mut ring = IoUring::new(16).expect("ring");
    let mut fence = new_fence(&mut ring, &w);
    renew(
        &mut ring,
        &mut fence,
        Instant::now() + Duration::from_millis(10),
    );
    {
        let (submitter, mut sq, _) = ring.split();
        fence.lift(&submitter, &mut sq).expect("lift");
    }
    assert_eq!(fence.state(), FenceState::Lifted);
    // Past the old deadline: nothing fires any more.
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(write_through_slot(&mut ring, &mut fence, b"alone"), 5);
    assert_eq!(contents(&file), "alone");
}

#[test]
fn a_lifted_fence_rearmed_for_a_joined_backup_holds_until_renewed_and_fires_again() {
    let (file, w) = tmpfile();
    let mut ring = IoUring::new(16).expect("ring");
    let mut fence = new_fence(&mut ring, &w);
    {
        let (submitter, mut sq, _) = ring.split();
        fence.lift(&submitter, &mut sq).expect("lift");
    }
    assert_eq!(write_through_slot(&mut ring, &mut fence, b"alone "), 6);
    // A backup joins: the lease is back, enforced in the kernel again.
    {
        let (submitter, _, _) = ring.split();
        assert!(fence.rearm(&submitter).expect("rearm"));
    }
    assert_eq!(fence.state(), FenceState::Fired);
    assert_eq!(
        write_through_slot(&mut ring, &mut fence, b"early"),
        -libc::EBADF,
        "nothing leaves before the joined backup's first renewal"
    );
    let lease = Instant::now() + Duration::from_millis(40);
    renew(&mut ring, &mut fence, lease);
    until(&mut ring, &mut fence, |s| matches!(s, FenceState::Armed(_)));
    assert_eq!(write_through_slot(&mut ring, &mut fence, b"joined"), 6);
    // The lease runs out: the kernel fires the fence again.
    until(&mut ring, &mut fence, |s| s == FenceState::Fired);
    assert!(Instant::now() >= lease);
    assert_eq!(
        write_through_slot(&mut ring, &mut fence, b"stale"),
        -libc::EBADF
    );
    // A closed fence is never rearmed.
    {
        let (submitter, mut sq, _) = ring.split();
        fence.close(&submitter, &mut sq).expect("close");
        assert!(!fence.rearm(&submitter).expect("rearm closed"));
    }
    assert_eq!(fence.state(), FenceState::Closed);
    // Writes through fixed slot 0 all go to offset 0.
    assert_eq!(contents(&file), "joined");
}
