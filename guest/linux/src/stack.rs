//! The process's initial stack as Linux builds it at `execve` (x86-64 SysV
//! ABI §3.4.1): from RSP upwards argc, argv pointers and NULL, envp
//! pointers and NULL, the auxiliary vector ending in AT_NULL; above them the
//! strings and AT_RANDOM's 16 bytes. AT_SYSINFO_EHDR when the personality
//! offers its vDSO (the default); without it libc makes real system calls
//! for the time.

use alloc::vec::Vec;

pub const AT_NULL: u64 = 0;
pub const AT_IGNORE: u64 = 1;
pub const AT_PHDR: u64 = 3;
pub const AT_PHENT: u64 = 4;
pub const AT_PHNUM: u64 = 5;
pub const AT_PAGESZ: u64 = 6;
pub const AT_BASE: u64 = 7;
pub const AT_FLAGS: u64 = 8;
pub const AT_ENTRY: u64 = 9;
pub const AT_UID: u64 = 11;
pub const AT_EUID: u64 = 12;
pub const AT_GID: u64 = 13;
pub const AT_EGID: u64 = 14;
pub const AT_PLATFORM: u64 = 15;
pub const AT_HWCAP: u64 = 16;
pub const AT_CLKTCK: u64 = 17;
pub const AT_SECURE: u64 = 23;
pub const AT_RANDOM: u64 = 25;
pub const AT_HWCAP2: u64 = 26;
pub const AT_EXECFN: u64 = 31;
pub const AT_SYSINFO_EHDR: u64 = 33;

/// What goes on the stack besides argv and envp.
pub struct Exec<'a> {
    pub argv: &'a [&'a [u8]],
    pub envp: &'a [&'a [u8]],
    pub phdr: u64,
    pub phent: u64,
    pub phnum: u64,
    pub entry: u64,
    pub random: [u8; 16],
    /// A vDSO's address, or 0 for none.
    pub vdso: u64,
}

/// The stack contents for a stack whose top (exclusive) is `top`: the bytes
/// to place at `[sp, top)`, and `sp` (16-byte aligned, pointing at argc).
pub fn build(top: u64, e: &Exec<'_>) -> Option<(Vec<u8>, u64)> {
    // Strings and the random bytes, from the top down.
    let mut strings: Vec<u8> = Vec::new();
    let mut place = |bytes: &[u8], nul: bool| -> u64 {
        strings.extend_from_slice(bytes);
        if nul {
            strings.push(0);
        }
        strings.len() as u64
    };
    let ends_argv: Vec<u64> = e.argv.iter().map(|a| place(a, true)).collect();
    let ends_envp: Vec<u64> = e.envp.iter().map(|a| place(a, true)).collect();
    let end_platform = place(b"x86_64", true);
    let end_random = place(&e.random, false);
    let strings_len = strings.len() as u64;
    // A string whose bytes end at `end` (relative) starts at:
    let base = top.checked_sub(strings_len)? & !0xf;
    let start_of = |end: u64, len: usize| base + end - len as u64;

    let mut words: Vec<u64> = Vec::new();
    words.push(e.argv.len() as u64);
    for (a, end) in e.argv.iter().zip(&ends_argv) {
        words.push(start_of(*end, a.len() + 1));
    }
    words.push(0);
    for (v, end) in e.envp.iter().zip(&ends_envp) {
        words.push(start_of(*end, v.len() + 1));
    }
    words.push(0);
    let execfn = ends_argv
        .first()
        .map_or(0, |end| start_of(*end, e.argv[0].len() + 1));
    let aux = [
        (AT_PHDR, e.phdr),
        (AT_PHENT, e.phent),
        (AT_PHNUM, e.phnum),
        (AT_PAGESZ, 4096),
        (AT_BASE, 0),
        (AT_FLAGS, 0),
        (AT_ENTRY, e.entry),
        (AT_UID, 0),
        (AT_EUID, 0),
        (AT_GID, 0),
        (AT_EGID, 0),
        (AT_PLATFORM, start_of(end_platform, 7)),
        (AT_HWCAP, 0),
        (AT_HWCAP2, 0),
        (AT_CLKTCK, 100),
        (AT_SECURE, 0),
        (AT_RANDOM, start_of(end_random, 16)),
        (AT_EXECFN, execfn),
        (
            if e.vdso != 0 {
                AT_SYSINFO_EHDR
            } else {
                AT_IGNORE
            },
            e.vdso,
        ),
        (AT_NULL, 0),
    ];
    for (k, v) in aux {
        words.push(k);
        words.push(v);
    }
    let words_len = words.len() as u64 * 8;
    let sp = base.checked_sub(words_len)? & !0xf;
    let mut out = Vec::with_capacity((top - sp) as usize);
    for w in &words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out.resize((base - sp) as usize, 0);
    out.extend_from_slice(&strings);
    out.resize((top - sp) as usize, 0);
    Some((out, sp))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(img: &[u8], sp: u64, addr: u64) -> u64 {
        let o = (addr - sp) as usize;
        u64::from_le_bytes(img[o..o + 8].try_into().unwrap())
    }

    fn cstr(img: &[u8], sp: u64, addr: u64) -> &[u8] {
        let o = (addr - sp) as usize;
        let n = img[o..].iter().position(|b| *b == 0).unwrap();
        &img[o..o + n]
    }

    #[test]
    fn the_stack_reads_back_like_linux_lays_it_out() {
        let top = 0x7000_0000;
        let e = Exec {
            argv: &[b"redis-server", b"--save", b""],
            envp: &[b"HOME=/"],
            phdr: 0x400040,
            phent: 56,
            phnum: 6,
            entry: 0x40271f,
            random: [7; 16],
            vdso: 0x5000_0000,
        };
        let (img, sp) = build(top, &e).unwrap();
        assert_eq!(sp % 16, 0);
        assert_eq!(sp + img.len() as u64, top);
        assert_eq!(word(&img, sp, sp), 3);
        assert_eq!(cstr(&img, sp, word(&img, sp, sp + 8)), b"redis-server");
        assert_eq!(cstr(&img, sp, word(&img, sp, sp + 24)), b"");
        assert_eq!(word(&img, sp, sp + 32), 0);
        assert_eq!(cstr(&img, sp, word(&img, sp, sp + 40)), b"HOME=/");
        assert_eq!(word(&img, sp, sp + 48), 0);
        let mut at = sp + 56;
        let mut aux = alloc::collections::BTreeMap::new();
        loop {
            let (k, v) = (word(&img, sp, at), word(&img, sp, at + 8));
            at += 16;
            if k == AT_NULL {
                break;
            }
            aux.insert(k, v);
        }
        assert_eq!(aux[&AT_PHDR], 0x400040);
        assert_eq!(aux[&AT_ENTRY], 0x40271f);
        assert_eq!(aux[&AT_SYSINFO_EHDR], 0x5000_0000);
        assert_eq!(cstr(&img, sp, aux[&AT_PLATFORM]), b"x86_64");
        assert_eq!(cstr(&img, sp, aux[&AT_EXECFN]), b"redis-server");
        let r = (aux[&AT_RANDOM] - sp) as usize;
        assert_eq!(&img[r..r + 16], &[7; 16]);
        assert!(build(16, &e).is_none(), "no room");
    }
}
