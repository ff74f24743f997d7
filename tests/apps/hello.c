/* A trivial program; linked statically against glibc its startup code
 * executes CPUID (init_cpu_features), which the loader must refuse. */
#include <stdio.h>
int main(void) {
  puts("hello");
  return 0;
}
