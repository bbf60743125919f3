/* Kernel types for forkwatch's CO-RE programs, one file per architecture,
 * dumped from BTF by update.sh. Only x86-64 nodes are supported today. */
#if defined(__TARGET_ARCH_x86)
#include "vmlinux_x86.h"
#else
#error "forkwatch: no vmlinux header for this architecture; run headers/update.sh on one"
#endif
