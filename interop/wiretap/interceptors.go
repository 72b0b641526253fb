package wiretap

import (
	"context"

	"google.golang.org/grpc"

	"grpctunnel-interop/nonegotiate"
)

// StreamClientInterceptor observes the frames a network client sends and
// receives on tunnel-opening RPCs.
func (t *Tap) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
		streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil || !nonegotiate.IsTunnelMethod(method) {
			return cs, err
		}
		return &clientStream{ClientStream: cs, tap: t}, nil
	}
}

type clientStream struct {
	grpc.ClientStream
	tap *Tap
}

// SendMsg records the frame before sending it, so that a frame sent (such
// as a cancel) is recorded before any frame received because of it.
func (s *clientStream) SendMsg(m any) error {
	s.tap.observe(m)
	return s.ClientStream.SendMsg(m)
}

func (s *clientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		s.tap.observe(m)
	} else {
		s.tap.end()
	}
	return err
}

// StreamServerInterceptor observes the frames a network server sends and
// receives on tunnel-opening RPCs.
func (t *Tap) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if !nonegotiate.IsTunnelMethod(info.FullMethod) {
			return handler(srv, ss)
		}
		return handler(srv, &serverStream{ServerStream: ss, tap: t})
	}
}

type serverStream struct {
	grpc.ServerStream
	tap *Tap
}

// SendMsg records the frame before sending it, so that a frame sent (such
// as a cancel) is recorded before any frame received because of it.
func (s *serverStream) SendMsg(m any) error {
	s.tap.observe(m)
	return s.ServerStream.SendMsg(m)
}

func (s *serverStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.tap.observe(m)
	} else {
		s.tap.end()
	}
	return err
}
