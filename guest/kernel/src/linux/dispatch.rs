//! System call numbers to handlers. Every argument is hostile input: the
//! handlers check pointers ([`super::uaccess`]), lengths and flags, and an
//! unknown call returns `ENOSYS`, counted and reported once by name.

use linux_raw_sys::errno::{EAGAIN, ECHILD, ENOSYS, EPERM};
use linux_raw_sys::general as g;

use super::entry::Frame;
use super::kernel::Kernel;
use super::{Call, Fail, Sys, files, info, mem, path, pipe, poll, sched, sock, sockopt, time};

/// A call that needs the caller's registers (it creates, ends or switches
/// threads), or `None`.
fn with_frame(k: &mut Kernel, c: &Call, frame: &mut Frame) -> Option<Sys> {
    let a = c.a;
    Some(match c.nr as u32 {
        g::__NR_clone => info::clone(k, c, frame),
        g::__NR_exit => sched::exit_thread(k, frame, a[0] as u32 & 0xff),
        g::__NR_exit_group => k.shutdown(a[0] as u32 & 0xff),
        g::__NR_sched_yield => {
            sched::yield_now(k, frame);
            Err(Fail::Switched)
        }
        _ => return None,
    })
}

/// The first attempt of a call.
pub fn dispatch(k: &mut Kernel, c: &Call, frame: &mut Frame) -> Sys {
    if let Some(r) = with_frame(k, c, frame) {
        return r;
    }
    table(k, c).unwrap_or_else(|| {
        k.stats.unsupported(c.nr, &mut k.console);
        Err(ENOSYS.into())
    })
}

/// A blocked call, tried again (only calls without a frame block).
pub fn retry(k: &mut Kernel, c: &Call) -> Sys {
    table(k, c).unwrap_or(Err(ENOSYS.into()))
}

fn table(k: &mut Kernel, c: &Call) -> Option<Sys> {
    let a = c.a;
    Some(match c.nr as u32 {
        // files and descriptors
        g::__NR_read => files::read(k, a[0], a[1], a[2], c),
        g::__NR_write => files::write(k, a[0], a[1], a[2], c),
        g::__NR_readv => files::readv(k, a[0], a[1], a[2], c),
        g::__NR_writev => files::writev(k, a[0], a[1], a[2], c),
        g::__NR_pread64 => files::pread(k, a[0], a[1], a[2], a[3]),
        g::__NR_pwrite64 => files::pwrite(k, a[0], a[1], a[2], a[3]),
        g::__NR_preadv => files::preadv(k, a[0], a[1], a[2], a[3]),
        g::__NR_pwritev => files::pwritev(k, a[0], a[1], a[2], a[3]),
        g::__NR_close => files::close(k, a[0]),
        g::__NR_lseek => files::lseek(k, a[0], a[1], a[2]),
        g::__NR_fstat => path::fstat(k, a[0], a[1]),
        g::__NR_dup => files::dup(k, a[0], 0, false),
        g::__NR_dup2 => files::dup2(k, a[0], a[1], 0),
        g::__NR_dup3 => files::dup2(k, a[0], a[1], a[2]),
        g::__NR_fcntl => files::fcntl(k, a[0], a[1], a[2]),
        g::__NR_ioctl => files::ioctl(k, a[0], a[1], a[2]),
        g::__NR_fsync | g::__NR_fdatasync => files::fsync(k, a[0]),
        g::__NR_sync | g::__NR_syncfs => files::sync_all(k),
        g::__NR_ftruncate => files::ftruncate(k, a[0], a[1]),
        g::__NR_fallocate => files::fallocate(k, a[0], a[1], a[2], a[3]),
        g::__NR_flock => Ok(0),
        g::__NR_sendfile => files::sendfile(k, a[0], a[1], a[2], a[3]),
        // paths
        g::__NR_open => path::openat(k, g::AT_FDCWD as u64, a[0], a[1], a[2]),
        g::__NR_openat => path::openat(k, a[0], a[1], a[2], a[3]),
        g::__NR_creat => path::openat(
            k,
            g::AT_FDCWD as u64,
            a[0],
            u64::from(g::O_CREAT | g::O_WRONLY | g::O_TRUNC),
            a[1],
        ),
        g::__NR_stat => path::fstatat(k, g::AT_FDCWD as u64, a[0], a[1], 0),
        g::__NR_lstat => path::fstatat(k, g::AT_FDCWD as u64, a[0], a[1], 0),
        g::__NR_newfstatat => path::fstatat(k, a[0], a[1], a[2], a[3]),
        g::__NR_statx => path::statx(k, a[0], a[1], a[2], a[4]),
        g::__NR_access => path::faccessat(k, g::AT_FDCWD as u64, a[0]),
        g::__NR_faccessat | g::__NR_faccessat2 => path::faccessat(k, a[0], a[1]),
        g::__NR_getcwd => path::getcwd(k, a[0], a[1]),
        g::__NR_chdir => path::chdir(k, a[0]),
        g::__NR_fchdir => path::fchdir(k, a[0]),
        g::__NR_mkdir => path::mkdirat(k, g::AT_FDCWD as u64, a[0], a[1]),
        g::__NR_mkdirat => path::mkdirat(k, a[0], a[1], a[2]),
        g::__NR_rmdir => path::unlinkat(k, g::AT_FDCWD as u64, a[0], u64::from(g::AT_REMOVEDIR)),
        g::__NR_unlink => path::unlinkat(k, g::AT_FDCWD as u64, a[0], 0),
        g::__NR_unlinkat => path::unlinkat(k, a[0], a[1], a[2]),
        g::__NR_rename => path::renameat(k, g::AT_FDCWD as u64, a[0], g::AT_FDCWD as u64, a[1]),
        g::__NR_renameat | g::__NR_renameat2 => path::renameat(k, a[0], a[1], a[2], a[3]),
        g::__NR_readlink => path::readlinkat(k, g::AT_FDCWD as u64, a[0], a[1], a[2]),
        g::__NR_readlinkat => path::readlinkat(k, a[0], a[1], a[2], a[3]),
        g::__NR_truncate => path::truncate(k, a[0], a[1]),
        g::__NR_getdents64 => path::getdents64(k, a[0], a[1], a[2]),
        g::__NR_utimensat => path::utimensat(k, a[0], a[1], a[2]),
        g::__NR_statfs => path::statfs(k, a[1]),
        g::__NR_fstatfs => path::statfs(k, a[1]),
        g::__NR_chmod
        | g::__NR_fchmod
        | g::__NR_fchmodat
        | g::__NR_chown
        | g::__NR_fchown
        | g::__NR_lchown
        | g::__NR_fchownat => Ok(0),
        g::__NR_link
        | g::__NR_linkat
        | g::__NR_symlink
        | g::__NR_symlinkat
        | g::__NR_mknod
        | g::__NR_mknodat => Err(EPERM.into()),
        // memory
        g::__NR_brk => mem::brk(k, a[0]),
        g::__NR_mmap => mem::mmap(k, a[0], a[1], a[2], a[3], a[4], a[5]),
        g::__NR_munmap => mem::munmap(k, a[0], a[1]),
        g::__NR_mremap => mem::mremap(k, a[0], a[1], a[2], a[3]),
        g::__NR_mprotect => mem::mprotect(k, a[0], a[1], a[2]),
        g::__NR_madvise => mem::madvise(k, a[0], a[1], a[2]),
        g::__NR_msync
        | g::__NR_mlock
        | g::__NR_munlock
        | g::__NR_mlockall
        | g::__NR_munlockall
        | g::__NR_membarrier => Ok(0),
        // sockets
        g::__NR_socket => sock::socket(k, a[0], a[1], a[2]),
        g::__NR_bind => sock::bind(k, a[0], a[1], a[2]),
        g::__NR_listen => sock::listen(k, a[0], a[1]),
        g::__NR_accept => sock::accept(k, a[0], a[1], a[2], 0, c),
        g::__NR_accept4 => sock::accept(k, a[0], a[1], a[2], a[3], c),
        g::__NR_connect => sock::connect(k, a[0], a[1], a[2], c),
        g::__NR_sendto => sockopt::sendto(k, a[0], a[1], a[2], a[3], c),
        g::__NR_recvfrom => sockopt::recvfrom(k, a[0], a[1], a[2], a[3], a[4], a[5], c),
        g::__NR_sendmsg => sockopt::sendmsg(k, a[0], a[1], a[2], c),
        g::__NR_recvmsg => sockopt::recvmsg(k, a[0], a[1], a[2], c),
        g::__NR_shutdown => sock::shutdown(k, a[0], a[1]),
        g::__NR_getsockname => sock::name(k, a[0], a[1], a[2], false),
        g::__NR_getpeername => sock::name(k, a[0], a[1], a[2], true),
        g::__NR_setsockopt => sockopt::setsockopt(k, a[0], a[1], a[2], a[3], a[4]),
        g::__NR_getsockopt => sockopt::getsockopt(k, a[0], a[1], a[2], a[3], a[4]),
        // readiness
        g::__NR_epoll_create | g::__NR_epoll_create1 => poll::epoll_create(k, a[0], c.nr),
        g::__NR_epoll_ctl => poll::epoll_ctl(k, a[0], a[1], a[2], a[3]),
        g::__NR_epoll_wait | g::__NR_epoll_pwait => {
            poll::epoll_wait(k, a[0], a[1], a[2], time::ms_timeout(a[3]), c)
        }
        g::__NR_epoll_pwait2 => {
            time::timespec_timeout(a[3]).and_then(|t| poll::epoll_wait(k, a[0], a[1], a[2], t, c))
        }
        g::__NR_poll => poll::poll(k, a[0], a[1], time::ms_timeout(a[2]), c),
        g::__NR_ppoll => time::timespec_timeout(a[2]).and_then(|t| poll::poll(k, a[0], a[1], t, c)),
        g::__NR_select => {
            time::timeval_timeout(a[4]).and_then(|t| poll::select(k, a[0], a[1], a[2], a[3], t, c))
        }
        g::__NR_pselect6 => {
            time::timespec_timeout(a[4]).and_then(|t| poll::select(k, a[0], a[1], a[2], a[3], t, c))
        }
        g::__NR_pipe => pipe::pipe(k, a[0], 0),
        g::__NR_pipe2 => pipe::pipe(k, a[0], a[1]),
        g::__NR_eventfd => pipe::eventfd(k, a[0], 0),
        g::__NR_eventfd2 => pipe::eventfd(k, a[0], a[1]),
        // threads and processes
        g::__NR_futex => info::futex(k, c),
        g::__NR_set_tid_address => info::set_tid_address(k, a[0]),
        g::__NR_set_robust_list | g::__NR_get_robust_list => Ok(0),
        g::__NR_gettid => Ok(u64::from(k.threads.cur)),
        g::__NR_getpid | g::__NR_getpgrp | g::__NR_getsid | g::__NR_getpgid => {
            Ok(u64::from(sched::PID))
        }
        g::__NR_getppid => Ok(1),
        g::__NR_fork | g::__NR_vfork => {
            k.stats.forks_refused += 1;
            Err(EAGAIN.into())
        }
        g::__NR_wait4 | g::__NR_waitid => Err(ECHILD.into()),
        g::__NR_execve | g::__NR_execveat => Err(linux_raw_sys::errno::EACCES.into()),
        g::__NR_kill | g::__NR_tkill | g::__NR_tgkill => info::kill(k, c),
        g::__NR_nanosleep => time::nanosleep(k, a[0], c),
        g::__NR_clock_nanosleep => time::clock_nanosleep(k, a[0], a[1], a[2], c),
        g::__NR_sched_getaffinity => info::getaffinity(a[1], a[2]),
        g::__NR_sched_setaffinity
        | g::__NR_setpriority
        | g::__NR_sched_setscheduler
        | g::__NR_sched_setparam
        | g::__NR_setsid
        | g::__NR_setpgid
        | g::__NR_setuid
        | g::__NR_setgid
        | g::__NR_setgroups
        | g::__NR_setresuid
        | g::__NR_setresgid => Ok(0),
        g::__NR_getpriority => Ok(20),
        // identity, limits, signals
        g::__NR_uname => info::uname(a[0]),
        g::__NR_sysinfo => info::sysinfo(k, a[0]),
        g::__NR_getrlimit => info::prlimit(0, a[0], 0, a[1]),
        g::__NR_prlimit64 => info::prlimit(a[0], a[1], a[2], a[3]),
        g::__NR_setrlimit => Ok(0),
        g::__NR_getrusage => info::getrusage(k, a[1]),
        g::__NR_times => info::times(k, a[0]),
        g::__NR_umask => info::umask(k, a[0]),
        g::__NR_getuid | g::__NR_geteuid | g::__NR_getgid | g::__NR_getegid => Ok(0),
        g::__NR_getresuid | g::__NR_getresgid => info::getres(a[0], a[1], a[2]),
        g::__NR_getgroups => Ok(0),
        g::__NR_arch_prctl => info::arch_prctl(k, a[0], a[1]),
        g::__NR_prctl => info::prctl(k, a[0], a[1]),
        g::__NR_rt_sigaction => info::sigaction(k, a[0], a[1], a[2], a[3]),
        g::__NR_rt_sigprocmask => info::sigprocmask(k, a[0], a[1], a[2], a[3]),
        g::__NR_sigaltstack => info::sigaltstack(a[1]),
        g::__NR_setitimer => info::itimer(a[2]),
        g::__NR_getitimer => info::itimer(a[1]),
        g::__NR_alarm => Ok(0),
        g::__NR_getrandom => time::getrandom(k, a[0], a[1]),
        // time
        g::__NR_clock_gettime => time::clock_gettime(k, a[0], a[1]),
        g::__NR_clock_getres => time::clock_getres(a[1]),
        g::__NR_gettimeofday => time::gettimeofday(k, a[0]),
        g::__NR_time => time::time(k, a[0]),
        _ => return None,
    })
}
