package cases

import (
	"context"
	"fmt"

	"google.golang.org/grpc/metadata"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// requestMetadata is what metadata_echo sends: a plain key, a key with two
// values and a "-bin" key.
func requestMetadata() metadata.MD {
	md := metadata.MD{}
	md.Append("x-interop-one", "1")
	md.Append("x-interop-multi", "first", "second")
	md.Append("x-interop-data-bin", binValue)
	return md
}

// caseMetadataEcho: the request metadata comes back exactly, on a unary
// call and on a bidi stream.
func caseMetadataEcho(ctx context.Context, env *Env) error {
	md := requestMetadata()
	ctx = metadata.NewOutgoingContext(ctx, md)
	resp, err := env.client().Unary(ctx, &echopb.EchoRequest{EchoMetadata: true, Seq: 1})
	if err != nil {
		return fmt.Errorf("unary: %w", err)
	}
	if err := sameMetadata("unary: echoed metadata", echo.FromEntries(resp.GetMetadata()), md); err != nil {
		return err
	}
	return bidiMetadataEcho(ctx, env, md)
}

func bidiMetadataEcho(ctx context.Context, env *Env, md metadata.MD) error {
	stream, err := env.client().Bidi(ctx)
	if err != nil {
		return fmt.Errorf("bidi: %w", err)
	}
	if err := stream.Send(&echopb.EchoRequest{EchoMetadata: true, Seq: 2}); err != nil {
		return fmt.Errorf("bidi: send: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return fmt.Errorf("bidi: %w", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		return fmt.Errorf("bidi: %w", err)
	}
	if err := sameMetadata("bidi: echoed metadata", echo.FromEntries(resp.GetMetadata()), md); err != nil {
		return err
	}
	_, err = stream.Recv()
	return expectEOF(err)
}

// caseHeadersAndTrailers: on a server-streaming call, the requested headers
// arrive through Header() and the requested trailers through Trailer(), each
// exactly (a "-bin" key and a key with two values in both), and neither
// leaks into the other.
func caseHeadersAndTrailers(ctx context.Context, env *Env) error {
	hdrs := entries("x-hdr", "h1", "x-hdr-multi", "a", "x-hdr-multi", "b", "x-hdr-bin", binValue)
	tlrs := entries("x-tlr", "t1", "x-tlr-multi", "c", "x-tlr-multi", "d", "x-tlr-bin", binValue2)
	req := &echopb.EchoRequest{Payload: []byte("p"), Repeat: 2, ResponseHeaders: hdrs, ResponseTrailers: tlrs}
	stream, err := env.client().ServerStream(ctx, req)
	if err != nil {
		return err
	}
	h, err := stream.Header()
	if err != nil {
		return fmt.Errorf("header: %w", err)
	}
	if err := sameMetadata("headers", withoutTransportKeys(h), echo.FromEntries(hdrs)); err != nil {
		return err
	}
	for i := range 2 {
		if _, err := stream.Recv(); err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
	}
	if err := expectEOF(recvErr(stream.Recv())); err != nil {
		return err
	}
	return sameMetadata("trailers", withoutTransportKeys(trailerOf(stream)), echo.FromEntries(tlrs))
}

// recvErr keeps the error of a Recv.
func recvErr(_ *echopb.EchoResponse, err error) error { return err }
