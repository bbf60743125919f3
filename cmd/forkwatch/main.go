// Command forkwatch shows, live, every fork/clone on this node that fails
// because a PID or thread limit ran out: who called, which limit refused it,
// and which pod it belongs to.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
)

// version is forkwatch's version, stamped at build time
// (-ldflags "-X main.version=…", as deploy/Dockerfile does): --version
// prints it and forkwatch_build_info carries it.
var version = "dev"

// usageError is bad input or an environment forkwatch cannot run in: one
// line on stderr, exit code 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:])
	stop()
	switch {
	case err == nil:
	case errors.Is(err, pflag.ErrHelp):
	case errors.Is(err, errRisksFound):
		os.Exit(1) // doctor's report said it all

	case errors.As(err, new(usageError)):
		fmt.Fprintf(os.Stderr, "forkwatch: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "forkwatch: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	if len(args) > 0 && args[0] == "doctor" {
		return runDoctor(args[1:], os.Stdout)
	}
	var flags Flags
	fs := pflag.NewFlagSet("forkwatch", pflag.ContinueOnError)
	fs.SortFlags = false
	flags.SetFlags(fs)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage(fs)) }
	fs.SetOutput(devNull{})
	if err := flags.Parse(fs, args); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return err // pflag printed the usage
		}
		return usagef("%v (see forkwatch --help)", err)
	}
	if flags.Version {
		fmt.Printf("forkwatch %s\n", version)
		return nil
	}
	return watch(ctx, &flags)
}

// usage is --help: what forkwatch does, an example of each way to run it
// (people reach for examples first), then the flags.
func usage(fs *pflag.FlagSet) string {
	return `Usage: forkwatch [flags]
       forkwatch doctor [flags]   check the node's PID and thread limits

Shows every fork/clone that fails for lack of PIDs or threads, the limit that
refused it and the pod that called, and which pods create threads fastest.

Examples:
  sudo forkwatch                           during an incident: live, top-like
  forkwatch --pod NAME -n NS               tail one pod's tasks and failures
  forkwatch --metrics-addr :9479 -o json   the DaemonSet: Prometheus, JSON Lines
  forkwatch doctor                         check the limits before they bite

Flags:
` + fs.FlagUsages()
}

type devNull struct{}

func (devNull) Write(p []byte) (int, error) { return len(p), nil }
