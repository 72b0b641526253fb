package main

import (
	"bufio"
	"fmt"
	"slices"
	"strings"
	"time"

	"grpctunnel-interop/roles"
)

// cmdBenchServer: serve the echo service directly and through forward
// tunnels, without the wiretap, until stdin closes (the Go side of the Rust
// benchmark, benches/tunnel).
func cmdBenchServer(e *peerEnv, args []string) int {
	var c commonFlags
	fs := e.newFlagSet("bench-server", &c, defaultServingTimeout)
	if err := parse(fs, args); err != nil {
		e.logf("bench-server: %v", err)
		return exitUsage
	}
	srv, err := roles.StartBenchServer(c.opts)
	if err != nil {
		e.logf("bench-server: %v", err)
		return exitFailed
	}
	e.out.printf("LISTENING %s", srv.Addr())
	why := e.untilStopped(nil, c.timeout)
	srv.Stop()
	if why == "timeout" {
		return exitTimeout
	}
	return exitOK
}

// cmdBenchClient: run the benchmark workloads against --addr through one
// forward tunnel (or, with --direct, plain gRPC) and print RESULT lines.
func cmdBenchClient(e *peerEnv, args []string) int {
	var c commonFlags
	var addr, workloads string
	var direct bool
	p := roles.BenchParams{}
	fs := e.newFlagSet("bench-client", &c, 30*time.Minute)
	fs.StringVar(&addr, "addr", "", "HOST:PORT of the server")
	fs.BoolVar(&direct, "direct", false, "call the echo service directly instead of through a tunnel")
	fs.StringVar(&workloads, "workloads", strings.Join(roles.BenchWorkloads, ","), "comma-separated workloads")
	fs.DurationVar(&p.Duration, "duration", 2*time.Second, "measured time of each throughput workload")
	fs.DurationVar(&p.Warmup, "warmup", 250*time.Millisecond, "unmeasured lead-in of each throughput workload")
	fs.IntVar(&p.Calls, "calls", 20000, "sequential unary calls (unary_seq)")
	fs.IntVar(&p.Callers, "callers", 64, "concurrent unary callers (unary_conc, mixed)")
	fs.IntVar(&p.Streams, "streams", 10000, "concurrent bidi streams (many_streams)")
	fs.IntVar(&p.OpenWindow, "open-window", 1000, "many_streams: streams between opening and their response (0: all)")
	list := func() []string { return strings.Split(workloads, ",") }
	known := func() error {
		for _, w := range list() {
			if !slices.Contains(roles.BenchWorkloads, w) {
				return fmt.Errorf("unknown workload %q", w)
			}
		}
		if p.Duration <= 0 || p.Calls <= 0 || p.Callers <= 0 || p.Streams <= 0 {
			return fmt.Errorf("--duration, --calls, --callers and --streams must be positive")
		}
		return nil
	}
	if err := parse(fs, args, required("addr", &addr), known); err != nil {
		e.logf("bench-client: %v", err)
		return exitUsage
	}
	ctx, cancel := withTimeout(c.timeout)
	defer cancel()
	bio := &benchIO{e: e, lines: stdinLines(e)}
	if err := roles.RunBenchClient(ctx, addr, direct, list(), p, c.opts, bio); err != nil {
		e.out.printf("ERROR setup %s", oneLine(err.Error()))
		return exitFailed
	}
	return exitOK
}

// benchIO prints RESULT/ERROR/READY/HOLD lines and reads the
// orchestrator's go-ahead lines from stdin.
type benchIO struct {
	e     *peerEnv
	lines <-chan string
}

func (b *benchIO) Result(workload string, figures []roles.Figure) {
	b.e.out.printf("%s", roles.FormatResult(workload, figures))
}

func (b *benchIO) Error(workload string, err error) {
	b.e.out.printf("ERROR %s %s", workload, oneLine(err.Error()))
}

func (b *benchIO) Sync(line string) error {
	b.e.out.printf("%s", line)
	if _, ok := <-b.lines; !ok {
		return fmt.Errorf("stdin closed during a pause")
	}
	return nil
}

// stdinLines delivers stdin line by line; closed at EOF.
func stdinLines(e *peerEnv) <-chan string {
	out := make(chan string)
	go func() {
		defer close(out)
		sc := bufio.NewScanner(e.stdin)
		for sc.Scan() {
			out <- sc.Text()
		}
	}()
	return out
}
