//! What the personality counts, and the report it prints when the app
//! ends: system calls (in total and the busiest by name), sync calls,
//! blocks and switches, and every unsupported call by name (each is also
//! reported once, when it first happens).

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::vec::Vec;

use super::kernel::Kernel;

#[derive(Default)]
pub struct Stats {
    pub syscalls: u64,
    by_nr: BTreeMap<u64, u64>,
    unsupported: BTreeMap<u64, u64>,
    pub syncs: u64,
    pub waits: u64,
    pub blocks: u64,
    pub switches: u64,
    pub threads: u64,
    pub accepted: u64,
    pub events: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub forks_refused: u64,
    pub refused_exec: u64,
}

fn name(nr: u64) -> &'static str {
    usize::try_from(nr)
        .ok()
        .and_then(syscalls::Sysno::new)
        .map_or("?", |s| s.name())
}

impl Stats {
    pub fn count(&mut self, nr: u64) {
        self.syscalls += 1;
        *self.by_nr.entry(nr).or_default() += 1;
    }

    /// An unsupported call: counted; the first of each kind is reported.
    pub fn unsupported(&mut self, nr: u64, console: &mut Vec<u8>) {
        let n = self.unsupported.entry(nr).or_default();
        *n += 1;
        if *n == 1 {
            console.extend_from_slice(
                format!(
                    "linux: unsupported system call {} ({nr}): ENOSYS\n",
                    name(nr)
                )
                .as_bytes(),
            );
        }
    }
}

/// The closing report: one `linux:` line, parseable by the bench.
pub fn report(k: &mut Kernel, status: u32) {
    let s = &k.stats;
    let mut top: Vec<(u64, u64)> = s.by_nr.iter().map(|(nr, n)| (*n, *nr)).collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    let busiest: Vec<alloc::string::String> = top
        .iter()
        .take(8)
        .map(|(n, nr)| format!("{}={n}", name(*nr)))
        .collect();
    let unsupported: Vec<alloc::string::String> = s
        .unsupported
        .iter()
        .map(|(nr, n)| format!("{}={n}", name(*nr)))
        .collect();
    let fs = k.fs.as_ref().map(|f| f.stats).unwrap_or_default();
    let line = format!(
        "linux: exit status {status}: syscalls={} by_call={} syncs={} waits={} blocks={} switches={} threads={} \
         accepted={} events={} bytes_in={} bytes_out={} fs_syncs={} fs_commits={} fs_blocks_written={} \
         fs_blocks_read={} forks_refused={} exec_refused={}\nlinux: busiest: {}\nlinux: unsupported: {}\n",
        s.syscalls,
        super::entry::calls(),
        s.syncs,
        s.waits,
        s.blocks,
        s.switches,
        s.threads + 1,
        s.accepted,
        s.events,
        s.bytes_in,
        s.bytes_out,
        fs.syncs,
        fs.commits,
        fs.blocks_written,
        fs.blocks_read,
        s.forks_refused,
        s.refused_exec,
        busiest.join(" "),
        if unsupported.is_empty() {
            "none".into()
        } else {
            unsupported.join(" ")
        },
    );
    k.console_write(line.as_bytes());
}
