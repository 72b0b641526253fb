package main

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"grpctunnel-interop/cases"
)

const (
	lineWait = 10 * time.Second
	runWait  = 90 * time.Second
)

var (
	listeningRe = regexp.MustCompile(`^LISTENING (127\.0\.0\.1:\d+)$`)
	caseLineRe  = regexp.MustCompile(`^(PASS|FAIL|SKIP) (\S+?)(: .*)?$`)
	resultRe    = regexp.MustCompile(`^RESULT (\d+) passed, (\d+) failed$`)
)

// listening reads the LISTENING line and returns the address.
func listening(t *testing.T, p *proc) string {
	t.Helper()
	line := p.next(lineWait)
	m := listeningRe.FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("%s: first line %q, want LISTENING 127.0.0.1:PORT", p.name, line)
	}
	return m[1]
}

// checkReport checks a test role's output: one PASS (or SKIP, for
// skippable) line per case per scope, in order, then the RESULT line, and
// exit code 0.
func checkReport(t *testing.T, lines []string, code int, scopes []string, skippable ...string) {
	t.Helper()
	var want []string
	for _, scope := range scopes {
		for _, name := range cases.Names() {
			if scope != "" {
				name = scope + "/" + name
			}
			want = append(want, name)
		}
	}
	if len(lines) != len(want)+1 {
		t.Fatalf("got %d lines, want %d case lines and RESULT:\n%s", len(lines), len(want), strings.Join(lines, "\n"))
	}
	passed := 0
	for i, name := range want {
		m := caseLineRe.FindStringSubmatch(lines[i])
		if m == nil || m[2] != name {
			t.Fatalf("line %d is %q, want a line for %s", i, lines[i], name)
		}
		caseName := name[strings.LastIndex(name, "/")+1:]
		switch {
		case m[1] == "PASS":
			passed++
		case m[1] == "SKIP" && slices.Contains(skippable, caseName):
		default:
			t.Errorf("line %q", lines[i])
		}
	}
	wantResult := fmt.Sprintf("RESULT %d passed, 0 failed", passed)
	if last := lines[len(lines)-1]; last != wantResult || !resultRe.MatchString(last) {
		t.Errorf("last line %q, want %q", last, wantResult)
	}
	if code != exitOK {
		t.Errorf("exit code %d, want 0", code)
	}
}

// stopServing closes stdin of a long-running role and checks it exits 0.
func stopServing(t *testing.T, p *proc) []string {
	t.Helper()
	_ = p.stdin.Close()
	lines, code := p.rest(lineWait)
	if code != exitOK {
		t.Errorf("%s: exit code %d after stdin closed, want 0; stderr:\n%s", p.name, code, p.stderr)
	}
	return lines
}

// TestForwardRoles: serve-forward and forward-client through the command
// line, in the default mode and with each flag on one side.
func TestForwardRoles(t *testing.T) {
	for _, tc := range []struct {
		name         string
		server, cli  []string
		slowSkipped  bool
		wantRevision string
	}{
		{"default", nil, nil, false, "streams=rev1:"},
		{"no-negotiate-client", nil, []string{"--no-negotiate"}, true, "settings=0 streams=rev0:"},
		{"no-flow-control-server", []string{"--no-flow-control"}, nil, true, "revisions=[0] window=65536 streams=rev0:"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := startInProcess(t, append([]string{"serve-forward"}, tc.server...)...)
			addr := listening(t, srv)
			cli := startInProcess(t, append([]string{"forward-client", "--addr", addr}, tc.cli...)...)
			lines, code := cli.rest(runWait)
			var skippable []string
			if tc.slowSkipped {
				skippable = []string{"slow_consumer"}
			}
			checkReport(t, lines, code, []string{""}, skippable...)
			if !strings.Contains(cli.stderr.String(), tc.wantRevision) {
				t.Errorf("client stderr lacks %q:\n%s", tc.wantRevision, cli.stderr)
			}
			if rest := stopServing(t, srv); len(rest) != 0 {
				t.Errorf("serve-forward printed %q after LISTENING", rest)
			}
		})
	}
}

// TestReverseRoles: reverse-server with two keyed reverse clients; the
// clients print SERVING, the server runs the pool and both key scopes, and
// the clients print "ENDED ok" when the server closes their tunnels.
func TestReverseRoles(t *testing.T) {
	srv := startInProcess(t, "reverse-server", "--tunnels", "2", "--key-header", "x-agent-key")
	addr := listening(t, srv)
	var clients []*proc
	for _, key := range []string{"k1", "k2"} {
		c := startInProcess(t, "reverse-client", "--addr", addr, "--key", key)
		if line := c.next(lineWait); line != "SERVING" {
			t.Fatalf("reverse client %s: first line %q, want SERVING", key, line)
		}
		clients = append(clients, c)
	}
	lines, code := srv.rest(runWait)
	checkReport(t, lines, code, []string{"pool", "key=k1", "key=k2"})
	for _, c := range clients {
		lines, code := c.rest(lineWait)
		if !slices.Equal(lines, []string{"ENDED ok"}) || code != exitOK {
			t.Errorf("%s: lines %q exit %d, want [ENDED ok] and 0", c.name, lines, code)
		}
	}
}

// TestReverseClientStdinClose: a reverse client (here against serve-forward,
// whose handler also accepts reverse tunnels) stops when stdin closes.
func TestReverseClientStdinClose(t *testing.T) {
	srv := startInProcess(t, "serve-forward")
	addr := listening(t, srv)
	c := startInProcess(t, "reverse-client", "--addr", addr, "--key", "solo", "--no-negotiate")
	if line := c.next(lineWait); line != "SERVING" {
		t.Fatalf("first line %q, want SERVING", line)
	}
	if lines := stopServing(t, c); !slices.Equal(lines, []string{"ENDED ok"}) {
		t.Errorf("lines after stdin closed %q, want [ENDED ok]", lines)
	}
	stopServing(t, srv)
}

// TestFailures: setup failures end with FAIL lines, RESULT and exit 1;
// bad command lines exit 2.
func TestFailures(t *testing.T) {
	t.Run("forward-client without server", func(t *testing.T) {
		p := startInProcess(t, "forward-client", "--addr", "127.0.0.1:1")
		lines, code := p.rest(lineWait)
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "FAIL tunnel: ") ||
			lines[1] != "RESULT 0 passed, 1 failed" || code != exitFailed {
			t.Errorf("lines %q exit %d", lines, code)
		}
	})
	t.Run("reverse-server without tunnels", func(t *testing.T) {
		p := startInProcess(t, "reverse-server", "--tunnels", "1", "--timeout", "300ms")
		listening(t, p)
		lines, code := p.rest(lineWait)
		if len(lines) != 2 || !strings.HasPrefix(lines[0], "FAIL tunnels: only 0 of 1") ||
			lines[1] != "RESULT 0 passed, 1 failed" || code != exitFailed {
			t.Errorf("lines %q exit %d", lines, code)
		}
	})
	t.Run("reverse-client without server", func(t *testing.T) {
		p := startInProcess(t, "reverse-client", "--addr", "127.0.0.1:1", "--key", "x")
		lines, code := p.rest(lineWait)
		if len(lines) != 1 || !strings.HasPrefix(lines[0], "ENDED ") || lines[0] == "ENDED ok" || code != exitFailed {
			t.Errorf("lines %q exit %d", lines, code)
		}
	})
	for _, args := range [][]string{
		{}, {"bogus"}, {"forward-client"}, {"reverse-server"}, {"reverse-client", "--addr", "x"},
		{"serve-forward", "extra"}, {"serve-forward", "--no-such-flag"},
	} {
		t.Run(fmt.Sprintf("usage %q", args), func(t *testing.T) {
			p := startInProcess(t, args...)
			if lines, code := p.rest(lineWait); len(lines) != 0 || code != exitUsage {
				t.Errorf("lines %q exit %d, want none and %d", lines, code, exitUsage)
			}
		})
	}
}

// TestBinary builds the peer and drives the real executable once in each
// direction, as the Rust runner does.
func TestBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := filepath.Join(t.TempDir(), "peer")
	if out, err := exec.Command("go", "build", "-buildvcs=false", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	srv := startBinary(t, bin, "serve-forward")
	addr := listening(t, srv)
	lines, code := startBinary(t, bin, "forward-client", "--addr", addr).rest(runWait)
	checkReport(t, lines, code, []string{""})

	rs := startBinary(t, bin, "reverse-server", "--tunnels", "1")
	raddr := listening(t, rs)
	rc := startBinary(t, bin, "reverse-client", "--addr", raddr, "--key", "bin")
	if line := rc.next(lineWait); line != "SERVING" {
		t.Fatalf("first line %q, want SERVING", line)
	}
	lines, code = rs.rest(runWait)
	checkReport(t, lines, code, []string{"pool"})
	if lines, code := rc.rest(lineWait); !slices.Equal(lines, []string{"ENDED ok"}) || code != exitOK {
		t.Errorf("reverse-client: lines %q exit %d", lines, code)
	}
	stopServing(t, srv)
}
