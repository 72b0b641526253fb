package roles

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"grpctunnel-interop/cases"
	"grpctunnel-interop/wiretap"
)

// mode is one pairing of tunnel client and tunnel server options.
type mode struct {
	name   string
	client Options // tunnel client: forward-client, or reverse-server
	server Options // tunnel server: serve-forward, or reverse-client
}

var (
	plain = Options{}
	nfc   = Options{NoFlowControl: true}
	nn    = Options{NoNegotiate: true}
)

// modes: the same option on both sides, then each option on one side only.
var modes = []mode{
	{"default", plain, plain},
	{"no-flow-control", nfc, nfc},
	{"no-negotiate", nn, nn},
	{"mixed/no-flow-control-client", nfc, plain},
	{"mixed/no-flow-control-server", plain, nfc},
	{"mixed/no-negotiate-client", nn, plain},
	{"mixed/no-negotiate-server", plain, nn},
}

// wantWire is what the taps must have seen.
type wantWire struct {
	settings  bool                        // one Settings frame per tunnel
	revisions []tunnelpb.ProtocolRevision // its supported_protocol_revisions
	revision  tunnelpb.ProtocolRevision   // of every new_stream
}

// expectedWire derives the negotiation outcome (PROTOCOL.md §2).
func (m mode) expectedWire() wantWire {
	var w wantWire
	w.settings = !m.client.NoNegotiate && !m.server.NoNegotiate
	if !w.settings {
		return w
	}
	w.revisions = []tunnelpb.ProtocolRevision{0, 1}
	if m.server.NoFlowControl {
		w.revisions = []tunnelpb.ProtocolRevision{0}
	}
	if !m.client.NoFlowControl && !m.server.NoFlowControl {
		w.revision = tunnelpb.ProtocolRevision_REVISION_ONE
	}
	return w
}

// checkWire checks one side's tap against the expectation.
func checkWire(t *testing.T, side string, st wiretap.Stats, tunnels int, w wantWire) {
	t.Helper()
	wantSettings := 0
	if w.settings {
		wantSettings = tunnels
	}
	if len(st.Settings) != wantSettings {
		t.Errorf("%s: saw %d Settings frames, want %d (%v)", side, len(st.Settings), wantSettings, st)
	}
	for _, s := range st.Settings {
		if !slices.Equal(s.GetSupportedProtocolRevisions(), w.revisions) || s.GetInitialWindowSize() != 65536 {
			t.Errorf("%s: Settings %v, want revisions %v and window 65536", side, s, w.revisions)
		}
	}
	for rev, n := range st.StreamRevisions {
		if rev != w.revision {
			t.Errorf("%s: %d streams used revision %d, want only revision %d", side, n, rev, w.revision)
		}
	}
	if st.StreamRevisions[w.revision] == 0 {
		t.Errorf("%s: no stream used revision %d (%v)", side, w.revision, st)
	}
	if st.Cut != 0 {
		t.Errorf("%s: %d streams ended in the middle of a message (%v)", side, st.Cut, st)
	}
}

// runMatrix runs fn with a reporter and fails the test on any failed case.
func runMatrix(t *testing.T, wantSkips int, fn func(rep *cases.Reporter)) {
	t.Helper()
	var out bytes.Buffer
	rep := cases.NewReporter(&out)
	fn(rep)
	passed, failed, skipped := rep.Counts()
	if failed > 0 || passed == 0 || skipped != wantSkips {
		t.Errorf("passed=%d failed=%d skipped=%d (want %d skipped):\n%s", passed, failed, skipped, wantSkips, out.String())
	}
	t.Logf("passed=%d failed=%d skipped=%d", passed, failed, skipped)
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestForward: Go forward client against Go forward server, every mode.
func TestForward(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			srv, err := StartForwardServer(m.server)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop()
			w := m.expectedWire()
			skips := 0
			if w.revision == 0 {
				skips = 1 // slow_consumer
			}
			var st wiretap.Stats
			runMatrix(t, skips, func(rep *cases.Reporter) {
				st = RunForwardClient(testContext(t), srv.Addr(), m.client, rep)
			})
			checkWire(t, "client", st, 1, w)
			checkWire(t, "server", srv.Tap.Snapshot(), 1, w)
		})
	}
}

// reverseKeys are the keys of the reverse clients: two tunnels share "a".
var reverseKeys = []string{"a", "b", "a"}

// TestReverse: Go reverse-tunnel network server against Go reverse clients,
// every mode, through the pool of all tunnels and the per-key pools.
func TestReverse(t *testing.T) {
	for _, m := range modes {
		t.Run(m.name, func(t *testing.T) {
			ctx := testContext(t)
			srv, err := StartReverseServer(m.client, AgentKeyHeader)
			if err != nil {
				t.Fatal(err)
			}
			defer srv.Stop()
			clients := startReverseClients(t, ctx, srv.Addr(), m.server)
			if err := srv.WaitTunnels(ctx, len(reverseKeys)); err != nil {
				t.Fatal(err)
			}
			if keys := srv.Keys(); !slices.Equal(keys, []string{"a", "b"}) {
				t.Fatalf("keys %q, want [a b]", keys)
			}
			w := m.expectedWire()
			skips := 0
			if w.revision == 0 {
				skips = 3 // slow_consumer in pool, key=a, key=b
			}
			runMatrix(t, skips, func(rep *cases.Reporter) { srv.RunMatrix(ctx, rep) })
			checkWire(t, "server", srv.Tap.Snapshot(), len(reverseKeys), w)
			srv.Stop()
			for i, c := range clients {
				if started, err := c.Result(); !started || err != nil {
					t.Errorf("client %d: started=%v err=%v, want a clean end", i, started, err)
				}
				checkWireQuiet(t, c.Tap.Snapshot(), w)
			}
		})
	}
}

// checkWireQuiet checks a reverse client's tap: it may have served no
// stream at all if round robin never picked it, but never a wrong one.
func checkWireQuiet(t *testing.T, st wiretap.Stats, w wantWire) {
	t.Helper()
	if (len(st.Settings) == 1) != w.settings {
		t.Errorf("reverse client: %d Settings frames, want settings=%v", len(st.Settings), w.settings)
	}
	for rev := range st.StreamRevisions {
		if rev != w.revision {
			t.Errorf("reverse client: streams with revision %d, want %d", rev, w.revision)
		}
	}
}

func startReverseClients(t *testing.T, ctx context.Context, addr string, opts Options) []*ReverseClient {
	t.Helper()
	var clients []*ReverseClient
	for _, key := range reverseKeys {
		c, err := StartReverseClient(ctx, addr, key, opts)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(c.Stop)
		select {
		case <-c.Ready():
		case <-c.Done():
			t.Fatalf("reverse client %q ended before it was ready: %v", key, c.err)
		case <-ctx.Done():
			t.Fatal("reverse client never ready")
		}
		clients = append(clients, c)
	}
	return clients
}

// TestDirect runs the matrix over plain gRPC against the echo service
// registered directly, validating the service and the cases without any
// tunnel.
func TestDirect(t *testing.T) {
	srv, err := StartForwardServer(plain)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	cc, err := grpc.NewClient("passthrough:///"+srv.Addr(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageSize), grpc.MaxCallSendMsgSize(MaxMessageSize)))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	runMatrix(t, 0, func(rep *cases.Reporter) {
		cases.Run(testContext(t), &cases.Env{Conn: cc}, "direct", rep)
	})
}

// TestForwardSetupFailure: no server at the address gives one "tunnel"
// failure and no case lines.
func TestForwardSetupFailure(t *testing.T) {
	lis, err := listen()
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	var out bytes.Buffer
	rep := cases.NewReporter(&out)
	RunForwardClient(testContext(t), addr, plain, rep)
	if got := out.String(); !strings.HasPrefix(got, "FAIL tunnel: ") || strings.Count(got, "\n") != 1 {
		t.Errorf("output %q, want one FAIL tunnel line", got)
	}
}
