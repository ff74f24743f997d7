/* Never makes a sync call again after its banner: only a forced stop ends it. */
.globl _start
.text
_start:
  lea desc(%rip), %rax
  mov $0x511, %dx
  out %eax, %dx
1: jmp 1b
.data
msg: .ascii "spin: forever\n"
msg_end:
.align 16
desc: .quad msg, msg_end - msg
