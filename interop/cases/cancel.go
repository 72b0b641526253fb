package cases

import (
	"context"
	"fmt"
	"time"

	"github.com/jhump/grpctunnel"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"

	"grpctunnel-interop/echopb"
)

const (
	// handlerSleepMs is how long the handler of a cancelled call would sleep.
	handlerSleepMs = 5000
	// checkWaitMs is how long CheckHandler may wait for that handler to end.
	checkWaitMs = 3000
	// headerWait bounds the wait for response headers before cancelling.
	headerWait = 2 * time.Second
)

// expectHandlerCancelled asks the peer (through the same tunnel as the
// tagged call) whether the handler tagged tag started and was cancelled.
func expectHandlerCancelled(ctx context.Context, c echopb.EchoServiceClient, tag string) error {
	out, err := c.CheckHandler(ctx, &echopb.CheckRequest{Tag: tag, WaitMs: checkWaitMs})
	if err != nil {
		return fmt.Errorf("CheckHandler: %w", err)
	}
	if !out.GetStarted() || !out.GetCancelled() || out.GetFinished() {
		return fmt.Errorf("handler %s: started=%v cancelled=%v finished=%v, want started and cancelled",
			tag, out.GetStarted(), out.GetCancelled(), out.GetFinished())
	}
	return nil
}

// caseDeadline: a unary call whose handler sleeps 5 s, under a 200 ms
// deadline, fails promptly with DEADLINE_EXCEEDED and its handler is
// cancelled.
func caseDeadline(ctx context.Context, env *Env) error {
	tag := newTag("deadline")
	dctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	var tc grpctunnel.TunnelChannel
	start := time.Now()
	req := &echopb.EchoRequest{Payload: []byte("late"), SleepMs: handlerSleepMs, Tag: tag}
	_, err := env.client().Unary(dctx, req, grpctunnel.WithTunnelChannel(&tc))
	if err := expectCode(err, codes.DeadlineExceeded); err != nil {
		return err
	}
	if took := time.Since(start); took > 2*time.Second {
		return fmt.Errorf("call took %v to fail with a 200ms deadline", took)
	}
	return expectHandlerCancelled(ctx, env.pinned(tc), tag)
}

// caseCancel: a server-streaming call whose handler sends headers and then
// sleeps 5 s is cancelled by the caller once the headers arrived (or after
// a short wait): the caller sees CANCELLED and the handler is cancelled.
// Then the same with a busy handler (a million 1 KiB responses, one read).
func caseCancel(ctx context.Context, env *Env) error {
	if err := cancelSleeping(ctx, env); err != nil {
		return fmt.Errorf("sleeping handler: %w", err)
	}
	if err := cancelStreaming(ctx, env); err != nil {
		return fmt.Errorf("streaming handler: %w", err)
	}
	return nil
}

func cancelSleeping(ctx context.Context, env *Env) error {
	tag := newTag("cancel")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var tc grpctunnel.TunnelChannel
	req := &echopb.EchoRequest{
		Payload:         []byte("never"),
		SleepMs:         handlerSleepMs,
		Tag:             tag,
		ResponseHeaders: entries("x-started", "yes"),
	}
	stream, err := env.client().ServerStream(cctx, req, grpctunnel.WithTunnelChannel(&tc))
	if err != nil {
		return err
	}
	waitHeaders(stream.Header)
	cancel()
	if err := expectCode(recvErr(stream.Recv()), codes.Canceled); err != nil {
		return err
	}
	return expectHandlerCancelled(ctx, env.pinned(tc), tag)
}

// waitHeaders waits for header() to return, at most headerWait.
func waitHeaders(header func() (metadata.MD, error)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = header()
	}()
	select {
	case <-done:
	case <-time.After(headerWait):
	}
}

// cancelStreaming cancels a server stream whose handler is busy sending (a
// million 1 KiB responses) after reading one response.
func cancelStreaming(ctx context.Context, env *Env) error {
	tag := newTag("cancel-busy")
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var tc grpctunnel.TunnelChannel
	req := &echopb.EchoRequest{Repeat: 1_000_000, ResponseSize: 1024, Tag: tag}
	stream, err := env.client().ServerStream(cctx, req, grpctunnel.WithTunnelChannel(&tc))
	if err != nil {
		return err
	}
	if _, err := stream.Recv(); err != nil {
		return fmt.Errorf("first response: %w", err)
	}
	cancel()
	return expectHandlerCancelled(ctx, env.pinned(tc), tag)
}
