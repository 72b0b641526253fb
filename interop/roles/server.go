package roles

import (
	"net"
	"time"

	"google.golang.org/grpc"
)

// stopGrace bounds a graceful stop before it turns into a hard one.
const stopGrace = 2 * time.Second

// serving is a running gRPC server.
type serving struct {
	gs   *grpc.Server
	lis  net.Listener
	done chan struct{}
}

// serve starts gs on lis in the background.
func serve(gs *grpc.Server, lis net.Listener) *serving {
	s := &serving{gs: gs, lis: lis, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		_ = gs.Serve(lis)
	}()
	return s
}

// addr is the listening address, HOST:PORT.
func (s *serving) addr() string { return s.lis.Addr().String() }

// stop stops gracefully, then hard after stopGrace, and waits.
func (s *serving) stop() {
	graceful := make(chan struct{})
	go func() {
		defer close(graceful)
		s.gs.GracefulStop()
	}()
	select {
	case <-graceful:
	case <-time.After(stopGrace):
		s.gs.Stop()
		<-graceful
	}
	<-s.done
}
