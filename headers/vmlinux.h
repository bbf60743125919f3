/* Kernel types for forkwatch's CO-RE programs, one file per architecture,
 * dumped from BTF by update.sh. */
#if defined(__TARGET_ARCH_x86)
#include "vmlinux_x86.h"
#elif defined(__TARGET_ARCH_arm64)
#include "vmlinux_arm64.h"
#else
#error "forkwatch: no vmlinux header for this architecture; run headers/update.sh on one"
#endif
