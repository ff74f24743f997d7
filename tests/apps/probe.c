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
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

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
  printf("args:");
  for (int i = 1; i < argc; i++) printf(" [%s]", argv[i]);
  printf("\nprobe: done\n");
  return 7;
}
