// Command peer is the Go side of the grpctunnel interop harness: one binary
// whose subcommands play the four tunnel roles with the Go reference
// implementation (github.com/jhump/grpctunnel v0.3.0). Machine-readable
// lines go to stdout, everything else to stderr; see README.md for the line
// protocol and exit codes.
package main

import (
	"fmt"
	"io"
	"os"
)

// Exit codes.
const (
	exitOK      = 0 // success (all cases passed; tunnel ended cleanly)
	exitFailed  = 1 // a case failed, setup failed, or the tunnel ended with an error
	exitUsage   = 2 // bad command line
	exitTimeout = 3 // a long-running role reached its --timeout
)

const usage = `usage:
  peer serve-forward  [--no-flow-control] [--no-negotiate] [--timeout D]
  peer forward-client --addr HOST:PORT [--no-flow-control] [--no-negotiate] [--timeout D]
  peer reverse-server --tunnels N [--key-header NAME] [--no-flow-control] [--no-negotiate] [--timeout D]
  peer reverse-client --addr HOST:PORT --key K [--no-flow-control] [--no-negotiate] [--timeout D]
  peer cases          (lists the case names, one per line)
  peer bench-server   [--no-flow-control] [--timeout D]
  peer bench-client   --addr HOST:PORT [--direct] [--workloads LIST] [--duration D] [--warmup D]
                      [--calls N] [--callers N] [--streams N] [--open-window N] [--no-flow-control] [--timeout D]
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
}

// run executes one subcommand and returns the exit code.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return exitUsage
	}
	env := &peerEnv{stdin: stdin, out: newLineOut(stdout), log: stderr}
	switch args[0] {
	case "serve-forward":
		return cmdServeForward(env, args[1:])
	case "forward-client":
		return cmdForwardClient(env, args[1:])
	case "reverse-server":
		return cmdReverseServer(env, args[1:])
	case "reverse-client":
		return cmdReverseClient(env, args[1:])
	case "cases":
		return cmdCases(env)
	case "bench-server":
		return cmdBenchServer(env, args[1:])
	case "bench-client":
		return cmdBenchClient(env, args[1:])
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return exitOK
	default:
		fmt.Fprintf(stderr, "unknown subcommand %q\n%s", args[0], usage)
		return exitUsage
	}
}
