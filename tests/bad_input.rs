//! Bad host-side input gets a clear error (or a stated fallback), never a
//! panic or a hang: disk images, taps.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use common::*;

/// `lockstep` refused: exit status 1, saying `why`.
fn assert_refused(out: &Output, why: &str) {
    let t = output_text(out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains(why), "{t}");
}

fn hello(dir: &Path) -> std::path::PathBuf {
    asm_guest(dir, "hello", None)
}

fn lockstep_as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lockstep());
    c
}

/// Undoes `chattr +i` even if the test fails.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").arg(self.0).status();
    }
}

#[test]
fn disk_images_that_cannot_be_used_are_explained() {
    let dir = tempdir();
    let kernel = hello(dir.path());
    // Not readable by the user lockstep runs as.
    let secret = dir.path().join("secret.img");
    std::fs::write(&secret, vec![0u8; 1 << 20]).unwrap();
    run_ok(Command::new("chmod").arg("000").arg(&secret));
    run_ok(Command::new("chmod").arg("755").arg(dir.path()));
    let out = lockstep_as_nobody()
        .args(["run", "--mem", "64", "--kernel"])
        .arg(&kernel)
        .arg("--disk")
        .arg(&secret)
        .output()
        .unwrap();
    assert_refused(&out, "is not readable");

    // Immutable (read-only) even for root.
    let frozen = dir.path().join("frozen.img");
    std::fs::write(&frozen, vec![0u8; 1 << 20]).unwrap();
    if !Command::new("chattr")
        .arg("+i")
        .arg(&frozen)
        .status()
        .is_ok_and(|s| s.success())
    {
        eprintln!("SKIP (read-only case): chattr +i is not supported on this file system");
    } else {
        let _guard = Immutable(&frozen);
        let out = Command::new(lockstep())
            .args(["run", "--mem", "64", "--kernel"])
            .arg(&kernel)
            .arg("--disk")
            .arg(&frozen)
            .output()
            .unwrap();
        assert_refused(&out, "is read-only");
    }

    // A directory, and a size that is not whole sectors.
    let out = Command::new(lockstep())
        .args(["run", "--mem", "64", "--kernel"])
        .arg(&kernel)
        .arg("--disk")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_refused(&out, "not a regular file");
    let odd = dir.path().join("odd.img");
    std::fs::write(&odd, vec![0u8; 1000]).unwrap();
    let out = Command::new(lockstep())
        .args(["run", "--mem", "64", "--kernel"])
        .arg(&kernel)
        .arg("--disk")
        .arg(&odd)
        .output()
        .unwrap();
    assert_refused(&out, "not a multiple of 512");
}

#[test]
fn a_file_system_without_o_direct_falls_back_and_says_so() {
    if !kvm_available() {
        return;
    }
    let dir = tempdir();
    let kernel = hello(dir.path());
    let mnt = dir.path().join("ramfs");
    std::fs::create_dir(&mnt).unwrap();
    // ramfs refuses O_DIRECT; a private mount namespace keeps the mount ours.
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c"])
        .arg(format!(
            "mount -t ramfs none {m} && exec {ls} run --mem 64 --kernel {k} --disk {m}/d.img",
            m = mnt.display(),
            ls = lockstep(),
            k = kernel.display()
        ))
        .output()
        .unwrap();
    let t = output_text(&out);
    assert!(t.contains("does not support O_DIRECT"), "{t}");
    assert!(t.contains("hello from ring 3"), "the VM still runs:\n{t}");
    assert_eq!(out.status.code(), Some(7), "{t}");
}

#[test]
fn taps_that_cannot_be_used_are_explained() {
    if !kvm_available() {
        return;
    }
    let net = net_single("tp");
    let dir = tempdir();
    let idle = asm_guest(dir.path(), "idle_until_stop", None);
    let run = |tap: &str, disk: &str| {
        let mut c = net.cmd("h", lockstep());
        c.args(["run", "--mem", "64", "--tap", tap, "--kernel"])
            .arg(&idle)
            .arg("--disk")
            .arg(dir.path().join(disk));
        c
    };
    // Taken: a first VMM holds the tap.
    let mut first = spawn_vmm(run(&net.tap(), "a.img"));
    first.wait_for_line("idle: waiting", std::time::Duration::from_secs(10));
    let out = run(&net.tap(), "b.img").output().unwrap();
    assert_refused(&out, "is in use by another process");
    first.signal(libc::SIGTERM);
    assert_eq!(
        first.exit_status(std::time::Duration::from_secs(10)).code(),
        Some(0)
    );

    // Not a tap, and a name Linux cannot have.
    let out = run("br0", "c.img").output().unwrap();
    assert_refused(&out, "not a tap");
    let out = run("a-name-that-is-far-too-long", "d.img")
        .output()
        .unwrap();
    assert_refused(&out, "longer than 15 bytes");

    // No permission: an unprivileged user cannot attach to a tap.
    run_ok(Command::new("chmod").arg("777").arg(dir.path()));
    let mut c = net.cmd("h", "setpriv");
    c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(lockstep())
        .args(["run", "--mem", "64", "--tap", &net.tap(), "--kernel"])
        .arg(&idle)
        .arg("--disk")
        .arg(dir.path().join("e.img"));
    let out = c.output().unwrap();
    let t = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("permission") || t.contains("CAP_NET_ADMIN"),
        "{t}"
    );
}
