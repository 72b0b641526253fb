// Package echo implements grpctunnel.testing.v1.EchoService as its proto
// comments describe; it is the Go side of the interop test service.
package echo

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc"

	"grpctunnel-interop/echopb"
)

// Service implements echopb.EchoServiceServer.
type Service struct {
	echopb.UnimplementedEchoServiceServer
	tags *Tags
}

// New returns a service with an empty tag registry.
func New() *Service {
	return &Service{tags: NewTags()}
}

// Tags exposes the registry CheckHandler reads.
func (s *Service) Tags() *Tags { return s.tags }

// Unary answers one request with one response.
func (s *Service) Unary(ctx context.Context, req *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	defer s.tags.Start(ctx, req.GetTag())()
	if err := validate(req); err != nil {
		return nil, err
	}
	if err := applyMetadata(unaryMeta{ctx}, req); err != nil {
		return nil, err
	}
	if err := sleep(ctx, req.GetSleepMs()); err != nil {
		return nil, err
	}
	if err := requestedError(req); err != nil {
		return nil, err
	}
	return response(ctx, req, req.GetEchoMetadata(), req.GetSeq(), 1, uint64(len(req.GetPayload()))), nil
}

// ClientStream reads every request and answers once: count and total size
// of what arrived, seq and payload of the last request. Every control field
// (response_size, echo_metadata, sleep_ms, headers, trailers, error, tag)
// comes from the first request.
func (s *Service) ClientStream(stream grpc.ClientStreamingServer[echopb.EchoRequest, echopb.EchoResponse]) error {
	ctx := stream.Context()
	var first, last *echopb.EchoRequest
	var count uint32
	var total uint64
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if first == nil {
			first = req
			defer s.tags.Start(ctx, req.GetTag())()
			if err := validate(req); err != nil {
				return err
			}
			if err := applyMetadata(stream, req); err != nil {
				return err
			}
		}
		last = req
		count++
		total += uint64(len(req.GetPayload()))
	}
	if first == nil {
		return stream.SendAndClose(&echopb.EchoResponse{})
	}
	if err := sleep(ctx, first.GetSleepMs()); err != nil {
		return err
	}
	if err := requestedError(first); err != nil {
		return err
	}
	answer := &echopb.EchoRequest{Payload: last.GetPayload(), ResponseSize: first.GetResponseSize()}
	return stream.SendAndClose(response(ctx, answer, first.GetEchoMetadata(), last.GetSeq(), count, total))
}

// ServerStream answers one request with `repeat` responses (0 means 1),
// seq = request seq + index, then fails if the request asks for it.
func (s *Service) ServerStream(req *echopb.EchoRequest, stream grpc.ServerStreamingServer[echopb.EchoResponse]) error {
	ctx := stream.Context()
	defer s.tags.Start(ctx, req.GetTag())()
	if err := validate(req); err != nil {
		return err
	}
	if err := applyMetadata(stream, req); err != nil {
		return err
	}
	if err := sleep(ctx, req.GetSleepMs()); err != nil {
		return err
	}
	n := max(req.GetRepeat(), 1)
	size := uint64(len(req.GetPayload()))
	for i := range n {
		if err := contextError(ctx); err != nil {
			return err
		}
		if err := stream.Send(response(ctx, req, req.GetEchoMetadata(), req.GetSeq()+uint64(i), 1, size)); err != nil {
			return err
		}
	}
	return requestedError(req)
}

// CheckHandler reports what happened to the handler of a tagged call,
// waiting up to wait_ms for it to have ended.
func (s *Service) CheckHandler(ctx context.Context, req *echopb.CheckRequest) (*echopb.CheckResponse, error) {
	wait := time.Duration(req.GetWaitMs()) * time.Millisecond
	out := s.tags.Wait(ctx, req.GetTag(), wait)
	return &echopb.CheckResponse{Started: out.Started, Cancelled: out.Cancelled, Finished: out.Finished}, nil
}
