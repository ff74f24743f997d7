/* N getppid() system calls and nothing else: the cost of one system call,
 * measured from outside (the benchmark compares it run natively and in the
 * guest). Usage: getppid N */
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv) {
  long n = argc > 1 ? atol(argv[1]) : 0;
  for (long i = 0; i < n; i++) syscall(SYS_getppid);
  return 0;
}
