package cases

import (
	"context"
	"fmt"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// caseUnary: an echoed payload, then a generated (response_size) one.
func caseUnary(ctx context.Context, env *Env) error {
	c := env.client()
	msg := []byte("hello, tunnel")
	resp, err := c.Unary(ctx, &echopb.EchoRequest{Payload: msg, Seq: 7})
	if err != nil {
		return fmt.Errorf("echo call: %w", err)
	}
	if err := expect(resp, want{msg, 7, 1, uint64(len(msg))}); err != nil {
		return fmt.Errorf("echo call: %w", err)
	}
	resp, err = c.Unary(ctx, &echopb.EchoRequest{Payload: []byte("abc"), ResponseSize: 1000, Seq: 8})
	if err != nil {
		return fmt.Errorf("response_size call: %w", err)
	}
	if err := expect(resp, want{echo.Pattern(1000), 8, 1, 3}); err != nil {
		return fmt.Errorf("response_size call: %w", err)
	}
	return nil
}

// caseUnaryEmpty: an empty request (a zero-length message on the wire).
func caseUnaryEmpty(ctx context.Context, env *Env) error {
	resp, err := env.client().Unary(ctx, &echopb.EchoRequest{})
	if err != nil {
		return err
	}
	return expect(resp, want{nil, 0, 1, 0})
}

// caseClientStream: five requests of assorted sizes, then a stream with
// no request at all.
func caseClientStream(ctx context.Context, env *Env) error {
	sizes := []int{0, 1, 100, 20000, 5}
	stream, err := env.client().ClientStream(ctx)
	if err != nil {
		return err
	}
	var total uint64
	var last []byte
	for i, n := range sizes {
		last = data(n, i)
		total += uint64(n)
		if err := stream.Send(&echopb.EchoRequest{Payload: last, Seq: uint64(i + 1)}); err != nil {
			return fmt.Errorf("send %d: %w", i+1, err)
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	if err := expect(resp, want{last, uint64(len(sizes)), uint32(len(sizes)), total}); err != nil {
		return err
	}
	return clientStreamWithoutRequests(ctx, env)
}

func clientStreamWithoutRequests(ctx context.Context, env *Env) error {
	stream, err := env.client().ClientStream(ctx)
	if err != nil {
		return err
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("stream without requests: %w", err)
	}
	if err := expect(resp, want{nil, 0, 0, 0}); err != nil {
		return fmt.Errorf("stream without requests: %w", err)
	}
	return nil
}

// caseServerStream: repeat=5 gives five responses with seq+index; repeat=0
// gives one.
func caseServerStream(ctx context.Context, env *Env) error {
	req := &echopb.EchoRequest{Payload: []byte("xyz"), ResponseSize: 100, Repeat: 5, Seq: 10}
	if err := serverStreamExpect(ctx, env, req, 5); err != nil {
		return fmt.Errorf("repeat=5: %w", err)
	}
	req = &echopb.EchoRequest{Payload: []byte("once"), Seq: 20}
	if err := serverStreamExpect(ctx, env, req, 1); err != nil {
		return fmt.Errorf("repeat=0: %w", err)
	}
	return nil
}

func serverStreamExpect(ctx context.Context, env *Env, req *echopb.EchoRequest, n int) error {
	stream, err := env.client().ServerStream(ctx, req)
	if err != nil {
		return err
	}
	payload := req.GetPayload()
	if req.GetResponseSize() != 0 {
		payload = echo.Pattern(int(req.GetResponseSize()))
	}
	for i := range n {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
		if err := expect(resp, want{payload, req.GetSeq() + uint64(i), 1, uint64(len(req.GetPayload()))}); err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
	}
	_, err = stream.Recv()
	return expectEOF(err)
}

// caseBidiFullDuplex: each request is answered before the next is sent
// (lockstep), which only a full-duplex handler can do.
func caseBidiFullDuplex(ctx context.Context, env *Env) error {
	stream, err := env.client().Bidi(ctx)
	if err != nil {
		return err
	}
	var total uint64
	for i := range 5 {
		payload := data(i*10, i)
		total += uint64(len(payload))
		if err := stream.Send(&echopb.EchoRequest{Payload: payload, Seq: uint64(100 + i)}); err != nil {
			return fmt.Errorf("send %d: %w", i+1, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
		if err := expect(resp, want{payload, uint64(100 + i), uint32(i + 1), total}); err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	_, err = stream.Recv()
	return expectEOF(err)
}

// caseBidiHalfDuplex: all requests are sent and half-closed before any
// response is read; responses come in request order, each carrying the
// totals of the whole input (count 5 and the sum of the sizes), which shows
// that the handler read all input before answering.
func caseBidiHalfDuplex(ctx context.Context, env *Env) error {
	stream, err := env.client().Bidi(ctx)
	if err != nil {
		return err
	}
	const n = 5
	var payloads [][]byte
	var sum uint64
	for i := range n {
		p := data(1000+i, i)
		payloads = append(payloads, p)
		sum += uint64(len(p))
		req := &echopb.EchoRequest{Payload: p, Seq: uint64(200 + i), HalfDuplex: i == 0}
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send %d: %w", i+1, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	for i := range n {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
		if err := expect(resp, want{payloads[i], uint64(200 + i), n, sum}); err != nil {
			return fmt.Errorf("response %d (half duplex answers with the totals of the whole input): %w", i+1, err)
		}
	}
	_, err = stream.Recv()
	return expectEOF(err)
}
