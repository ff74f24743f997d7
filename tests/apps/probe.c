/* The personality's edges, seen from a static musl program: an unsupported
 * system call, fork, a writable+executable mapping, threads with a
 * condition variable, files, a pipe, time and randomness. Prints one line
 * per check and exits with status 7 (so the exit status is checked too). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

/* Leaf functions that keep their argument in the red zone (below RSP)
 * across a `syscall` (getpid) and return it: the VMM must leave their
 * `syscall` alone, since a rewritten `call rax` would store its return
 * address right there. One with a symbol size, one without (hand-written
 * assembly often has none). */
long redzone_sized(long v);
long redzone_sizeless(long v);
__asm__(".text\n"
        ".globl redzone_sized\n.type redzone_sized,@function\n"
        "redzone_sized:\n"
        "  mov %rdi, -8(%rsp)\n  mov $39, %eax\n  syscall\n  mov -8(%rsp), %rax\n  ret\n"
        ".size redzone_sized, .-redzone_sized\n"
        ".globl redzone_sizeless\n.type redzone_sizeless,@function\n"
        "redzone_sizeless:\n"
        "  mov %rdi, -8(%rsp)\n  mov $39, %eax\n  syscall\n  mov -8(%rsp), %rax\n  ret\n");

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int stage;

static void *worker(void *arg) {
  pthread_mutex_lock(&mu);
  while (stage == 0) pthread_cond_wait(&cv, &mu);
  stage = 2;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  return arg;
}

/* System calls with hostile arguments: bad pointers (low, past the end of
 * RAM, non-canonical), bad descriptors, absurd lengths and flags. Every one
 * must fail with an error; the personality must not fault. Returns how many
 * failed (of `total`). */
static int hostile(int *total) {
  char buf[64];
  void *low = (void *)1, *far = (void *)0x7fff00000000UL, *wild = (void *)0xffff800000001000UL;
  int ep = epoll_create1(0);
  int dir = open(".", O_RDONLY | O_DIRECTORY);
  struct timespec neg = {-1, 0};
  long r[] = {
      syscall(SYS_write, 1, low, 10),
      syscall(SYS_write, 1, far, 100),
      syscall(SYS_read, 0, wild, 10),
      syscall(SYS_open, (char *)0, O_RDONLY),
      syscall(SYS_open, far, O_RDONLY),
      syscall(SYS_stat, ".", low),
      syscall(SYS_fstat, -1, buf),
      syscall(SYS_fstat, 999999, buf),
      syscall(SYS_fstat, 1, (void *)0),
      syscall(SYS_epoll_ctl, -1, 1, 1, buf),
      syscall(SYS_epoll_wait, ep, (void *)0, 10, 0),
      syscall(SYS_epoll_wait, ep, buf, -1, 0),
      syscall(SYS_epoll_wait, ep, buf, 1 << 30, 0),
      syscall(SYS_epoll_ctl, ep, 1, ep, buf),
      syscall(SYS_poll, (void *)0, 1 << 20, 0),
      syscall(SYS_select, 100000, 0, 0, 0, 0),
      syscall(SYS_readv, 1, far, 5),
      syscall(SYS_writev, 1, buf, 1 << 20),
      syscall(SYS_mmap, 0, 0, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      syscall(SYS_mmap, 0, 1UL << 62, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0),
      syscall(SYS_munmap, 1, 4096),
      syscall(SYS_mremap, 4096, 4096, 8192, 1),
      syscall(SYS_futex, (void *)0, 0, 0, 0),
      syscall(SYS_futex, buf + 1, 0, 0, 0),
      syscall(SYS_clock_gettime, 0, (void *)0),
      syscall(SYS_clock_gettime, 999, buf),
      syscall(SYS_nanosleep, (void *)0, 0),
      syscall(SYS_nanosleep, &neg, 0),
      syscall(SYS_getrandom, (void *)0, 10, 0),
      syscall(SYS_uname, far),
      syscall(SYS_sysinfo, low),
      syscall(SYS_getdents64, -1, buf, sizeof buf),
      syscall(SYS_getdents64, dir, far, 100),
      syscall(SYS_lseek, 1, 0, 99),
      syscall(SYS_fcntl, 1, 9999, 0),
      syscall(SYS_rt_sigaction, 0, 0, 0, 8),
      syscall(SYS_rt_sigaction, 100, 0, 0, 8),
      syscall(SYS_rt_sigaction, 2, far, 0, 8),
      syscall(SYS_prlimit64, 0, 999, 0, buf),
      syscall(SYS_arch_prctl, 0x9999, 0),
      syscall(SYS_getcwd, (void *)0, 100),
      syscall(SYS_getcwd, buf, 1),
      syscall(SYS_pipe, (void *)0),
      syscall(SYS_clone, 0, 0, 0, 0, 0),
      syscall(SYS_dup2, 1, -1),
      syscall(SYS_close, 999999),
      syscall(SYS_openat, 999999, "x", O_RDONLY),
      syscall(SYS_rename, wild, "y"),
      syscall(SYS_mkdir, "", 0755),
      syscall(SYS_unlink, "/"),
  };
  int failed = 0;
  *total = sizeof r / sizeof r[0];
  for (int i = 0; i < *total; i++) failed += r[i] < 0;
  return failed;
}

int main(int argc, char **argv) {
  long r = syscall(SYS_acct, 0);
  printf("acct: %ld errno=%d\n", r, r < 0 ? errno : 0);
  pid_t p = fork();
  printf("fork: %d errno=%d\n", (int)p, p < 0 ? errno : 0);
  void *wx = mmap(0, 4096, PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  printf("wx: %s errno=%d\n", wx == MAP_FAILED ? "refused" : "mapped", wx == MAP_FAILED ? errno : 0);

  pthread_t t;
  pthread_create(&t, 0, worker, (void *)42);
  pthread_mutex_lock(&mu);
  stage = 1;
  pthread_cond_broadcast(&cv);
  while (stage != 2) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  void *ret;
  pthread_join(t, &ret);
  printf("threads: %ld\n", (long)ret);

  int fd = open("probe.txt", O_CREAT | O_TRUNC | O_RDWR, 0644);
  const char msg[] = "written, synced, renamed";
  int w = write(fd, msg, sizeof msg - 1);
  int s = fdatasync(fd);
  close(fd);
  rename("probe.txt", "probe.done");
  char buf[64] = {0};
  fd = open("probe.done", O_RDONLY);
  int n = read(fd, buf, sizeof buf - 1);
  struct stat st;
  fstat(fd, &st);
  close(fd);
  printf("file: %d %d %d %lld \"%s\"\n", w, s, n, (long long)st.st_size, buf);

  int pfd[2];
  pipe(pfd);
  write(pfd[1], "pipe", 4);
  memset(buf, 0, sizeof buf);
  read(pfd[0], buf, sizeof buf);
  printf("pipe: %s\n", buf);

  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  clock_gettime(CLOCK_MONOTONIC, &b);
  unsigned char rnd[8];
  getrandom(rnd, sizeof rnd, 0);
  printf("time: %s random: %d\n", (b.tv_sec > a.tv_sec || (b.tv_sec == a.tv_sec && b.tv_nsec >= a.tv_nsec)) ? "monotonic" : "BACKWARDS", (int)getrandom(rnd, sizeof rnd, 0));
  long rz1 = redzone_sized(0x5eed1), rz2 = redzone_sizeless(0x5eed2);
  printf("red zone: %s\n", rz1 == 0x5eed1 && rz2 == 0x5eed2 ? "kept" : "CLOBBERED");
  int total, failed = hostile(&total);
  printf("hostile: %d of %d refused\n", failed, total);
  printf("args:");
  for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
  printf("\nprobe: done\n");
  return 7;
}
