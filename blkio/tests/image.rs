//! Opening and creating disk images, and the typed errors for bad ones.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use blkio::{BlkError, DiskImage, DiskOpenOptions};

fn opts(create_size: Option<u64>) -> DiskOpenOptions {
    DiskOpenOptions {
        create_size,
        read_only: false,
    }
}

#[test]
fn creates_a_zeroed_image_and_reuses_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("new.img");
    let img = DiskImage::open(&p, opts(Some(3 << 20))).expect("create");
    assert_eq!(img.capacity_sectors(), (3 << 20) / 512);
    eprintln!("ext4/tmp image O_DIRECT = {}", img.direct());
    let mut buf = vec![1u8; 4096];
    std::fs::File::open(&p)
        .expect("open")
        .read_exact_at(&mut buf, (3 << 20) - 4096)
        .expect("read");
    assert!(buf.iter().all(|b| *b == 0));
    assert!(!dir.path().join("new.img.creating").exists());
    drop(img);
    // An existing image keeps its size whatever create_size says.
    let again = DiskImage::open(&p, opts(Some(1 << 20))).expect("reopen");
    assert_eq!(again.capacity_sectors(), (3 << 20) / 512);
}

#[test]
fn typed_errors_for_bad_images() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    assert!(matches!(
        DiskImage::open(d.join("missing.img"), opts(None)),
        Err(BlkError::NotFound { .. })
    ));
    assert!(matches!(
        DiskImage::open(d, opts(None)),
        Err(BlkError::NotAFile {
            kind: "directory",
            ..
        })
    ));
    assert!(matches!(
        DiskImage::open("/dev/null", opts(None)),
        Err(BlkError::NotAFile {
            kind: "character device",
            ..
        })
    ));
    std::fs::write(d.join("odd.img"), vec![0u8; 1000]).expect("write");
    assert!(matches!(
        DiskImage::open(d.join("odd.img"), opts(None)),
        Err(BlkError::BadSize { size: 1000, .. })
    ));
    std::fs::write(d.join("empty.img"), b"").expect("write");
    assert!(matches!(
        DiskImage::open(d.join("empty.img"), opts(None)),
        Err(BlkError::Empty { .. })
    ));
    assert!(matches!(
        DiskImage::open(d.join("c.img"), opts(Some(1000))),
        Err(BlkError::BadSize { .. })
    ));
    assert!(matches!(
        DiskImage::open(d.join("no/such/dir.img"), opts(Some(4096))),
        Err(BlkError::Create { .. })
    ));
    let msg = DiskImage::open(d.join("missing.img"), opts(None))
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("does not exist"), "{msg}");
}

/// `chattr +i` makes even root's O_RDWR open fail with EPERM: the image
/// must be reported read-only, not unreadable.
#[test]
fn immutable_image_is_reported_read_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = dir.path().join("ro.img");
    std::fs::write(&p, vec![0u8; 4096]).expect("write");
    let set = Command::new("chattr").arg("+i").arg(&p).status();
    if !set.is_ok_and(|s| s.success()) {
        eprintln!("SKIP: chattr +i is not available on this file system");
        return;
    }
    let r = DiskImage::open(&p, opts(None));
    let ro = DiskImage::open(
        &p,
        DiskOpenOptions {
            create_size: None,
            read_only: true,
        },
    );
    let _ = Command::new("chattr").arg("-i").arg(&p).status();
    match r {
        Err(e @ BlkError::ReadOnly { .. }) => {
            assert!(e.to_string().contains("read-only"), "{e}");
        }
        other => panic!("expected ReadOnly, got {other:?}"),
    }
    assert!(ro.expect("read-only open works").read_only());
}

/// A read-only mount gives EROFS. Needs root and a mountable tmpfs.
#[test]
fn read_only_file_system_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path();
    let ok = |c: &mut Command| c.status().is_ok_and(|s| s.success());
    if !ok(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(mnt))
    {
        eprintln!("SKIP: cannot mount a tmpfs here (needs root)");
        return;
    }
    let p = mnt.join("disk.img");
    let prepared = std::fs::write(&p, vec![0u8; 4096]).is_ok()
        && ok(Command::new("mount").args(["-o", "remount,ro"]).arg(mnt));
    let r = prepared.then(|| DiskImage::open(&p, opts(None)).map(|_| ()));
    let _ = Command::new("umount").arg(mnt).status();
    match r {
        None => eprintln!("SKIP: could not remount the tmpfs read-only"),
        Some(Err(BlkError::ReadOnly { reason, .. })) => {
            assert_eq!(reason, "read-only file system")
        }
        Some(other) => panic!("expected ReadOnly, got {other:?}"),
    }
    assert!(!Path::new(&p).exists(), "tmpfs unmounted");
}
