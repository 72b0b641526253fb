// Package cases is the CASE MATRIX: client-side interop checks of
// EchoService that every client role (Go forward client, Go reverse-tunnel
// network server) runs through its channel. Case names are fixed; the Rust
// runner mirrors them.
package cases

import (
	"context"
	"errors"
	"time"

	"github.com/jhump/grpctunnel"
	"google.golang.org/grpc"

	"grpctunnel-interop/echopb"
)

// CaseTimeout bounds each case.
const CaseTimeout = 30 * time.Second

// Env is what a case runs against.
type Env struct {
	// Conn is the channel under test: a tunnel, a reverse-tunnel pool, or a
	// plain gRPC connection.
	Conn grpc.ClientConnInterface
	// FlowControl reports whether the tunnel uses revision one (per-stream
	// flow control). Nil means yes.
	FlowControl func() bool
}

func (e *Env) client() echopb.EchoServiceClient {
	return echopb.NewEchoServiceClient(e.Conn)
}

// pinned returns the tunnel a call reported through grpctunnel's
// WithTunnelChannel option, so that follow-up calls reach the same peer
// (in a reverse-tunnel pool each tunnel may be a different process), or
// Conn when the call did not go through a tunnel.
func (e *Env) pinned(tc grpctunnel.TunnelChannel) echopb.EchoServiceClient {
	if tc == nil {
		return e.client()
	}
	return echopb.NewEchoServiceClient(tc)
}

func (e *Env) flowControlled() bool {
	return e.FlowControl == nil || e.FlowControl()
}

// Case is one named check.
type Case struct {
	Name string
	Run  func(ctx context.Context, env *Env) error
}

// All is the case matrix, in the order it runs.
var All = []Case{
	{"unary", caseUnary},
	{"unary_empty", caseUnaryEmpty},
	{"client_stream", caseClientStream},
	{"server_stream", caseServerStream},
	{"bidi_full_duplex", caseBidiFullDuplex},
	{"bidi_half_duplex", caseBidiHalfDuplex},
	{"metadata_echo", caseMetadataEcho},
	{"headers_and_trailers", caseHeadersAndTrailers},
	{"error_with_details", caseErrorWithDetails},
	{"error_streaming", caseErrorStreaming},
	{"deadline", caseDeadline},
	{"cancel", caseCancel},
	{"sizes", caseSizes},
	{"concurrent_100", caseConcurrent100},
	{"slow_consumer", caseSlowConsumer},
	{"unimplemented", caseUnimplemented},
}

// Names lists the case names in order.
func Names() []string {
	names := make([]string, len(All))
	for i, c := range All {
		names[i] = c.Name
	}
	return names
}

// skipError marks a case that does not apply.
type skipError struct{ reason string }

func (s skipError) Error() string { return "skipped: " + s.reason }

func skip(reason string) error { return skipError{reason} }

// Run runs every case in order against env, reporting each to rep under
// scope (see Reporter). It returns when all cases ran or ctx ended (the
// remaining cases then fail with ctx's error).
func Run(ctx context.Context, env *Env, scope string, rep *Reporter) {
	for _, c := range All {
		runOne(ctx, env, scope, c, rep)
	}
}

// runOne runs one case under its own timeout.
func runOne(ctx context.Context, env *Env, scope string, c Case, rep *Reporter) {
	name := c.Name
	if scope != "" {
		name = scope + "/" + c.Name
	}
	cctx, cancel := context.WithTimeout(ctx, CaseTimeout)
	defer cancel()
	err := ctx.Err()
	if err == nil {
		err = c.Run(cctx, env)
	}
	var s skipError
	switch {
	case err == nil:
		rep.Pass(name)
	case errors.As(err, &s):
		rep.Skip(name, s.reason)
	default:
		rep.Fail(name, err)
	}
}
