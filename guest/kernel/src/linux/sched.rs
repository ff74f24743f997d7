//! App threads, switched only at system calls: a thread runs until it
//! blocks (`epoll_wait`, a futex, `nanosleep`, ...) or exits; then the next
//! runnable thread after it (by thread id, round robin) runs. When none can
//! run, the blocked calls are retried after each sync call until one
//! completes. Which thread runs when is thus a function of the calls and
//! the logged inputs alone.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;

use linux_raw_sys::errno::{EAGAIN, EINVAL, ETIMEDOUT};

use super::entry::Frame;
use super::kernel::{Kernel, MAX_WAIT_NS};
use super::{Call, Fail, Sys, Wait, dispatch, uaccess};

/// The first thread's id (and the process id).
pub const PID: u32 = 1000;

enum State {
    Running,
    Runnable,
    Blocked(Wait, u64),
}

pub struct Thread {
    /// Registers while not running (stale while running).
    frame: Box<Frame>,
    fs_base: u64,
    /// CLONE_CHILD_CLEARTID / set_tid_address: zeroed and woken at exit.
    pub clear_tid: u64,
    state: State,
    pub sigmask: u64,
}

pub struct Threads {
    list: BTreeMap<u32, Thread>,
    pub cur: u32,
    next_tid: u32,
    /// The FS base the CPU holds.
    hw_fs: u64,
    /// Orders futex waiters (first come, first woken).
    wait_seq: u64,
}

/// `wrfsbase`: ring 3 may set its own FS base (CR4.FSGSBASE where the
/// host has hardware virtualization; always on this host's PVM).
fn set_fs_base(v: u64) {
    // SAFETY: WRFSBASE only changes the FS segment base, which the
    // personality's own code never uses. Encoded as bytes so the assembler
    // needs no target feature: F3 48 0F AE D0 = wrfsbase rax.
    unsafe {
        core::arch::asm!(".byte 0xf3, 0x48, 0x0f, 0xae, 0xd0", in("rax") v, options(nostack, preserves_flags));
    }
}

impl Threads {
    pub fn new(main: Frame) -> Threads {
        let mut list = BTreeMap::new();
        list.insert(
            PID,
            Thread {
                frame: Box::new(main),
                fs_base: 0,
                clear_tid: 0,
                state: State::Running,
                sigmask: 0,
            },
        );
        Threads {
            list,
            cur: PID,
            next_tid: PID + 1,
            hw_fs: 0,
            wait_seq: 0,
        }
    }

    pub fn current(&mut self) -> Option<&mut Thread> {
        self.list.get_mut(&self.cur)
    }

    pub fn count(&self) -> usize {
        self.list.len()
    }

    /// `arch_prctl(ARCH_SET_FS)`.
    pub fn set_fs(&mut self, v: u64) {
        if let Some(t) = self.list.get_mut(&self.cur) {
            t.fs_base = v;
        }
        set_fs_base(v);
        self.hw_fs = v;
    }

    pub fn fs(&self) -> u64 {
        self.list.get(&self.cur).map_or(0, |t| t.fs_base)
    }

    /// The next runnable thread after the current one.
    fn pick(&self) -> Option<u32> {
        let after = self.list.range(self.cur + 1..).map(|(t, _)| *t);
        let before = self.list.range(..=self.cur).map(|(t, _)| *t);
        after
            .chain(before)
            .find(|t| matches!(self.list.get(t).map(|x| &x.state), Some(State::Runnable)))
    }
}

/// The calling thread blocks: its registers are kept and another thread
/// (or, after waiting for events, this one) continues in `frame`.
pub fn block(k: &mut Kernel, frame: &mut Frame, w: Wait) {
    let seq = k.threads.wait_seq;
    k.threads.wait_seq += 1;
    let cur = k.threads.cur;
    if let Some(t) = k.threads.list.get_mut(&cur) {
        *t.frame = frame.clone();
        t.state = State::Blocked(w, seq);
    }
    k.stats.blocks += 1;
    switch(k, frame);
}

/// Loads the next thread to run into `frame`, waiting for events while no
/// thread can run.
fn switch(k: &mut Kernel, frame: &mut Frame) {
    loop {
        retry(k);
        if let Some(tid) = k.threads.pick() {
            load(k, tid, frame);
            return;
        }
        if k.threads.list.is_empty() {
            k.shutdown(0);
        }
        if k.stop {
            k.shutdown(0);
        }
        let soonest = k
            .threads
            .list
            .values()
            .filter_map(|t| match &t.state {
                State::Blocked(w, _) => w.deadline(),
                _ => None,
            })
            .min();
        let now = k.now;
        let net = k.net.as_mut().and_then(|n| n.poll_delay_ns(now));
        let wait = [
            soonest.map(|d| d.saturating_sub(k.now)),
            net,
            Some(MAX_WAIT_NS),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(MAX_WAIT_NS);
        k.sync(wait > 0, k.now.saturating_add(wait));
    }
}

fn load(k: &mut Kernel, tid: u32, frame: &mut Frame) {
    let Some(t) = k.threads.list.get_mut(&tid) else {
        return;
    };
    *frame = (*t.frame).clone();
    t.state = State::Running;
    let fs = t.fs_base;
    if tid != k.threads.cur {
        k.stats.switches += 1;
    }
    k.threads.cur = tid;
    if fs != k.threads.hw_fs {
        set_fs_base(fs);
        k.threads.hw_fs = fs;
    }
}

/// Retries every blocked call once (in thread order); finished ones make
/// their thread runnable with the result in RAX.
fn retry(k: &mut Kernel) {
    let blocked: alloc::vec::Vec<(u32, Wait)> = k
        .threads
        .list
        .iter()
        .filter_map(|(tid, t)| match t.state {
            State::Blocked(w, _) => Some((*tid, w)),
            _ => None,
        })
        .collect();
    let running = k.threads.cur;
    for (tid, w) in blocked {
        let result = match w {
            Wait::Futex { deadline, .. } => match deadline {
                Some(d) if k.now >= d => Err(Fail::E(ETIMEDOUT)),
                _ => continue,
            },
            Wait::Retry { deadline } => {
                let Some(t) = k.threads.list.get(&tid) else {
                    continue;
                };
                let call = Call::of(&t.frame, deadline.or(Some(u64::MAX)));
                // The call runs as its own thread (for gettid and the like).
                k.threads.cur = tid;
                let r = dispatch::retry(k, &call);
                k.threads.cur = running;
                r
            }
        };
        finish(k, tid, result);
    }
}

/// Ends a blocked thread's call with `r` (or blocks it again).
fn finish(k: &mut Kernel, tid: u32, r: Sys) {
    let seq = k.threads.wait_seq;
    let Some(t) = k.threads.list.get_mut(&tid) else {
        return;
    };
    let rax = match r {
        Ok(v) => v,
        Err(Fail::E(e)) => (-i64::from(e)) as u64,
        Err(Fail::Block(w)) => {
            t.state = State::Blocked(w, seq);
            return;
        }
        Err(Fail::Switched) => return,
    };
    t.frame.rax = rax;
    t.state = State::Runnable;
}

/// `clone` for a thread (CLONE_VM|CLONE_THREAD...): the child starts at the
/// same point with RAX = 0 on `stack`; returns its id.
pub fn clone(k: &mut Kernel, parent: &Frame, stack: u64, tls: Option<u64>, clear_tid: u64) -> u32 {
    let tid = k.threads.next_tid;
    k.threads.next_tid += 1;
    let mut f = parent.clone();
    f.rax = 0;
    if stack != 0 {
        f.rsp = stack;
    }
    let fs_base = tls.unwrap_or_else(|| k.threads.fs());
    let sigmask = k.threads.current().map_or(0, |t| t.sigmask);
    k.threads.list.insert(
        tid,
        Thread {
            frame: Box::new(f),
            fs_base,
            clear_tid,
            state: State::Runnable,
            sigmask,
        },
    );
    k.stats.threads += 1;
    tid
}

/// The calling thread exits; `frame` gets the next thread.
pub fn exit_thread(k: &mut Kernel, frame: &mut Frame, status: u32) -> Sys {
    let cur = k.threads.cur;
    let clear = k.threads.list.get(&cur).map_or(0, |t| t.clear_tid);
    if clear != 0 && uaccess::put_u32(clear, 0).is_ok() {
        wake(k, clear, 1);
    }
    k.threads.list.remove(&cur);
    if k.threads.list.is_empty() {
        k.shutdown(status);
    }
    switch(k, frame);
    Err(Fail::Switched)
}

/// FUTEX_WAIT: blocks while `*addr == val`.
pub fn futex_wait(k: &Kernel, addr: u64, val: u32, deadline: Option<u64>) -> Sys {
    if !addr.is_multiple_of(4) {
        return Err(EINVAL.into());
    }
    if uaccess::get_u32(addr)? != val {
        return Err(EAGAIN.into());
    }
    if deadline.is_some_and(|d| k.now >= d) {
        return Err(ETIMEDOUT.into());
    }
    Err(Fail::Block(Wait::Futex { addr, deadline }))
}

/// FUTEX_WAKE: wakes up to `n` waiters on `addr`, oldest first.
pub fn wake(k: &mut Kernel, addr: u64, n: u64) -> u64 {
    requeue(k, addr, n, 0, 0)
}

/// Wakes `n` waiters on `addr` and moves up to `m` more to `to`.
pub fn requeue(k: &mut Kernel, addr: u64, n: u64, to: u64, m: u64) -> u64 {
    let mut waiters: alloc::vec::Vec<(u64, u32)> = k
        .threads
        .list
        .iter()
        .filter_map(|(tid, t)| match t.state {
            State::Blocked(Wait::Futex { addr: a, .. }, seq) if a == addr => Some((seq, *tid)),
            _ => None,
        })
        .collect();
    waiters.sort_unstable();
    let mut woken = 0;
    for (i, (_, tid)) in waiters.into_iter().enumerate() {
        let Some(t) = k.threads.list.get_mut(&tid) else {
            continue;
        };
        if (i as u64) < n {
            t.frame.rax = 0;
            t.state = State::Runnable;
            woken += 1;
        } else if (i as u64) < n.saturating_add(m) {
            if let State::Blocked(Wait::Futex { addr: a, .. }, _) = &mut t.state {
                *a = to;
            }
        } else {
            break;
        }
    }
    woken
}

/// `sched_yield`: another runnable thread runs first, if there is one.
pub fn yield_now(k: &mut Kernel, frame: &mut Frame) {
    if k.threads.pick().is_none() {
        k.idle_poll();
        return;
    }
    frame.rax = 0;
    let cur = k.threads.cur;
    if let Some(t) = k.threads.list.get_mut(&cur) {
        *t.frame = frame.clone();
        t.state = State::Runnable;
    }
    switch(k, frame);
}
