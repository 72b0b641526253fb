package roles

import (
	"github.com/jhump/grpctunnel"
	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// BenchServer is the bench-server role: serve-forward without the wiretap
// (no interceptor on any RPC), whose echo service computes a server
// stream's payload once per call, as the Rust echo service does, instead of
// once per message. Everything else is the interop echo service.
type BenchServer struct {
	srv *serving
}

// StartBenchServer listens on 127.0.0.1:0 and serves in the background: the
// echo service directly, and forward tunnels (grpctunnel's
// TunnelServiceHandler) carrying it.
func StartBenchServer(opts Options) (*BenchServer, error) {
	lis, err := listen()
	if err != nil {
		return nil, err
	}
	svc := benchEcho{echo.New()}
	handler := grpctunnel.NewTunnelServiceHandler(opts.handlerOptions())
	echopb.RegisterEchoServiceServer(handler, svc)

	gs := grpc.NewServer(
		grpc.MaxRecvMsgSize(MaxMessageSize),
		grpc.MaxSendMsgSize(MaxMessageSize),
	)
	tunnelpb.RegisterTunnelServiceServer(gs, handler.Service())
	echopb.RegisterEchoServiceServer(gs, svc)
	return &BenchServer{srv: serve(gs, lis)}, nil
}

// Addr is the listening address, HOST:PORT.
func (s *BenchServer) Addr() string { return s.srv.addr() }

// Stop stops the server (gracefully for at most a short while).
func (s *BenchServer) Stop() { s.srv.stop() }

// benchEcho is the echo service with a cheaper plain server stream.
type benchEcho struct {
	*echo.Service
}

// ServerStream answers a plain request (response_size and repeat, nothing
// else) with `repeat` responses sharing one payload; any other request goes
// to the interop service.
func (b benchEcho) ServerStream(req *echopb.EchoRequest, stream grpc.ServerStreamingServer[echopb.EchoResponse]) error {
	n := req.GetResponseSize()
	if n == 0 || n > MaxMessageSize || req.GetSleepMs() != 0 || req.GetTag() != "" || req.GetEchoMetadata() ||
		req.GetError() != nil || len(req.GetResponseHeaders()) > 0 || len(req.GetResponseTrailers()) > 0 {
		return b.Service.ServerStream(req, stream)
	}
	payload := echo.Pattern(int(n))
	size := uint64(len(req.GetPayload()))
	ctx := stream.Context()
	for i := range max(req.GetRepeat(), 1) {
		if err := ctx.Err(); err != nil {
			return status.FromContextError(err).Err()
		}
		resp := &echopb.EchoResponse{Payload: payload, Seq: req.GetSeq() + uint64(i), Count: 1, TotalBytes: size}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}
