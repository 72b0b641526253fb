// Command gzipcall drives gzip-compressed calls through the gateway (grpc-go
// v1.85.0's interop client has no compression cases): grpc-go's interop
// large_unary, client_streaming, server_streaming and ping_pong, each with
// requests compressed by grpc-go's gzip compressor, against the interop
// TestService of cmd/upstream behind a hub and an agent.
//
// For each call it checks, from grpc-go's stats: that a request message
// left compressed (compressed length < length); that the response arrived
// gzip-compressed (the hub compressed toward this caller, which accepts
// gzip); and that the upstream had compressed its response too (its
// "x-upstream-encoding: gzip" header, so the agent inflated it). It prints
// "PASS <case>" or "FAIL <case>: <why>" per case and exits 1 on a failure.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding/gzip"
	"google.golang.org/grpc/interop"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
)

// record is what the stats handler saw of the calls of one case.
type record struct {
	requestCompressed  bool
	responseCompressed bool
	hubEncoding        string
	upstreamEncoding   string
}

// recorder is a stats.Handler that fills the record of the current case.
type recorder struct {
	mu  sync.Mutex
	cur *record
}

func (r *recorder) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (r *recorder) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (r *recorder) HandleConn(context.Context, stats.ConnStats) {}

func (r *recorder) HandleRPC(_ context.Context, s stats.RPCStats) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cur == nil {
		return
	}
	switch s := s.(type) {
	case *stats.OutPayload:
		if s.CompressedLength < s.Length {
			r.cur.requestCompressed = true
		}
	case *stats.InPayload:
		if s.CompressedLength < s.Length {
			r.cur.responseCompressed = true
		}
	case *stats.InHeader:
		r.cur.hubEncoding = s.Compression
		if v := s.Header.Get("x-upstream-encoding"); len(v) > 0 {
			r.cur.upstreamEncoding = v[0]
		}
	}
}

func (r *recorder) start() *record {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur = &record{}
	return r.cur
}

func (r *recorder) done() record {
	r.mu.Lock()
	defer r.mu.Unlock()
	rec := *r.cur
	r.cur = nil
	return rec
}

func main() {
	addr := flag.String("addr", "", "the hub, host:port")
	key := flag.String("key", "", "the agent's key (sent as grpctunnel-key)")
	flag.Parse()
	rec := &recorder{}
	conn, err := grpc.NewClient(*addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(rec))
	if err != nil {
		fmt.Printf("FAIL dial: %v\n", err)
		os.Exit(1)
	}
	defer conn.Close()
	tc := testgrpc.NewTestServiceClient(conn)
	// Which side sends messages large enough to shrink under gzip (a
	// client_streaming response and a server_streaming request are a few
	// bytes, which gzip makes longer).
	cases := []struct {
		name                     string
		run                      func(context.Context, testgrpc.TestServiceClient, ...grpc.CallOption)
		largeRequest, largeReply bool
	}{
		{"large_unary", interop.DoLargeUnaryCall, true, true},
		{"client_streaming", interop.DoClientStreaming, true, false},
		{"server_streaming", interop.DoServerStreaming, false, true},
		{"ping_pong", interop.DoPingPong, true, true},
	}
	failed := false
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		// Wait for the agent: the hub registers its tunnel a moment
		// after the agent reports it open.
		ctx = metadata.AppendToOutgoingContext(ctx, "grpctunnel-key", *key, "grpctunnel-wait", "true")
		rec.start()
		// The interop checks end the process on a wrong answer.
		c.run(ctx, tc, grpc.UseCompressor(gzip.Name))
		cancel()
		got := rec.done()
		var why []string
		if c.largeRequest && !got.requestCompressed {
			why = append(why, "no request message was compressed")
		}
		if got.hubEncoding != gzip.Name || (c.largeReply && !got.responseCompressed) {
			why = append(why, fmt.Sprintf("the hub's response was not gzip-compressed (grpc-encoding %q)", got.hubEncoding))
		}
		if got.upstreamEncoding != gzip.Name {
			why = append(why, "the upstream did not compress its response")
		}
		if len(why) > 0 {
			failed = true
			fmt.Printf("FAIL %s: %s\n", c.name, strings.Join(why, "; "))
		} else {
			fmt.Printf("PASS %s\n", c.name)
		}
	}
	if failed {
		os.Exit(1)
	}
}
