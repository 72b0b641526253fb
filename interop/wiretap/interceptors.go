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

func (s *clientStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err == nil {
		s.tap.observe(m)
	}
	return err
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

func (s *serverStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.tap.observe(m)
	}
	return err
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
