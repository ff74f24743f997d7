//! Descriptors and open file descriptions. A description is shared by the
//! descriptors `dup` makes (offset and status flags with it) and released
//! when the last one closes; epoll holds it weakly, so a closed file drops
//! out of every interest list, as on Linux.

use alloc::rc::Rc;
use alloc::vec::Vec;
use core::cell::RefCell;

use linux_raw_sys::errno::{EBADF, EMFILE};

use super::Fail;
use super::pipe::{EventFd, PipeEnd};
use super::poll::Epoll;
use super::sock::Socket;

/// What a description refers to.
pub enum Kind {
    /// Descriptor 0: reads see end of file, writes go to the console.
    Stdin,
    /// Descriptors 1 and 2: the guest console.
    Console,
    Null,
    Zero,
    Random,
    /// A generated read-only file (/proc, /sys).
    Synth(Vec<u8>),
    File(u32),
    Dir {
        ino: u32,
        path: Vec<u8>,
    },
    Socket(Socket),
    Epoll(Epoll),
    Pipe(PipeEnd),
    EventFd(EventFd),
}

pub struct Ofd {
    pub kind: Kind,
    /// O_* status flags (access mode, O_NONBLOCK, O_APPEND).
    pub flags: u32,
    pub pos: u64,
}

impl Ofd {
    pub fn new(kind: Kind, flags: u32) -> File {
        Rc::new(RefCell::new(Ofd {
            kind,
            flags,
            pos: 0,
        }))
    }

    pub fn nonblocking(&self) -> bool {
        self.flags & linux_raw_sys::general::O_NONBLOCK != 0
    }
}

pub type File = Rc<RefCell<Ofd>>;

struct Slot {
    file: File,
    cloexec: bool,
}

/// Highest number of descriptors (RLIMIT_NOFILE).
pub const MAX_FDS: usize = 65536;

#[derive(Default)]
pub struct FdTable {
    slots: Vec<Option<Slot>>,
}

impl FdTable {
    pub fn get(&self, fd: u64) -> Result<File, Fail> {
        self.slots
            .get(usize::try_from(fd).map_err(|_| Fail::E(EBADF))?)
            .and_then(Option::as_ref)
            .map(|s| s.file.clone())
            .ok_or(Fail::E(EBADF))
    }

    /// Installs `file` at the lowest free descriptor `>= min`.
    pub fn install(&mut self, file: File, cloexec: bool, min: usize) -> Result<u64, Fail> {
        let fd = (min..MAX_FDS)
            .find(|i| self.slots.get(*i).is_none_or(Option::is_none))
            .ok_or(Fail::E(EMFILE))?;
        self.put(fd, file, cloexec);
        Ok(fd as u64)
    }

    /// Puts `file` at `fd`, returning what was there.
    pub fn put(&mut self, fd: usize, file: File, cloexec: bool) -> Option<File> {
        if self.slots.len() <= fd {
            self.slots.resize_with(fd + 1, || None);
        }
        self.slots[fd]
            .replace(Slot { file, cloexec })
            .map(|s| s.file)
    }

    pub fn take(&mut self, fd: u64) -> Result<File, Fail> {
        usize::try_from(fd)
            .ok()
            .and_then(|i| self.slots.get_mut(i))
            .and_then(Option::take)
            .map(|s| s.file)
            .ok_or(Fail::E(EBADF))
    }

    pub fn cloexec(&self, fd: u64) -> Result<bool, Fail> {
        self.slots
            .get(fd as usize)
            .and_then(Option::as_ref)
            .map(|s| s.cloexec)
            .ok_or(Fail::E(EBADF))
    }

    pub fn set_cloexec(&mut self, fd: u64, on: bool) -> Result<(), Fail> {
        let s = self
            .slots
            .get_mut(fd as usize)
            .and_then(Option::as_mut)
            .ok_or(Fail::E(EBADF))?;
        s.cloexec = on;
        Ok(())
    }
}
