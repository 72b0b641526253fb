package cases

import (
	"context"
	"fmt"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// details returns the two Any details the error cases carry.
func details() []*anypb.Any {
	d1, _ := anypb.New(wrapperspb.String("first detail"))
	d2, _ := anypb.New(&errdetails.ErrorInfo{
		Reason:   "INTEROP_REASON",
		Domain:   "interop.grpctunnel.test",
		Metadata: map[string]string{"k": "v"},
	})
	return []*anypb.Any{d1, d2}
}

// expectStatus checks code, message and details of err.
func expectStatus(err error, code codes.Code, msg string, dets []*anypb.Any) error {
	if err := expectCode(err, code); err != nil {
		return err
	}
	st := status.Convert(err).Proto()
	if st.GetMessage() != msg {
		return fmt.Errorf("status message %q, want %q", st.GetMessage(), msg)
	}
	got := st.GetDetails()
	if len(got) != len(dets) {
		return fmt.Errorf("status has %d details, want %d", len(got), len(dets))
	}
	for i := range dets {
		if !proto.Equal(got[i], dets[i]) {
			return fmt.Errorf("detail %d is %v, want %v", i, got[i], dets[i])
		}
	}
	return nil
}

// caseErrorWithDetails: a unary FAILED_PRECONDITION "boom" with two details,
// all preserved, and the trailers set before the error arrive.
func caseErrorWithDetails(ctx context.Context, env *Env) error {
	dets := details()
	tlrs := entries("x-err-tlr", "e1", "x-err-tlr-bin", binValue)
	req := &echopb.EchoRequest{
		Payload:          []byte("x"),
		ResponseTrailers: tlrs,
		Error:            &echopb.ErrorSpec{Code: int32(codes.FailedPrecondition), Message: "boom", Details: dets},
	}
	_, trailer, err := unaryWithTrailer(ctx, env.Conn, req)
	if err := expectStatus(err, codes.FailedPrecondition, "boom", dets); err != nil {
		return err
	}
	return sameMetadata("trailers", withoutTransportKeys(trailer), echo.FromEntries(tlrs))
}

// caseErrorStreaming: a full-duplex bidi call whose first request asks for
// ABORTED: both responses arrive, then the error (with its detail and the
// trailers).
func caseErrorStreaming(ctx context.Context, env *Env) error {
	dets := details()[:1]
	tlrs := entries("x-stream-tlr", "s1")
	stream, err := env.client().Bidi(ctx)
	if err != nil {
		return err
	}
	first := &echopb.EchoRequest{
		Payload:          []byte("a"),
		Seq:              1,
		ResponseTrailers: tlrs,
		Error:            &echopb.ErrorSpec{Code: int32(codes.Aborted), Message: "stream boom", Details: dets},
	}
	reqs := []*echopb.EchoRequest{first, {Payload: []byte("bb"), Seq: 2}}
	var total uint64
	for i, req := range reqs {
		if err := stream.Send(req); err != nil {
			return fmt.Errorf("send %d: %w", i+1, err)
		}
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
		total += uint64(len(req.Payload))
		if err := expect(resp, want{req.Payload, req.Seq, uint32(i + 1), total}); err != nil {
			return fmt.Errorf("response %d: %w", i+1, err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		return err
	}
	if err := expectStatus(recvErr(stream.Recv()), codes.Aborted, "stream boom", dets); err != nil {
		return err
	}
	return sameMetadata("trailers", withoutTransportKeys(trailerOf(stream)), echo.FromEntries(tlrs))
}

// caseUnimplemented: an unknown method and an unknown service both fail
// with UNIMPLEMENTED, and the channel keeps working afterwards.
func caseUnimplemented(ctx context.Context, env *Env) error {
	for _, method := range []string{
		"/grpctunnel.testing.v1.EchoService/NoSuchMethod",
		"/grpctunnel.testing.v1.NoSuchService/Unary",
	} {
		err := env.Conn.Invoke(ctx, method, &echopb.EchoRequest{}, &echopb.EchoResponse{})
		if err := expectCode(err, codes.Unimplemented); err != nil {
			return fmt.Errorf("%s: %w", method, err)
		}
	}
	resp, err := env.client().Unary(ctx, &echopb.EchoRequest{Payload: []byte("still ok"), Seq: 3})
	if err != nil {
		return fmt.Errorf("call after UNIMPLEMENTED: %w", err)
	}
	return expect(resp, want{[]byte("still ok"), 3, 1, 8})
}
