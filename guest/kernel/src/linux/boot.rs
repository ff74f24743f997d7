//! Loading the app: its bytes from the disk's app area, its segments at
//! their linked addresses, a Linux process stack, the file system behind
//! the app area, the network, and descriptors 0-2 on the console.
//!
//! Memory (RAM of M bytes): the personality's image from 2 MiB; the app's
//! segments and its brk area in `[4 MiB, M/2)`; the heap (the
//! personality's data and every app mapping and thread stack) in
//! `[M/2, M - 1 MiB)` plus whatever the brk area leaves below M/2; the
//! personality's stack in the top MiB.

use alloc::vec::Vec;

use lockstep_guest_abi::BootParams;
use lockstep_guest_linux::elf::{self, ElfError};
use lockstep_guest_linux::fs::Fs;
use lockstep_guest_linux::space::{AddressSpace, PAGE};
use lockstep_guest_linux::stack::{self, Exec};

use super::disk::BlkDev;
use super::entry::Frame;
use super::fd::{FdTable, Kind, Ofd};
use super::kernel::{Kernel, Rng};
use super::mem::Heap;
use super::sched::Threads;
use super::sock::NetStack;
use super::stats::Stats;
use super::uaccess;
use super::vdso::Vdso;
use crate::blk::Disk;
use crate::cmdline::Settings;
use crate::net::Net;
use crate::{Size, fail};

/// The app's main thread stack.
const STACK: u64 = 8 << 20;
/// Largest brk area.
const BRK_MAX: u64 = 64 << 20;

/// End of the region for the app's image and brk area: half of RAM.
pub fn low_end(mem_size: u64) -> u64 {
    (mem_size / 2) & !((2 << 20) - 1)
}

fn elf_error(e: ElfError) -> &'static str {
    match e {
        ElfError::NotElf => "linux: the app is not an ELF64 x86-64 file",
        ElfError::NotExec => "linux: the app is not a static executable (ET_EXEC)",
        ElfError::Dynamic => "linux: the app is dynamically linked",
        ElfError::BadSegment(_) => "linux: the app has a malformed segment",
        ElfError::WritableCode(_) => "linux: the app has a writable and executable segment",
        ElfError::NoSegments => "linux: the app has nothing to load",
        ElfError::PhdrsNotLoaded => "linux: the app's program headers are not in a loaded segment",
        ElfError::BadEntry => "linux: the app's entry point is not in its code",
    }
}

/// Places the segments; returns the end of the image.
fn load(prog: &elf::Program, image: &[u8], lo_min: u64, hi_max: u64) -> u64 {
    let (lo, hi) = prog.span();
    if lo < lo_min || hi > hi_max {
        fail("linux: the app's segments do not fit below half of the guest's memory (more --mem?)");
    }
    for s in &prog.segments {
        let dst = uaccess::slice_mut(s.vaddr, s.memsz as usize)
            .unwrap_or_else(|_| fail("linux: an app segment lies outside guest memory"));
        dst.fill(0);
        let src = &image[s.offset as usize..(s.offset + s.filesz) as usize];
        dst[..src.len()].copy_from_slice(src);
    }
    hi.next_multiple_of(PAGE)
}

/// Splits the header's strings into argv and envp.
fn args(strings: &[u8], argc: usize) -> (Vec<&[u8]>, Vec<&[u8]>) {
    let mut all: Vec<&[u8]> = strings.split(|c| *c == 0).collect();
    all.pop();
    let env = all.split_off(argc.min(all.len()));
    (all, env)
}

pub fn boot(
    bp: &BootParams,
    s: &Settings,
    net: Option<Net>,
    disk: Option<Disk>,
    now: u64,
) -> (Kernel, Frame) {
    uaccess::init(bp.mem_size);
    let disk =
        disk.unwrap_or_else(|| fail("linux: no disk: the app is installed on the disk (--app)"));
    let mut dev = BlkDev::new(disk, now);
    let want = bp
        .param("app")
        .and_then(|v| core::str::from_utf8(v).ok())
        .and_then(|v| u32::from_str_radix(v, 16).ok());
    let (header, strings, image) = dev.app(want).unwrap_or_else(|e| fail(e));
    let prog = elf::parse(&image).unwrap_or_else(|e| fail(elf_error(e)));
    let low = low_end(bp.mem_size);
    let brk_start = load(&prog, &image, bp.heap_start, low.saturating_sub(PAGE));
    let brk_max = brk_start.saturating_add(BRK_MAX).min(low);
    if low - brk_max >= 4 << 20 {
        crate::heap::add(brk_max, low);
    }
    let mut space = AddressSpace::new(brk_start, brk_max);
    let mut rng = Rng::new(bp.seed);

    let (argv, envp) = args(&strings, header.argc as usize);
    let name = argv
        .first()
        .map(|a| a.rsplit(|c| *c == b'/').next().unwrap_or(a).to_vec())
        .unwrap_or_else(|| b"app".to_vec());
    let stack_base = space
        .map(STACK, &mut Heap)
        .unwrap_or_else(|_| fail("linux: no memory for the app's stack"));
    let mut random = [0u8; 16];
    rng.fill(&mut random);
    // On unless `vdso=0`: it reads only logged time (see `vdso.rs`).
    let mut vdso = (bp.param("vdso") != Some(b"0")).then(Vdso::new);
    if let Some(v) = vdso.as_mut() {
        v.publish(now, 1_000_000_000);
    }
    let exec = Exec {
        argv: &argv,
        envp: &envp,
        phdr: prog.phdr,
        phent: u64::from(prog.phent),
        phnum: u64::from(prog.phnum),
        entry: prog.entry,
        random,
        vdso: vdso.as_ref().map_or(0, Vdso::addr),
    };
    let (img, sp) = stack::build(stack_base + STACK, &exec)
        .unwrap_or_else(|| fail("linux: the arguments do not fit on the stack"));
    uaccess::put(sp, &img).unwrap_or_else(|_| fail("linux: cannot write the app's stack"));

    let cache = (bp.mem_size / 16).min(32 << 20) as usize;
    let blocks = dev.fs_blocks();
    let (fs, fs_note) = match Fs::mount(&mut dev, blocks, cache, now) {
        Ok((fs, m)) => {
            let what = if m.formatted { "formatted" } else { "mounted" };
            (
                Some(fs),
                alloc::format!(
                    "{what}, {} files, {} free",
                    m.inodes,
                    Size(m.free_blocks * 4096)
                ),
            )
        }
        Err(e) => (None, alloc::format!("none ({e:?}): file calls fail")),
    };
    let net = net.map(|n| NetStack::new(n, s, bp.seed, now));

    let mut fds = FdTable::default();
    for (fd, kind) in [Kind::Stdin, Kind::Console, Kind::Console]
        .into_iter()
        .enumerate()
    {
        let flags = if fd == 0 {
            linux_raw_sys::general::O_RDONLY
        } else {
            linux_raw_sys::general::O_WRONLY
        };
        fds.put(fd, Ofd::new(kind, flags), false);
    }
    let frame = Frame::new(prog.entry, sp);
    let mut k = Kernel {
        now,
        boot_ns: now,
        stack_top: bp.stack_top,
        rng,
        disk: Some(dev),
        fs,
        net,
        fds,
        threads: Threads::new(frame.clone()),
        space,
        cwd: Vec::new(),
        umask: 0o022,
        stats: Stats::default(),
        sigactions: alloc::vec![[0u8; 32]; 64],
        name,
        console: Vec::new(),
        stop: false,
        idle_polls: 0,
        mem_size: bp.mem_size,
        vdso,
        code: prog
            .segments
            .iter()
            .filter(|s| s.executable)
            .map(|s| (s.vaddr, s.vaddr + s.memsz))
            .collect(),
    };
    k.absorb_disk();
    let shown = alloc::string::String::from_utf8_lossy(&k.name).into_owned();
    k.say(format_args!(
        "linux: running {shown}: {} KiB loaded, entry {:#x}, {} arguments{}; file system {fs_note}",
        image.len() / 1024,
        prog.entry,
        argv.len().saturating_sub(1),
        if k.vdso.is_some() { ", vDSO" } else { "" },
    ));
    (k, frame)
}
