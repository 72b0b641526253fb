package roles

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/jhump/grpctunnel"
	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
	"grpctunnel-interop/nonegotiate"
	"grpctunnel-interop/wiretap"
)

// AgentKeyHeader is the request header carrying a reverse client's key.
const AgentKeyHeader = "x-agent-key"

// ReverseClient is the reverse-client role: it opens one reverse tunnel and
// serves the Go echo service (and the TunnelService, for nested tunnels)
// over it.
type ReverseClient struct {
	Tap   *wiretap.Tap
	Echo  *echo.Service
	ready *readiness
	rs    *grpctunnel.ReverseTunnelServer
	cc    *grpc.ClientConn
	done  chan struct{}
	// set before done is closed
	started bool
	err     error
	// set by Stop before it stops the server
	stopping atomic.Bool
}

// StartReverseClient dials addr and serves a reverse tunnel, opened with
// "x-agent-key: key", in the background until ctx ends or Stop.
func StartReverseClient(ctx context.Context, addr, key string, opts Options) (*ReverseClient, error) {
	c := &ReverseClient{Tap: wiretap.New(), Echo: echo.New(), ready: newReadiness(), done: make(chan struct{})}
	cc, err := opts.dial(addr, c.Tap, c.ready.interceptor())
	if err != nil {
		return nil, err
	}
	c.cc = cc
	c.rs = grpctunnel.NewReverseTunnelServer(tunnelpb.NewTunnelServiceClient(cc), opts.tunnelOptions()...)
	echopb.RegisterEchoServiceServer(c.rs, c.Echo)
	nested := grpctunnel.NewTunnelServiceHandler(opts.handlerOptions())
	echopb.RegisterEchoServiceServer(nested, c.Echo)
	tunnelpb.RegisterTunnelServiceServer(c.rs, nested.Service())

	ctx = metadata.AppendToOutgoingContext(ctx, AgentKeyHeader, key)
	go func() {
		defer close(c.done)
		c.started, c.err = c.rs.Serve(ctx)
	}()
	return c, nil
}

// Ready is closed once the tunnel is established: response headers
// received and, when revision one was negotiated, Settings sent.
func (c *ReverseClient) Ready() <-chan struct{} { return c.ready.ch }

// Done is closed when the tunnel has ended.
func (c *ReverseClient) Done() <-chan struct{} { return c.done }

// Result reports, once Done is closed, whether the tunnel was opened and
// why serving ended (nil: the network server closed it, or Stop).
//
// The reference's Serve registers the tunnel only after the response
// headers, which is when Ready closes. A Stop that lands in between makes
// Serve return (false, UNAVAILABLE "server is shutting down"); the tunnel
// was up and this side stopped it, so that counts as opened and stopped.
func (c *ReverseClient) Result() (started bool, err error) {
	<-c.done
	if c.stopping.Load() && !c.started && status.Code(c.err) == codes.Unavailable && c.isReady() {
		return true, nil
	}
	return c.started, c.err
}

func (c *ReverseClient) isReady() bool {
	select {
	case <-c.ready.ch:
		return true
	default:
		return false
	}
}

// Stop ends serving at once (the opening RPC is half-closed) and waits.
func (c *ReverseClient) Stop() {
	c.stopping.Store(true)
	c.rs.Stop()
	<-c.done
	_ = c.cc.Close()
}

// readiness detects that a reverse tunnel is established.
type readiness struct {
	once sync.Once
	ch   chan struct{}
}

func newReadiness() *readiness { return &readiness{ch: make(chan struct{})} }

func (r *readiness) mark() { r.once.Do(func() { close(r.ch) }) }

// interceptor wraps OpenReverseTunnel streams; it must be the outermost
// client interceptor, so that it sees the headers grpctunnel sees.
func (r *readiness) interceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || method != tunnelpb.TunnelService_OpenReverseTunnel_FullMethodName {
			return cs, err
		}
		return &readyStream{ClientStream: cs, r: r}, nil
	}
}

type readyStream struct {
	grpc.ClientStream
	r *readiness
}

// Header marks readiness when the server did not advertise revision one:
// then no Settings will be sent and the tunnel is up.
func (s *readyStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	if err == nil {
		if vals := md.Get(nonegotiate.Key); len(vals) == 0 || vals[0] != "on" {
			s.r.mark()
		}
	}
	return md, err
}

// SendMsg marks readiness once Settings has been sent.
func (s *readyStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if f, ok := m.(*tunnelpb.ServerToClient); ok && err == nil && f.GetSettings() != nil {
		s.r.mark()
	}
	return err
}
