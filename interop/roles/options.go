// Package roles implements the four interop peer roles on top of the Go
// reference implementation (github.com/jhump/grpctunnel v0.3.0): a forward
// tunnel server, a forward tunnel client, a reverse-tunnel network server
// and a reverse-tunnel network client.
package roles

import (
	"net"

	"github.com/jhump/grpctunnel"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"grpctunnel-interop/nonegotiate"
	"grpctunnel-interop/wiretap"
)

// MaxMessageSize is the gRPC send/receive limit on every client and server
// (the sizes case sends a bit over 2 MiB; tunnel frames stay small).
const MaxMessageSize = 16 << 20

// Options are the peer's protocol switches.
type Options struct {
	// NoFlowControl applies the Go reference's own option that disables flow
	// control: grpctunnel.WithDisableFlowControl() for tunnel clients and
	// reverse tunnel servers, TunnelServiceHandlerOptions.DisableFlowControl
	// for the tunnel service handler. Settings then lists only REVISION_ZERO.
	NoFlowControl bool
	// NoNegotiate emulates a revision-zero (v0.2.0) peer: see package
	// nonegotiate.
	NoNegotiate bool
}

// tunnelOptions are the options for grpctunnel.NewChannel and
// grpctunnel.NewReverseTunnelServer.
func (o Options) tunnelOptions() []grpctunnel.TunnelOption {
	if o.NoFlowControl {
		return []grpctunnel.TunnelOption{grpctunnel.WithDisableFlowControl()}
	}
	return nil
}

// handlerOptions are the options of a TunnelServiceHandler.
func (o Options) handlerOptions() grpctunnel.TunnelServiceHandlerOptions {
	return grpctunnel.TunnelServiceHandlerOptions{DisableFlowControl: o.NoFlowControl}
}

// clientInterceptors returns the stream interceptors of a network client:
// extra ones first (outermost), then the tap, then (innermost, next to the
// wire) the no-negotiate filter.
func (o Options) clientInterceptors(tap *wiretap.Tap, extra ...grpc.StreamClientInterceptor) []grpc.StreamClientInterceptor {
	out := append(extra, tap.StreamClientInterceptor())
	if o.NoNegotiate {
		out = append(out, nonegotiate.StreamClientInterceptor())
	}
	return out
}

// dial creates an insecure, lazily connecting client for addr.
func (o Options) dial(addr string, tap *wiretap.Tap, extra ...grpc.StreamClientInterceptor) (*grpc.ClientConn, error) {
	return grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithChainStreamInterceptor(o.clientInterceptors(tap, extra...)...),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(MaxMessageSize),
			grpc.MaxCallSendMsgSize(MaxMessageSize),
		),
	)
}

// newServer creates a gRPC server with the tap and, if asked, the
// no-negotiate filter on its stream methods.
func (o Options) newServer(tap *wiretap.Tap) *grpc.Server {
	interceptors := []grpc.StreamServerInterceptor{tap.StreamServerInterceptor()}
	if o.NoNegotiate {
		interceptors = append(interceptors, nonegotiate.StreamServerInterceptor())
	}
	return grpc.NewServer(
		grpc.ChainStreamInterceptor(interceptors...),
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
	)
}

// listen opens a loopback listener on a free port.
func listen() (net.Listener, error) {
	return net.Listen("tcp", "127.0.0.1:0")
}
