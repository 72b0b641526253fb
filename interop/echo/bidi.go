package echo

import (
	"context"
	"errors"
	"io"

	"google.golang.org/grpc"

	"grpctunnel-interop/echopb"
)

type bidiStream = grpc.BidiStreamingServer[echopb.EchoRequest, echopb.EchoResponse]

// Bidi answers each request as it arrives (full duplex), or, when the first
// request sets half_duplex, reads every request and then answers each in
// order. count and total_bytes are running totals: the answer to the i-th
// request carries i and the payload bytes of requests 1..i, in both modes.
// Headers, trailers, sleep (before the first answer) and error (after the
// last answer) come from the first request.
func (s *Service) Bidi(stream bidiStream) error {
	ctx := stream.Context()
	first, err := stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err != nil {
		return err
	}
	defer s.tags.Start(ctx, first.GetTag())()
	if err := applyMetadata(stream, first); err != nil {
		return err
	}
	if err := sleep(ctx, first.GetSleepMs()); err != nil {
		return err
	}
	if first.GetHalfDuplex() {
		err = bidiHalfDuplex(ctx, stream, first)
	} else {
		err = bidiFullDuplex(ctx, stream, first)
	}
	if err != nil {
		return err
	}
	return requestedError(first)
}

// totals tracks the running count and payload bytes of a call.
type totals struct {
	count uint32
	bytes uint64
}

func (t *totals) add(req *echopb.EchoRequest) {
	t.count++
	t.bytes += uint64(len(req.GetPayload()))
}

func bidiFullDuplex(ctx context.Context, stream bidiStream, first *echopb.EchoRequest) error {
	var t totals
	for req := first; ; {
		t.add(req)
		if err := stream.Send(response(ctx, req, req.GetSeq(), t.count, t.bytes)); err != nil {
			return err
		}
		var err error
		if req, err = stream.Recv(); errors.Is(err, io.EOF) {
			return nil
		} else if err != nil {
			return err
		}
	}
}

func bidiHalfDuplex(ctx context.Context, stream bidiStream, first *echopb.EchoRequest) error {
	reqs := []*echopb.EchoRequest{first}
	for {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		reqs = append(reqs, req)
	}
	var t totals
	for _, req := range reqs {
		t.add(req)
		if err := stream.Send(response(ctx, req, req.GetSeq(), t.count, t.bytes)); err != nil {
			return err
		}
	}
	return nil
}
