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
// order. count and total_bytes are the number and payload size of the
// requests received when a response is sent: running totals in full duplex,
// the totals of the whole input in half duplex (which proves that all input
// was read first). Headers, trailers, echo_metadata, the error (after the
// last answer) and the tag come from the first request; sleep_ms of the
// first request delays the first answer, that of each later request delays
// its own answer.
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
	if err := validate(first); err != nil {
		return err
	}
	if err := applyMetadata(stream, first); err != nil {
		return err
	}
	if err := sleep(ctx, first.GetSleepMs()); err != nil {
		return err
	}
	b := &bidi{ctx: ctx, stream: stream, echoMetadata: first.GetEchoMetadata()}
	if first.GetHalfDuplex() {
		err = b.halfDuplex(first)
	} else {
		err = b.fullDuplex(first)
	}
	if err != nil {
		return err
	}
	return requestedError(first)
}

// bidi is one Bidi call being answered.
type bidi struct {
	ctx          context.Context
	stream       bidiStream
	echoMetadata bool
	count        uint32
	bytes        uint64
}

// add counts one received request.
func (b *bidi) add(req *echopb.EchoRequest) {
	b.count++
	b.bytes += uint64(len(req.GetPayload()))
}

// answer sends the response to req with the current totals.
func (b *bidi) answer(req *echopb.EchoRequest) error {
	if err := contextError(b.ctx); err != nil {
		return err
	}
	return b.stream.Send(response(b.ctx, req, b.echoMetadata, req.GetSeq(), b.count, b.bytes))
}

// next reads the next request; nil at the end of input.
func (b *bidi) next() (*echopb.EchoRequest, error) {
	req, err := b.stream.Recv()
	if errors.Is(err, io.EOF) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return req, validate(req)
}

func (b *bidi) fullDuplex(first *echopb.EchoRequest) error {
	b.add(first)
	if err := b.answer(first); err != nil {
		return err
	}
	for {
		req, err := b.next()
		if err != nil || req == nil {
			return err
		}
		b.add(req)
		if err := sleep(b.ctx, req.GetSleepMs()); err != nil {
			return err
		}
		if err := b.answer(req); err != nil {
			return err
		}
	}
}

func (b *bidi) halfDuplex(first *echopb.EchoRequest) error {
	reqs := []*echopb.EchoRequest{first}
	b.add(first)
	for {
		req, err := b.next()
		if err != nil {
			return err
		}
		if req == nil {
			break
		}
		reqs = append(reqs, req)
		b.add(req)
	}
	for i, req := range reqs {
		if i > 0 {
			if err := sleep(b.ctx, req.GetSleepMs()); err != nil {
				return err
			}
		}
		if err := b.answer(req); err != nil {
			return err
		}
	}
	return nil
}
