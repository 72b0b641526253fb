package roles

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/jhump/grpctunnel"
	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc/metadata"

	"grpctunnel-interop/cases"
	"grpctunnel-interop/wiretap"
)

// ReverseServer is the reverse-server role: a gRPC server whose
// TunnelService accepts reverse tunnels (and no forward ones). Calls go
// back to the network clients through the pool of all tunnels and, with a
// key header, through per-key pools.
type ReverseServer struct {
	Tap       *wiretap.Tap
	handler   *grpctunnel.TunnelServiceHandler
	keyHeader string
	srv       *serving
}

// StartReverseServer listens on 127.0.0.1:0 and serves in the background.
// With a non-empty keyHeader, a tunnel's affinity key is the first value of
// that request header of its opening RPC ("" when absent).
func StartReverseServer(opts Options, keyHeader string) (*ReverseServer, error) {
	lis, err := listen()
	if err != nil {
		return nil, err
	}
	s := &ReverseServer{Tap: wiretap.New(), keyHeader: keyHeader}
	hopts := opts.handlerOptions()
	if keyHeader != "" {
		hopts.AffinityKey = func(tc grpctunnel.TunnelChannel) any { return s.keyOf(tc) }
	}
	s.handler = grpctunnel.NewTunnelServiceHandler(hopts)
	gs := opts.newServer(s.Tap)
	tunnelpb.RegisterTunnelServiceServer(gs, s.handler.Service())
	s.srv = serve(gs, lis)
	return s, nil
}

// Addr is the listening address, HOST:PORT.
func (s *ReverseServer) Addr() string { return s.srv.addr() }

// keyOf is the affinity key of a tunnel.
func (s *ReverseServer) keyOf(tc grpctunnel.TunnelChannel) string {
	md, _ := metadata.FromIncomingContext(tc.Context())
	if vals := md.Get(s.keyHeader); len(vals) > 0 {
		return vals[0]
	}
	return ""
}

// Tunnels is the number of open reverse tunnels.
func (s *ReverseServer) Tunnels() int { return len(s.handler.AllReverseTunnels()) }

// WaitTunnels waits until at least n reverse tunnels are open or ctx ends.
func (s *ReverseServer) WaitTunnels(ctx context.Context, n int) error {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for s.Tunnels() < n {
		select {
		case <-ctx.Done():
			return fmt.Errorf("only %d of %d reverse tunnels opened: %w", s.Tunnels(), n, ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}

// Keys lists the distinct affinity keys of the open tunnels, sorted.
func (s *ReverseServer) Keys() []string {
	var keys []string
	for _, tc := range s.handler.AllReverseTunnels() {
		if k := s.keyOf(tc); !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	return keys
}

// RunMatrix runs the case matrix through the pool of all tunnels (scope
// "pool") and, with a key header, through each key's pool (scope "key=K").
func (s *ReverseServer) RunMatrix(ctx context.Context, rep *cases.Reporter) {
	flow := func() bool { return s.Tap.Snapshot().FlowControlled() }
	cases.Run(ctx, &cases.Env{Conn: s.handler.AsChannel(), FlowControl: flow}, "pool", rep)
	if s.keyHeader == "" {
		return
	}
	for _, key := range s.Keys() {
		env := &cases.Env{Conn: s.handler.KeyAsChannel(key), FlowControl: flow}
		cases.Run(ctx, env, "key="+key, rep)
	}
}

// Stop closes every reverse tunnel (the opening RPCs end with OK, P-71),
// then stops the server.
func (s *ReverseServer) Stop() {
	for _, tc := range s.handler.AllReverseTunnels() {
		tc.Close()
	}
	s.srv.stop()
}
