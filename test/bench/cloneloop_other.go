//go:build !amd64

package main

const haveCloneLoop = false

func cloneLoop(flags uintptr, n int) (failed, created int) { panic("cloneLoop: amd64 only") }
