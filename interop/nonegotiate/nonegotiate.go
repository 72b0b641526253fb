// Package nonegotiate makes a grpctunnel v0.3.0 peer behave like a
// revision-zero (v0.2.0) one: gRPC interceptors remove the
// "grpctunnel-negotiate" key from the opening RPC of every tunnel, in both
// directions, so that neither side believes the other advertised revision
// one. No Settings frame is then sent and every stream uses revision zero.
//
// Client side (network client): the key is removed from the outgoing request
// metadata of the opening RPC and from the response headers the client sees.
//
// Server side (network server): the key is removed from the response
// headers the server sends (SetHeader/SendHeader) and, because a v0.2.0
// server does not understand the key either, from the incoming request
// metadata the tunnel handler reads. Removing it only from the headers sent
// would be a broken peer, not a v0.2.0 one: the v0.3.0 handler would still
// send Settings to a client that no longer expects it (forward), or wait for
// a Settings frame the client never sends (reverse).
//
// Nested tunnels (a tunnel opened through a tunnel) bypass gRPC interceptors
// and therefore still negotiate.
package nonegotiate

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
)

// Key is the negotiation metadata key of the grpctunnel protocol.
const Key = "grpctunnel-negotiate"

// tunnelServicePrefix prefixes both tunnel-opening methods.
const tunnelServicePrefix = "/grpctunnel.v1.TunnelService/"

// IsTunnelMethod reports whether method opens a tunnel.
func IsTunnelMethod(method string) bool {
	return strings.HasPrefix(method, tunnelServicePrefix)
}

// strip returns a copy of md without the negotiation key (nil stays nil).
func strip(md metadata.MD) metadata.MD {
	if md == nil {
		return nil
	}
	out := md.Copy()
	delete(out, Key)
	return out
}

// StreamClientInterceptor removes the key on a network client.
func StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		if !IsTunnelMethod(method) {
			return streamer(ctx, desc, cc, method, opts...)
		}
		if md, ok := metadata.FromOutgoingContext(ctx); ok {
			ctx = metadata.NewOutgoingContext(ctx, strip(md))
		}
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, err
		}
		return &clientStream{ClientStream: cs}, nil
	}
}

// clientStream hides the key in the response headers.
type clientStream struct {
	grpc.ClientStream
}

func (s *clientStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	return strip(md), err
}

// StreamServerInterceptor removes the key on a network server.
func StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !IsTunnelMethod(info.FullMethod) {
			return handler(srv, ss)
		}
		ctx := ss.Context()
		if md, ok := metadata.FromIncomingContext(ctx); ok {
			ctx = metadata.NewIncomingContext(ctx, strip(md))
		}
		return handler(srv, &serverStream{ServerStream: ss, ctx: ctx})
	}
}

// serverStream hides the key in the request metadata and the headers sent.
type serverStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *serverStream) Context() context.Context        { return s.ctx }
func (s *serverStream) SetHeader(md metadata.MD) error  { return s.ServerStream.SetHeader(strip(md)) }
func (s *serverStream) SendHeader(md metadata.MD) error { return s.ServerStream.SendHeader(strip(md)) }
