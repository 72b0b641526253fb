package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// peerEnv is what a subcommand talks to.
type peerEnv struct {
	stdin io.Reader
	out   *lineOut
	log   io.Writer
}

// logf writes a diagnostic line to stderr.
func (e *peerEnv) logf(format string, args ...any) {
	fmt.Fprintf(e.log, "peer: "+format+"\n", args...)
}

// lineOut writes whole lines to stdout, one writer at a time.
type lineOut struct {
	mu sync.Mutex
	w  io.Writer
}

func newLineOut(w io.Writer) *lineOut { return &lineOut{w: w} }

// Write lets lineOut back a cases.Reporter; each call is one whole line.
func (o *lineOut) Write(p []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.w.Write(p)
}

// printf writes one line.
func (o *lineOut) printf(format string, args ...any) {
	fmt.Fprintf(o, format+"\n", args...)
}

// stdinClosed returns a channel closed when stdin reaches EOF (or fails).
func (e *peerEnv) stdinClosed() <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, e.stdin)
	}()
	return done
}

// untilStopped waits for stdin to close (or SIGINT/SIGTERM), stop to
// close, or timeout to pass, and says which: "stdin", "signal", "stop" or
// "timeout".
func (e *peerEnv) untilStopped(stop <-chan struct{}, timeout time.Duration) string {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(sigs)
	select {
	case <-e.stdinClosed():
		return "stdin"
	case <-sigs:
		return "signal"
	case <-stop:
		return "stop"
	case <-timer.C:
		return "timeout"
	}
}

// withTimeout is the overall bound of a subcommand.
func withTimeout(d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), d)
}
