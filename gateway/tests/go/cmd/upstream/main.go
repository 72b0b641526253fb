// Command upstream is the private server of the gateway's end-to-end tests
// that the interop server is not: grpc-go's interop TestService with server
// reflection (for grpcurl) and gzip-compressed responses for every caller
// that accepts gzip, so the agent receives compressed messages.
//
// It listens on 127.0.0.1:0 and prints "LISTENING <addr>". Each response
// it compressed carries the header "x-upstream-encoding: gzip".
package main

import (
	"context"
	"fmt"
	"log"
	"net"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
)

// compressHeader marks a response this server compressed.
const compressHeader = "x-upstream-encoding"

// compress asks grpc-go to gzip the response when the caller accepts it.
func compress(ctx context.Context, setHeader func(metadata.MD) error) error {
	accepted, err := grpc.ClientSupportedCompressors(ctx)
	if err != nil || !slices.Contains(accepted, gzip.Name) {
		return err
	}
	if err := grpc.SetSendCompressor(ctx, gzip.Name); err != nil {
		return err
	}
	return setHeader(metadata.Pairs(compressHeader, gzip.Name))
}

func main() {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	unary := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := compress(ctx, func(md metadata.MD) error { return grpc.SetHeader(ctx, md) }); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
	stream := func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := compress(ss.Context(), ss.SetHeader); err != nil {
			return err
		}
		return handler(srv, ss)
	}
	server := grpc.NewServer(grpc.UnaryInterceptor(unary), grpc.StreamInterceptor(stream))
	testgrpc.RegisterTestServiceServer(server, interop.NewTestServer())
	reflection.Register(server)
	fmt.Printf("LISTENING %s\n", lis.Addr())
	if err := server.Serve(lis); err != nil {
		log.Fatalf("serve: %v", err)
	}
}
