package cases

import (
	"context"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"grpctunnel-interop/echopb"
)

// trailerWait bounds the wait for trailers after a call ended.
const trailerWait = 2 * time.Second

// trailerOf returns the trailers of an ended call.
//
// The Go reference client (grpctunnel v0.3.0, tunnelClientStream.finishStream)
// wakes a blocked RecvMsg before it stores the trailers, and its Trailer()
// does not block: right after RecvMsg returned the final error, Trailer()
// may still be nil (and a grpc.Trailer call option's target may be written
// after Invoke returned, a data race). The stream's context is cancelled
// only once the trailers are stored, so wait for that (or for non-nil
// trailers, which is how a plain gRPC stream behaves), bounded.
func trailerOf(cs grpc.ClientStream) metadata.MD {
	timeout := time.After(trailerWait)
	for {
		if md := cs.Trailer(); md != nil {
			return md
		}
		select {
		case <-cs.Context().Done():
			return cs.Trailer()
		case <-timeout:
			return cs.Trailer()
		case <-time.After(time.Millisecond):
		}
	}
}

// unaryDesc describes EchoService/Unary as a stream (no streaming sides).
var unaryDesc = &grpc.StreamDesc{StreamName: "Unary"}

// unaryWithTrailer makes a unary call through the stream API, which is
// what Invoke does, so that the trailers can be read race-free (see
// trailerOf) instead of through the grpc.Trailer call option.
func unaryWithTrailer(ctx context.Context, conn grpc.ClientConnInterface, req *echopb.EchoRequest) (*echopb.EchoResponse, metadata.MD, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	cs, err := conn.NewStream(ctx, unaryDesc, echopb.EchoService_Unary_FullMethodName)
	if err != nil {
		return nil, nil, err
	}
	if err := cs.SendMsg(req); err != nil {
		return nil, nil, err
	}
	if err := cs.CloseSend(); err != nil {
		return nil, nil, err
	}
	resp := &echopb.EchoResponse{}
	if err := cs.RecvMsg(resp); err != nil {
		return nil, trailerOf(cs), err
	}
	return resp, trailerOf(cs), nil
}
