package echo

import (
	"context"
	"time"

	spb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"grpctunnel-interop/echopb"
)

// metaSink is where a handler sends response headers and sets trailers:
// a server stream, or unaryMeta for unary handlers.
type metaSink interface {
	SendHeader(metadata.MD) error
	SetTrailer(metadata.MD)
}

// unaryMeta sends headers and trailers of a unary call through its context.
type unaryMeta struct{ ctx context.Context }

func (u unaryMeta) SendHeader(md metadata.MD) error { return grpc.SendHeader(u.ctx, md) }
func (u unaryMeta) SetTrailer(md metadata.MD)       { _ = grpc.SetTrailer(u.ctx, md) }

// applyMetadata sends the response headers asked for by the first request
// of a call, and sets its trailers (which then go out on success and on
// error alike).
func applyMetadata(sink metaSink, first *echopb.EchoRequest) error {
	if hs := first.GetResponseHeaders(); len(hs) > 0 {
		if err := sink.SendHeader(FromEntries(hs)); err != nil {
			return err
		}
	}
	if ts := first.GetResponseTrailers(); len(ts) > 0 {
		sink.SetTrailer(FromEntries(ts))
	}
	return nil
}

// sleep waits ms milliseconds, ending early with the status of ctx's error
// when the call's context ends first.
func sleep(ctx context.Context, ms uint32) error {
	if ms == 0 {
		return nil
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

// requestedError is the status the request asks the handler to fail with,
// or nil (no error spec, or code 0).
func requestedError(req *echopb.EchoRequest) error {
	spec := req.GetError()
	if spec == nil || spec.GetCode() == 0 {
		return nil
	}
	return status.ErrorProto(&spb.Status{
		Code:    spec.GetCode(),
		Message: spec.GetMessage(),
		Details: spec.GetDetails(),
	})
}

// response builds the answer to req (its payload, or its response_size
// pattern) with the given sequence number and totals, and the request
// metadata when echoMetadata is set.
func response(ctx context.Context, req *echopb.EchoRequest, echoMetadata bool, seq uint64, count uint32, total uint64) *echopb.EchoResponse {
	resp := &echopb.EchoResponse{
		Payload:    responsePayload(req),
		Seq:        seq,
		Count:      count,
		TotalBytes: total,
	}
	if echoMetadata {
		resp.Metadata = incomingEntries(ctx)
	}
	return resp
}

// MaxResponseSize bounds response_size (the gRPC message limit of the peer).
const MaxResponseSize = 16 << 20

// validate rejects a response_size larger than MaxResponseSize.
func validate(req *echopb.EchoRequest) error {
	if n := req.GetResponseSize(); n > MaxResponseSize {
		return status.Errorf(codes.InvalidArgument, "response_size %d is larger than %d", n, MaxResponseSize)
	}
	return nil
}

// contextError is the status of ctx's error, or nil while ctx is live.
// Handlers check it before each send: on a revision-zero stream the Go
// reference's send does not fail after a cancel, so a streaming handler
// would otherwise never notice that its call was cancelled.
func contextError(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return status.FromContextError(err).Err()
	}
	return nil
}
