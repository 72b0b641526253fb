package roles

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jhump/grpctunnel"
	"github.com/jhump/grpctunnel/tunnelpb"

	"grpctunnel-interop/cases"
	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
	"grpctunnel-interop/wiretap"
)

// TunnelSetupTimeout bounds opening a tunnel (response headers and, when
// negotiated, Settings).
const TunnelSetupTimeout = 10 * time.Second

// ForwardServer is the serve-forward role: a gRPC server whose
// TunnelService accepts forward tunnels carrying the Go echo service (and
// the TunnelService itself, for nested tunnels). The echo service is also
// registered directly on the server.
type ForwardServer struct {
	Tap  *wiretap.Tap
	Echo *echo.Service
	srv  *serving
}

// StartForwardServer listens on 127.0.0.1:0 and serves in the background.
func StartForwardServer(opts Options) (*ForwardServer, error) {
	lis, err := listen()
	if err != nil {
		return nil, err
	}
	tap := wiretap.New()
	svc := echo.New()
	handler := grpctunnel.NewTunnelServiceHandler(opts.handlerOptions())
	echopb.RegisterEchoServiceServer(handler, svc)
	tunnelpb.RegisterTunnelServiceServer(handler, handler.Service())

	gs := opts.newServer(tap)
	tunnelpb.RegisterTunnelServiceServer(gs, handler.Service())
	echopb.RegisterEchoServiceServer(gs, svc)
	return &ForwardServer{Tap: tap, Echo: svc, srv: serve(gs, lis)}, nil
}

// Addr is the listening address, HOST:PORT.
func (s *ForwardServer) Addr() string { return s.srv.addr() }

// Stop stops the server (gracefully for at most a short while).
func (s *ForwardServer) Stop() { s.srv.stop() }

// RunForwardClient is the forward-client role: it dials addr, opens one
// forward tunnel and runs the case matrix through it, reporting to rep.
// Setup failures are reported as the pseudo-case "tunnel".
func RunForwardClient(ctx context.Context, addr string, opts Options, rep *cases.Reporter) wiretap.Stats {
	tap := wiretap.New()
	cc, err := opts.dial(addr, tap)
	if err != nil {
		rep.Fail("tunnel", err)
		return tap.Snapshot()
	}
	defer cc.Close()

	ch, cancel, err := openForward(ctx, tunnelpb.NewTunnelServiceClient(cc), opts)
	if err != nil {
		rep.Fail("tunnel", err)
		return tap.Snapshot()
	}
	defer closeForward(ch, cancel, tap)

	env := &cases.Env{Conn: ch, FlowControl: func() bool { return tap.Snapshot().FlowControlled() }}
	cases.Run(ctx, env, "", rep)
	return tap.Snapshot()
}

// openForward opens a forward tunnel whose lifetime is ctx, giving up after
// TunnelSetupTimeout. grpctunnel reports setup failures only as the
// channel's terminal error (PROTOCOL.md P-13), so that is checked too. The
// returned cancel ends the channel's context; call it after closing.
func openForward(ctx context.Context, stub tunnelpb.TunnelServiceClient, opts Options) (grpctunnel.TunnelChannel, context.CancelFunc, error) {
	chCtx, cancel := context.WithCancel(ctx)
	timer := time.AfterFunc(TunnelSetupTimeout, cancel)
	ch, err := grpctunnel.NewChannel(stub, opts.tunnelOptions()...).Start(chCtx)
	timedOut := !timer.Stop()
	if err != nil {
		cancel()
		return nil, nil, fmt.Errorf("opening tunnel: %w", err)
	}
	select {
	case <-ch.Done():
		cancel()
		cause := ch.Err()
		if timedOut {
			cause = errors.Join(cause, fmt.Errorf("no headers/Settings within %v", TunnelSetupTimeout))
		}
		return nil, nil, fmt.Errorf("tunnel closed during setup: %v", cause)
	default:
	}
	return ch, cancel, nil
}

// closeForward closes the tunnel the way the Go reference does (half-close
// of the opening RPC), waits briefly for the server to end the RPC, then
// releases the channel's context.
func closeForward(ch grpctunnel.TunnelChannel, cancel context.CancelFunc, tap *wiretap.Tap) {
	ch.Close()
	deadline := time.Now().Add(stopGrace)
	for tap.Ended() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
}
