//! The personality is not redis-shaped: the stock sqlite3 shell keeps a
//! database on the guest's disk across boots; the loader refuses a
//! glibc-static program, naming the instruction and the function; an
//! unsupported system call is ENOSYS and reported by name; fork is EAGAIN;
//! a writable and executable mapping is refused; threads, files, pipes and
//! the exit status behave; 50 system calls with hostile arguments (bad
//! pointers, descriptors, lengths, flags) all fail without hurting the
//! personality; system calls come by `call rax` where the VMM rewrote them,
//! the program sees the same with `syscalls=trap`, and functions that keep
//! data in the red zone across a `syscall` are left alone.

mod common;

use std::process::Command;

use common::apps::{build, linux_field};
use common::*;

/// `lockstep run --app APP -- ARGS` on `disk` (no network); its output.
fn run_app(app: &std::path::Path, disk: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    run_app_with(app, disk, &[], args)
}

/// The same with `vmm` options before `--`.
fn run_app_with(
    app: &std::path::Path,
    disk: &std::path::Path,
    vmm: &[&str],
    args: &[&str],
) -> (Option<i32>, String) {
    let out = Command::new(lockstep())
        .args(["run", "--disk-size", "64", "--mem", "128", "--app"])
        .arg(app)
        .arg("--disk")
        .arg(disk)
        .args(vmm)
        .arg("--")
        .args(args)
        .output()
        .expect("lockstep run");
    (out.status.code(), output_text(&out))
}

/// The app's own lines (not the VMM's log or the personality's report).
fn app_lines(out: &str) -> Vec<&str> {
    out.lines()
        .filter(|l| !l.contains('\u{1b}') && !l.starts_with("linux:") && !l.starts_with("lockstep"))
        .collect()
}

#[test]
fn the_sqlite3_shell_keeps_a_database_on_the_guest_disk() {
    if !kvm_available() {
        return;
    }
    let sqlite = build("sqlite").remove(0);
    let dir = tempdir();
    let disk = dir.path().join("disk.img");
    let (code, out) = run_app(
        &sqlite,
        &disk,
        &[
            "/shop.db",
            "create table fruit(name text primary key, n int); \
             insert into fruit values ('apple', 3), ('pear', 5); \
             begin; update fruit set n = n + 10; commit; \
             select name || '=' || n from fruit order by name;",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("apple=13\npear=15"), "{out}");
    // A second boot of the same disk: the database is there, intact.
    let (code, out) = run_app(
        &sqlite,
        &disk,
        &[
            "/shop.db",
            "insert into fruit values ('plum', 1); \
             select count(*), sum(n) from fruit; pragma integrity_check;",
        ],
    );
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("3|29\nok"), "{out}");
    assert!(out.contains("linux: unsupported: none"), "{out}");
}

#[test]
fn the_personality_edges_behave_like_linux() {
    if !kvm_available() {
        return;
    }
    let probe = build("probes").remove(0);
    let dir = tempdir();
    let (code, out) = run_app(
        &probe,
        &dir.path().join("disk.img"),
        &["one", "", "two words"],
    );
    assert_eq!(code, Some(7), "the app's exit status is the VMM's:\n{out}");
    for line in [
        "linux: unsupported system call acct (163): ENOSYS",
        "acct: -1 errno=38",
        "fork: -1 errno=11",
        "wx: refused errno=13",
        "threads: 42",
        "file: 24 0 24 24 \"written, synced, renamed\"",
        "pipe: pipe",
        "time: monotonic random: 8",
        "args: [one] [] [two words]",
        "hostile: 50 of 50 refused",
        "red zone: kept",
        "linux: unsupported: acct=1",
    ] {
        assert!(out.contains(line), "missing {line:?}:\n{out}");
    }
    // Its system calls came by `call rax` (the rewrite, the default), all
    // but those of functions the check left alone; with `syscalls=trap`
    // none did, and the program saw exactly the same.
    let (all, by_call) = (linux_field(&out, "syscalls"), linux_field(&out, "by_call"));
    assert!(
        by_call * 10 >= all * 9,
        "{by_call} of {all} by call:\n{out}"
    );
    let trap_disk = dir.path().join("trap.img");
    let (trap_code, trap) = run_app_with(
        &probe,
        &trap_disk,
        &["--append", "syscalls=trap"],
        &["one", "", "two words"],
    );
    assert_eq!(trap_code, Some(7), "{trap}");
    assert_eq!(linux_field(&trap, "by_call"), 0, "{trap}");
    assert_eq!(linux_field(&trap, "syscalls"), all, "{trap}");
    assert_eq!(app_lines(&trap), app_lines(&out));
}

#[test]
fn a_glibc_static_program_is_refused_naming_the_instruction() {
    let hello = build("probes").remove(1);
    let dir = tempdir();
    let (code, out) = run_app(&hello, &dir.path().join("disk.img"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("refusing to run"), "{out}");
    assert!(
        out.contains("`cpuid` in "),
        "names the instruction and its function:\n{out}"
    );
    assert!(
        !dir.path().join("disk.img").exists(),
        "refused before the disk is touched"
    );
}
