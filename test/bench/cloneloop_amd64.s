#include "textflag.h"

// func cloneLoop(flags uintptr, n int) (failed, created int)
//
// n calls to clone(flags, newsp=0, 0, 0, 0), counting failures and
// successes. A child (clone returned 0) shares the caller's stack, so it
// touches no memory at all: it calls exit(2), which ends that thread only.
TEXT ·cloneLoop(SB), NOSPLIT, $0-32
	MOVQ	flags+0(FP), R12
	MOVQ	n+8(FP), R13
	XORQ	BX, BX		// failed
	XORQ	R9, R9		// created

loop:
	CMPQ	R13, $0
	JLE	done
	MOVQ	$56, AX		// SYS_clone
	MOVQ	R12, DI
	XORQ	SI, SI
	XORQ	DX, DX
	XORQ	R10, R10
	XORQ	R8, R8
	SYSCALL
	CMPQ	AX, $0
	JEQ	child
	JGT	ok
	INCQ	BX
	JMP	next

ok:
	INCQ	R9

next:
	DECQ	R13
	JMP	loop

child:
	MOVQ	$60, AX		// SYS_exit
	XORQ	DI, DI
	SYSCALL
	JMP	child

done:
	MOVQ	BX, failed+16(FP)
	MOVQ	R9, created+24(FP)
	RET
