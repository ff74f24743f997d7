/* A minimal guest for VMM tests: prints, makes a plain and a waiting sync
   call, uses SSE at ring 3, exits with status 7. */
.globl _start
.text
_start:
  lea desc(%rip), %rax
  mov $0x511, %dx
  out %eax, %dx
  lea sblock(%rip), %rax
  mov $0x510, %dx
  out %eax, %dx
  mov sblock+16(%rip), %rcx
  add $20000000, %rcx
  mov %rcx, sblock+8(%rip)
  movl $1, sblock(%rip)
  lea sblock(%rip), %rax
  out %eax, %dx
  /* the wait must have ended by the deadline with EV_TIMER */
  testl $8, sblock+4(%rip)
  jz bad
  mov sblock+16(%rip), %rcx
  cmp sblock+8(%rip), %rcx
  jb bad
  xorps %xmm0, %xmm0
  movdqa %xmm0, aligned(%rip)
  mov $7, %eax
  mov $0x512, %dx
  out %eax, %dx
bad:
  mov $99, %eax
  mov $0x512, %dx
  out %eax, %dx
.data
msg: .ascii "hello from ring 3\n"
msg_end:
.align 16
desc: .quad msg, msg_end - msg
.align 16
sblock: .quad 0, 0, 0, 0
.align 16
aligned: .quad 0, 0
