package cases

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jhump/grpctunnel"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// caseConcurrent100: 100 concurrent calls, a quarter of each shape.
func caseConcurrent100(ctx context.Context, env *Env) error {
	const n = 100
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { errs[i] = mixedCall(ctx, env.client(), i) })
	}
	wg.Wait()
	var failed []error
	for i, err := range errs {
		if err != nil {
			failed = append(failed, fmt.Errorf("call %d: %w", i, err))
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("%d of %d calls failed, first: %w", len(failed), n, failed[0])
	}
	return nil
}

// mixedCall runs call i: unary, client stream, server stream or bidi by
// i % 4, with content derived from i.
func mixedCall(ctx context.Context, c echopb.EchoServiceClient, i int) error {
	payload := data(i*97, i)
	seq := uint64(1000 * i)
	switch i % 4 {
	case 0:
		resp, err := c.Unary(ctx, &echopb.EchoRequest{Payload: payload, Seq: seq})
		if err != nil {
			return err
		}
		return expect(resp, want{payload, seq, 1, uint64(len(payload))})
	case 1:
		return mixedClientStream(ctx, c, payload, seq)
	case 2:
		return mixedServerStream(ctx, c, payload, seq)
	default:
		return mixedBidi(ctx, c, payload, seq)
	}
}

func mixedClientStream(ctx context.Context, c echopb.EchoServiceClient, payload []byte, seq uint64) error {
	stream, err := c.ClientStream(ctx)
	if err != nil {
		return err
	}
	for j := range 3 {
		if err := stream.Send(&echopb.EchoRequest{Payload: payload, Seq: seq + uint64(j)}); err != nil {
			return err
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return err
	}
	return expect(resp, want{payload, seq + 2, 3, 3 * uint64(len(payload))})
}

func mixedServerStream(ctx context.Context, c echopb.EchoServiceClient, payload []byte, seq uint64) error {
	stream, err := c.ServerStream(ctx, &echopb.EchoRequest{Payload: payload, Seq: seq, Repeat: 3})
	if err != nil {
		return err
	}
	for j := range 3 {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := expect(resp, want{payload, seq + uint64(j), 1, uint64(len(payload))}); err != nil {
			return err
		}
	}
	return expectEOF(recvErr(stream.Recv()))
}

func mixedBidi(ctx context.Context, c echopb.EchoServiceClient, payload []byte, seq uint64) error {
	stream, err := c.Bidi(ctx)
	if err != nil {
		return err
	}
	for j := range 3 {
		if err := stream.Send(&echopb.EchoRequest{Payload: payload, Seq: seq + uint64(j)}); err != nil {
			return err
		}
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		if err := expect(resp, want{payload, seq + uint64(j), uint32(j + 1), uint64(j+1) * uint64(len(payload))}); err != nil {
			return err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	return expectEOF(recvErr(stream.Recv()))
}

const (
	slowMessages    = 64
	slowMessageSize = 64 * 1024
	slowUnaryCalls  = 20
	slowUnaryBound  = 5 * time.Second
)

// caseSlowConsumer (revision one only): a server stream of 64 KiB messages
// that the caller leaves unread must not hold up 20 unary calls on the same
// tunnel; afterwards the stalled stream still delivers intact messages.
func caseSlowConsumer(ctx context.Context, env *Env) error {
	if !env.flowControlled() {
		return skip("tunnel uses revision zero (no flow control)")
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var tc grpctunnel.TunnelChannel
	req := &echopb.EchoRequest{ResponseSize: slowMessageSize, Repeat: slowMessages, Seq: 1}
	slow, err := env.client().ServerStream(sctx, req, grpctunnel.WithTunnelChannel(&tc))
	if err != nil {
		return err
	}
	time.Sleep(200 * time.Millisecond) // let the handler fill the window
	if err := unaryBurst(ctx, env.pinned(tc)); err != nil {
		return err
	}
	for i := range 3 {
		resp, err := slow.Recv()
		if err != nil {
			return fmt.Errorf("slow stream response %d: %w", i+1, err)
		}
		if err := expect(resp, want{echo.Pattern(slowMessageSize), uint64(1 + i), 1, 0}); err != nil {
			return fmt.Errorf("slow stream response %d: %w", i+1, err)
		}
	}
	return nil
}

// unaryBurst runs slowUnaryCalls concurrent unary calls that must all
// succeed within slowUnaryBound.
func unaryBurst(ctx context.Context, c echopb.EchoServiceClient) error {
	ctx, cancel := context.WithTimeout(ctx, slowUnaryBound)
	defer cancel()
	errs := make(chan error, slowUnaryCalls)
	for i := range slowUnaryCalls {
		go func() {
			payload := data(1024, i)
			resp, err := c.Unary(ctx, &echopb.EchoRequest{Payload: payload, Seq: uint64(i)})
			if err == nil {
				err = expect(resp, want{payload, uint64(i), 1, 1024})
			}
			errs <- err
		}()
	}
	var all []error
	for range slowUnaryCalls {
		if err := <-errs; err != nil {
			all = append(all, err)
		}
	}
	if len(all) > 0 {
		return fmt.Errorf("%d of %d unary calls beside the stalled stream failed within %v, first: %w",
			len(all), slowUnaryCalls, slowUnaryBound, all[0])
	}
	return nil
}
