package cases

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/proto"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// Sizes are the payload sizes of the sizes case: around the 16 KiB chunk
// size, around the 64 KiB window, 1 MiB and a bit over 2 MiB.
var Sizes = []int{0, 1, 16383, 16384, 16385, 65535, 65536, 65537, 1048576, 2*1048576 + 3}

// caseSizes: for each size, a unary echo of a payload of that size, a unary
// call whose request and response messages are exactly that size on the
// wire (where protobuf allows it), and a bidi stream echoing three
// messages of that size.
func caseSizes(ctx context.Context, env *Env) error {
	for _, n := range Sizes {
		if err := unaryOfSize(ctx, env, n); err != nil {
			return fmt.Errorf("size %d: unary: %w", n, err)
		}
		if err := unaryOfWireSize(ctx, env, n); err != nil {
			return fmt.Errorf("size %d: unary (exact message size): %w", n, err)
		}
		if err := bidiOfSize(ctx, env, n); err != nil {
			return fmt.Errorf("size %d: bidi: %w", n, err)
		}
	}
	return nil
}

func unaryOfSize(ctx context.Context, env *Env, n int) error {
	payload := data(n, n)
	resp, err := env.client().Unary(ctx, &echopb.EchoRequest{Payload: payload, Seq: uint64(n)})
	if err != nil {
		return err
	}
	return expect(resp, want{payload, uint64(n), 1, uint64(n)})
}

// unaryOfWireSize sends a request of exactly n bytes and asks, through
// response_size, for a response of exactly n bytes, so that the tunnel's
// chunking sees the exact boundary sizes.
func unaryOfWireSize(ctx context.Context, env *Env, n int) error {
	req, respSize, ok := exactSizeRequest(n)
	if !ok {
		return nil // too small for a request and a response of n bytes
	}
	resp, err := env.client().Unary(ctx, req)
	if err != nil {
		return err
	}
	if got := proto.Size(resp); got != n {
		return fmt.Errorf("response is %d bytes on the wire, want %d", got, n)
	}
	return expect(resp, want{echo.Pattern(respSize), 1, 1, uint64(len(req.Payload))})
}

// exactSizeRequest finds a request of exactly n serialized bytes whose
// response (response_size bytes of pattern, seq 1, count 1, total_bytes =
// request payload length) is also exactly n bytes.
func exactSizeRequest(n int) (*echopb.EchoRequest, int, bool) {
	buf := data(n, 3)
	for p := n; p >= 0 && p >= n-16; p-- {
		for r := n; r > 0 && r >= n-16; r-- {
			req := &echopb.EchoRequest{Payload: buf[:p], ResponseSize: uint32(r), Seq: 1}
			if proto.Size(req) != n {
				continue
			}
			resp := &echopb.EchoResponse{Payload: buf[:r], Seq: 1, Count: 1, TotalBytes: uint64(p)}
			if proto.Size(resp) == n {
				return req, r, true
			}
		}
	}
	return nil, 0, false
}

// bidiOfSize sends three messages of n bytes while reading the three echoes
// concurrently (a lockstep-free pattern that cannot deadlock on windows).
func bidiOfSize(ctx context.Context, env *Env, n int) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := env.client().Bidi(ctx)
	if err != nil {
		return err
	}
	payloads := [][]byte{data(n, 1), data(n, 2), data(n, 3)}
	sent := make(chan error, 1)
	go func() {
		for i, p := range payloads {
			if err := stream.Send(&echopb.EchoRequest{Payload: p, Seq: uint64(i + 1)}); err != nil {
				sent <- fmt.Errorf("send %d: %w", i+1, err)
				return
			}
		}
		sent <- stream.CloseSend()
	}()
	for i, p := range payloads {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
		if err := expect(resp, want{p, uint64(i + 1), uint32(i + 1), uint64((i + 1) * n)}); err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
	}
	if err := expectEOF(recvErr(stream.Recv())); err != nil {
		return err
	}
	return <-sent
}
