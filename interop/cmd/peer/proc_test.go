package main

import (
	"bufio"
	"bytes"
	"io"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"
)

// proc is a running peer, in-process (run) or as a subprocess, driven the
// way the Rust runner drives it: stdin held open, stdout read line by line.
type proc struct {
	t      *testing.T
	name   string
	stdin  io.WriteCloser
	lines  chan string
	exit   chan int
	stderr *syncBuffer
	// closed once stdout is fully read
	readDone chan struct{}
}

// syncBuffer is a goroutine-safe bytes.Buffer.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// startInProcess runs run(args) in a goroutine with piped stdin/stdout.
func startInProcess(t *testing.T, args ...string) *proc {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := newProc(t, strings.Join(args, " "), inW, outR)
	go func() {
		code := run(args, inR, outW, p.stderr)
		_ = outW.Close()
		p.exit <- code
	}()
	return p
}

// startBinary runs the built binary with piped stdin/stdout.
func startBinary(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	cmd := exec.Command(bin, args...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := newProc(t, "peer "+strings.Join(args, " "), stdin, stdout)
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		<-p.readDone
		_ = cmd.Wait()
		p.exit <- cmd.ProcessState.ExitCode()
	}()
	return p
}

func newProc(t *testing.T, name string, stdin io.WriteCloser, stdout io.Reader) *proc {
	p := &proc{t: t, name: name, stdin: stdin, lines: make(chan string, 1000), exit: make(chan int, 1), stderr: &syncBuffer{}}
	p.readDone = make(chan struct{})
	go func() {
		defer close(p.readDone)
		defer close(p.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() { _ = p.stdin.Close() })
	return p
}

// next returns the next stdout line, failing after timeout.
func (p *proc) next(timeout time.Duration) string {
	p.t.Helper()
	select {
	case line, ok := <-p.lines:
		if !ok {
			p.t.Fatalf("%s: stdout closed early; stderr:\n%s", p.name, p.stderr)
		}
		return line
	case <-time.After(timeout):
		p.t.Fatalf("%s: no stdout line within %v; stderr:\n%s", p.name, timeout, p.stderr)
	}
	return ""
}

// rest returns every remaining stdout line and the exit code.
func (p *proc) rest(timeout time.Duration) ([]string, int) {
	p.t.Helper()
	var lines []string
	deadline := time.After(timeout)
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				return lines, p.wait(timeout)
			}
			lines = append(lines, line)
		case <-deadline:
			p.t.Fatalf("%s: did not finish within %v; stdout so far %q; stderr:\n%s", p.name, timeout, lines, p.stderr)
		}
	}
}

// wait returns the exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case code := <-p.exit:
		return code
	case <-time.After(timeout):
		p.t.Fatalf("%s: did not exit within %v; stderr:\n%s", p.name, timeout, p.stderr)
	}
	return -1
}
