package roles

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// Workload names and sizes, the same as the Rust bench
// (benches/tunnel/workloads.rs), which drives this client.
const (
	benchSmall         = 100
	benchClientMessage = 64 << 10
	benchPushMessage   = 1 << 20
)

// BenchWorkloads lists the workloads in the order the Rust bench runs them.
var BenchWorkloads = []string{
	"unary_seq", "unary_conc", "stream_64k", "stream_1m",
	"client_stream", "bidi_pingpong", "many_streams", "mixed",
}

// BenchParams are the workload parameters.
type BenchParams struct {
	Duration time.Duration // measured time of each throughput workload
	Warmup   time.Duration // unmeasured lead-in of each throughput workload
	Calls    int           // sequential unary calls (unary_seq)
	Callers  int           // concurrent unary callers (unary_conc, mixed)
	Streams  int           // concurrent bidi streams (many_streams)
	// OpenWindow bounds the many_streams streams between opening and
	// their response (0: no bound); see the Rust bench's many_streams.
	OpenWindow int
}

// BenchIO is where the bench client reports.
type BenchIO interface {
	// Result reports one workload's figures (a RESULT line).
	Result(workload string, figures []Figure)
	// Error reports a failed workload (an ERROR line).
	Error(workload string, err error)
	// Sync prints a line (READY/HOLD) and waits for the orchestrator's go.
	Sync(line string) error
}

// Figure is one key=value of a RESULT line.
type Figure struct {
	Key   string
	Value float64
}

// FormatResult is the RESULT line of a workload.
func FormatResult(workload string, figures []Figure) string {
	var b strings.Builder
	b.WriteString("RESULT ")
	b.WriteString(workload)
	for _, f := range figures {
		fmt.Fprintf(&b, " %s=%s", f.Key, strconv.FormatFloat(f.Value, 'f', -1, 64))
	}
	return b.String()
}

// RunBenchClient dials addr and runs the workloads through one forward
// tunnel (grpctunnel.NewChannel), or, with direct, on the plain connection.
// Setup failures are returned; workload failures go to out.Error.
func RunBenchClient(ctx context.Context, addr string, direct bool, workloads []string, p BenchParams, opts Options, out BenchIO) error {
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
		),
	)
	if err != nil {
		return err
	}
	defer cc.Close()
	var conn grpc.ClientConnInterface = cc
	if !direct {
		ch, cancel, err := openForward(ctx, tunnelpb.NewTunnelServiceClient(cc), opts)
		if err != nil {
			return err
		}
		defer cancel()
		defer ch.Close()
		conn = &earlyCloseTolerant{ClientConnInterface: ch}
	}
	b := &bench{ctx: ctx, client: echopb.NewEchoServiceClient(conn), p: p, out: out}
	if t, ok := conn.(*earlyCloseTolerant); ok {
		b.early = &t.early
	}
	for range 200 {
		if err := b.unary(b.small()); err != nil {
			return fmt.Errorf("warm-up: %w", err)
		}
	}
	for _, w := range workloads {
		figures, err := b.run(w)
		if err != nil {
			out.Error(w, err)
		} else {
			out.Result(w, figures)
		}
		time.Sleep(50 * time.Millisecond) // let cancelled streams wind down
	}
	return nil
}

type bench struct {
	ctx    context.Context
	client echopb.EchoServiceClient
	p      BenchParams
	out    BenchIO
	early  *atomic.Int64 // see earlyCloseTolerant; nil on direct connections
}

// earlyCloseTolerant works around a Go reference defect (v0.3.0): when the
// tunnel server answers a unary call and sends close_stream before the
// client's CloseSend, tunnelClientStream.CloseSend returns the stream's end
// (io.EOF) and TunnelChannel.Invoke returns that EOF as the call's error,
// although the response arrived. A Go tunnel server never answers before
// half_close (P-35), but any other server may: tonic runs a handler served
// through its streaming path (as the Rust echo service serves Unary) as soon
// as the first message arrives. Invoke here is Invoke's own sequence with
// that EOF ignored; early counts the calls that needed it.
type earlyCloseTolerant struct {
	grpc.ClientConnInterface
	early atomic.Int64
}

func (c *earlyCloseTolerant) Invoke(ctx context.Context, method string, req, resp any, opts ...grpc.CallOption) error {
	s, err := c.NewStream(ctx, &grpc.StreamDesc{}, method, opts...)
	if err != nil {
		return err
	}
	if err := s.SendMsg(req); err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if err := s.CloseSend(); errors.Is(err, io.EOF) {
		c.early.Add(1)
	} else if err != nil {
		return err
	}
	// For a non-server-streaming call, RecvMsg also checks that no second
	// response follows (and waits for close_stream).
	return s.RecvMsg(resp)
}

// withEarly adds the early_close figure (calls that needed the workaround
// since the last call) when the workload ran through a Go tunnel.
func (b *bench) withEarly(figures []Figure, before int64) []Figure {
	if b.early == nil {
		return figures
	}
	return append(figures, Figure{"early_close", float64(b.early.Load() - before)})
}

func (b *bench) run(w string) ([]Figure, error) {
	var before int64
	if b.early != nil {
		before = b.early.Load()
	}
	figures, err := b.runOne(w)
	if err != nil {
		return nil, err
	}
	return b.withEarly(figures, before), nil
}

func (b *bench) runOne(w string) ([]Figure, error) {
	switch w {
	case "unary_seq":
		return b.unarySeq()
	case "unary_conc":
		rate, lat, err := b.unaryLoad()
		if err != nil {
			return nil, err
		}
		return append([]Figure{{"calls_per_s", rate}}, latencies(lat)...), nil
	case "stream_64k":
		return b.serverStream(64 << 10)
	case "stream_1m":
		return b.serverStream(1 << 20)
	case "client_stream":
		return b.clientStream()
	case "bidi_pingpong":
		return b.bidiPingpong()
	case "many_streams":
		return b.manyStreams()
	case "mixed":
		return b.mixed()
	}
	return nil, fmt.Errorf("unknown workload %q", w)
}

func (b *bench) small() *echopb.EchoRequest {
	return &echopb.EchoRequest{Payload: echo.Pattern(benchSmall)}
}

func (b *bench) unary(req *echopb.EchoRequest) error {
	resp, err := b.client.Unary(b.ctx, req)
	if err != nil {
		return err
	}
	if len(resp.GetPayload()) != len(req.GetPayload()) {
		return fmt.Errorf("unary: %d bytes back, sent %d", len(resp.GetPayload()), len(req.GetPayload()))
	}
	return nil
}

// percentile is the nearest-rank percentile of sorted values.
func percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(float64(len(sorted))*q + 0.999999999)
	return sorted[min(max(rank, 1), len(sorted))-1]
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

func latencies(lat []time.Duration) []Figure {
	slices.Sort(lat)
	return []Figure{
		{"p50_us", micros(percentile(lat, 0.50))},
		{"p90_us", micros(percentile(lat, 0.90))},
		{"p99_us", micros(percentile(lat, 0.99))},
		{"p999_us", micros(percentile(lat, 0.999))},
		{"max_us", micros(percentile(lat, 1.0))},
	}
}

func (b *bench) unarySeq() ([]Figure, error) {
	req := b.small()
	for range min(max(b.p.Calls/10, 100), 2000) {
		if err := b.unary(req); err != nil {
			return nil, err
		}
	}
	lat := make([]time.Duration, 0, b.p.Calls)
	start := time.Now()
	for range b.p.Calls {
		t := time.Now()
		if err := b.unary(req); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t))
	}
	total := time.Since(start)
	return append(latencies(lat), Figure{"calls_per_s", float64(b.p.Calls) / total.Seconds()}), nil
}

// unaryLoad runs Callers concurrent loops of unary calls: calls completed
// per second within the measured window, and their latencies.
func (b *bench) unaryLoad() (float64, []time.Duration, error) {
	start := time.Now().Add(5 * time.Millisecond)
	from := start.Add(b.p.Warmup)
	until := from.Add(b.p.Duration)
	var (
		mu    sync.Mutex
		all   []time.Duration
		first error
		wg    sync.WaitGroup
	)
	for range b.p.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req := b.small()
			var lat []time.Duration
			time.Sleep(time.Until(start))
			var err error
			for {
				t := time.Now()
				if !t.Before(until) {
					break
				}
				if err = b.unary(req); err != nil {
					break
				}
				done := time.Now()
				if !t.Before(from) && !done.After(until) {
					lat = append(lat, done.Sub(t))
				}
			}
			mu.Lock()
			defer mu.Unlock()
			all = append(all, lat...)
			if err != nil && first == nil {
				first = err
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return 0, nil, first
	}
	return float64(len(all)) / b.p.Duration.Seconds(), all, nil
}

// serverStream reads a server stream of size-byte messages for Warmup,
// then measures Duration of it, then cancels it.
func (b *bench) serverStream(size uint32) ([]Figure, error) {
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	s, err := b.client.ServerStream(ctx, &echopb.EchoRequest{ResponseSize: size, Repeat: ^uint32(0)})
	if err != nil {
		return nil, err
	}
	warmUntil := time.Now().Add(b.p.Warmup)
	var from, last time.Time
	var bytes, msgs uint64
	for {
		m, err := s.Recv()
		if err != nil {
			return nil, fmt.Errorf("server_stream: %w", err)
		}
		last = time.Now()
		switch {
		case from.IsZero() && !last.Before(warmUntil):
			from = last
		case from.IsZero():
		default:
			bytes += uint64(len(m.GetPayload()))
			msgs++
			if last.Sub(from) >= b.p.Duration {
				secs := last.Sub(from).Seconds()
				return []Figure{{"mb_per_s", float64(bytes) / secs / 1e6}, {"msgs_per_s", float64(msgs) / secs}}, nil
			}
		}
	}
}

// oneClientStream sends 64 KiB messages for d; returns the bytes the
// server counted and the time to its response.
func (b *bench) oneClientStream(d time.Duration) (uint64, time.Duration, error) {
	req := &echopb.EchoRequest{Payload: echo.Pattern(benchClientMessage)}
	start := time.Now()
	end := start.Add(d)
	s, err := b.client.ClientStream(b.ctx)
	if err != nil {
		return 0, 0, err
	}
	for time.Now().Before(end) {
		if err := s.Send(req); err != nil {
			break // the status comes with CloseAndRecv
		}
	}
	resp, err := s.CloseAndRecv()
	if err != nil {
		return 0, 0, err
	}
	return resp.GetTotalBytes(), time.Since(start), nil
}

func (b *bench) clientStream() ([]Figure, error) {
	if b.p.Warmup > 0 {
		if _, _, err := b.oneClientStream(b.p.Warmup); err != nil {
			return nil, err
		}
	}
	bytes, took, err := b.oneClientStream(b.p.Duration)
	if err != nil {
		return nil, err
	}
	return []Figure{{"mb_per_s", float64(bytes) / took.Seconds() / 1e6}}, nil
}

func (b *bench) bidiPingpong() ([]Figure, error) {
	req := b.small()
	s, err := b.client.Bidi(b.ctx)
	if err != nil {
		return nil, err
	}
	ping := func() error {
		if err := s.Send(req); err != nil {
			return err
		}
		_, err := s.Recv()
		return err
	}
	if err := ping(); err != nil {
		return nil, err
	}
	from := time.Now().Add(b.p.Warmup)
	until := from.Add(b.p.Duration)
	var lat []time.Duration
	for {
		t := time.Now()
		if !t.Before(until) {
			break
		}
		if err := ping(); err != nil {
			return nil, err
		}
		if !t.Before(from) {
			lat = append(lat, time.Since(t))
		}
	}
	if err := s.CloseSend(); err != nil {
		return nil, err
	}
	for {
		if _, err := s.Recv(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, err
		}
	}
	return append([]Figure{{"round_trips_per_s", float64(len(lat)) / b.p.Duration.Seconds()}}, latencies(lat)...), nil
}

// manyStreams opens Streams bidi streams with one round trip on each, at
// most OpenWindow between opening and their response (and later between
// CloseSend and the end), holds them all open (idle) while the orchestrator samples memory,
// then half-closes them all and waits for their ends.
func (b *bench) manyStreams() ([]Figure, error) {
	if err := b.out.Sync("READY many_streams"); err != nil {
		return nil, err
	}
	n := b.p.Streams
	release := make(chan struct{})
	pinged := make(chan error, n)
	done := make(chan error, n)
	window := b.p.OpenWindow
	if window <= 0 {
		window = n
	}
	slots := make(chan struct{}, window)
	start := time.Now()
	for range n {
		go func() {
			slots <- struct{}{}
			s, err := b.client.Bidi(b.ctx)
			if err == nil {
				err = s.Send(b.small())
			}
			if err == nil {
				_, err = s.Recv()
			}
			<-slots
			pinged <- err
			if err != nil {
				done <- err
				return
			}
			<-release
			slots <- struct{}{}
			defer func() { <-slots }()
			if err := s.CloseSend(); err != nil {
				done <- err
				return
			}
			for {
				if _, err := s.Recv(); errors.Is(err, io.EOF) {
					done <- nil
					return
				} else if err != nil {
					done <- err
					return
				}
			}
		}()
	}
	for range n {
		if err := <-pinged; err != nil {
			close(release)
			return nil, fmt.Errorf("open/ping: %w", err)
		}
	}
	openPing := time.Since(start)
	if err := b.out.Sync("HOLD many_streams"); err != nil {
		close(release)
		return nil, err
	}
	closing := time.Now()
	close(release)
	for range n {
		if err := <-done; err != nil {
			return nil, fmt.Errorf("close: %w", err)
		}
	}
	closeTime := time.Since(closing)
	return []Figure{
		{"streams", float64(n)},
		{"open_ping_ms", openPing.Seconds() * 1e3},
		{"close_ms", closeTime.Seconds() * 1e3},
	}, nil
}

// mixed is unary_conc while one server stream pushes 1 MiB messages as
// fast as they are read.
func (b *bench) mixed() ([]Figure, error) {
	ctx, cancel := context.WithCancel(b.ctx)
	defer cancel()
	s, err := b.client.ServerStream(ctx, &echopb.EchoRequest{ResponseSize: benchPushMessage, Repeat: ^uint32(0)})
	if err != nil {
		return nil, err
	}
	if _, err := s.Recv(); err != nil {
		return nil, fmt.Errorf("push: %w", err)
	}
	type pushed struct {
		bytes uint64
		took  time.Duration
		err   error
	}
	result := make(chan pushed, 1)
	go func() {
		var p pushed
		start := time.Now()
		for {
			m, err := s.Recv()
			if err != nil {
				if ctx.Err() == nil {
					p.err = fmt.Errorf("push: %w", err)
				}
				result <- p
				return
			}
			p.bytes += uint64(len(m.GetPayload()))
			p.took = time.Since(start)
		}
	}()
	rate, lat, loadErr := b.unaryLoad()
	cancel()
	p := <-result
	if loadErr != nil {
		return nil, loadErr
	}
	if p.err != nil {
		return nil, p.err
	}
	figures := append([]Figure{{"calls_per_s", rate}}, latencies(lat)...)
	return append(figures, Figure{"push_mb_per_s", float64(p.bytes) / max(p.took.Seconds(), 1e-9) / 1e6}), nil
}
