/* Waits in the sync call (100 ms deadlines) until the host sends EV_STOP,
   then exits 0. Prints "idle: waiting" once. */
.globl _start
.text
_start:
  lea desc(%rip), %rax
  mov $0x511, %dx
  out %eax, %dx
loop:
  mov sblock+16(%rip), %rcx
  add $100000000, %rcx
  mov %rcx, sblock+8(%rip)
  movl $1, sblock(%rip)
  lea sblock(%rip), %rax
  mov $0x510, %dx
  out %eax, %dx
  testl $16, sblock+4(%rip)
  jz loop
  xor %eax, %eax
  mov $0x512, %dx
  out %eax, %dx
.data
msg: .ascii "idle: waiting\n"
msg_end:
.align 16
desc: .quad msg, msg_end - msg
.align 16
sblock: .quad 0, 0, 0, 0
