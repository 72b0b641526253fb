// Package wiretap observes the frames of tunnel-opening RPCs through gRPC
// interceptors: the Settings frames and the protocol revision of every
// new_stream. The peer uses it to report which revision was actually used
// and to skip cases that need flow control on revision-zero tunnels.
package wiretap

import (
	"fmt"
	"sort"
	"strings"
	"sync"

	"github.com/jhump/grpctunnel/tunnelpb"
)

// Tap accumulates observations; it is safe for concurrent use.
type Tap struct {
	mu        sync.Mutex
	settings  []*tunnelpb.Settings
	revisions map[tunnelpb.ProtocolRevision]int
	ended     int // tunnel RPCs whose receive side ended (EOF or error)
}

// New returns an empty tap.
func New() *Tap {
	return &Tap{revisions: map[tunnelpb.ProtocolRevision]int{}}
}

// observe records one frame sent or received on a tunnel-opening RPC.
func (t *Tap) observe(msg any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch m := msg.(type) {
	case *tunnelpb.ServerToClient:
		if s := m.GetSettings(); s != nil {
			t.settings = append(t.settings, s)
		}
	case *tunnelpb.ClientToServer:
		if ns := m.GetNewStream(); ns != nil {
			t.revisions[ns.GetProtocolRevision()]++
		}
	}
}

// end records that the receive side of a tunnel-opening RPC ended.
func (t *Tap) end() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.ended++
}

// Ended returns how many tunnel-opening RPCs have ended on the receive side.
func (t *Tap) Ended() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.ended
}

// Stats is a snapshot of what a Tap saw.
type Stats struct {
	// Settings holds every Settings frame, in order of observation.
	Settings []*tunnelpb.Settings
	// StreamRevisions counts new_stream frames per protocol_revision.
	StreamRevisions map[tunnelpb.ProtocolRevision]int
}

// Snapshot returns a copy of the observations so far.
func (t *Tap) Snapshot() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	revs := make(map[tunnelpb.ProtocolRevision]int, len(t.revisions))
	for k, v := range t.revisions {
		revs[k] = v
	}
	return Stats{Settings: append([]*tunnelpb.Settings(nil), t.settings...), StreamRevisions: revs}
}

// FlowControlled reports whether every stream seen so far used revision one
// (and at least one stream was seen).
func (s Stats) FlowControlled() bool {
	return s.StreamRevisions[tunnelpb.ProtocolRevision_REVISION_ONE] > 0 &&
		s.StreamRevisions[tunnelpb.ProtocolRevision_REVISION_ZERO] == 0
}

// String renders the stats on one line, for example
// "settings=1 revisions=[0,1] window=65536 streams=rev1:123".
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "settings=%d", len(s.Settings))
	if n := len(s.Settings); n > 0 {
		last := s.Settings[n-1]
		fmt.Fprintf(&b, " revisions=%s window=%d", revisionList(last.GetSupportedProtocolRevisions()), last.GetInitialWindowSize())
	}
	b.WriteString(" streams=")
	b.WriteString(revisionCounts(s.StreamRevisions))
	return b.String()
}

func revisionList(revs []tunnelpb.ProtocolRevision) string {
	parts := make([]string, len(revs))
	for i, r := range revs {
		parts[i] = fmt.Sprint(int32(r))
	}
	return "[" + strings.Join(parts, ",") + "]"
}

func revisionCounts(counts map[tunnelpb.ProtocolRevision]int) string {
	if len(counts) == 0 {
		return "none"
	}
	revs := make([]int, 0, len(counts))
	for r := range counts {
		revs = append(revs, int(r))
	}
	sort.Ints(revs)
	parts := make([]string, len(revs))
	for i, r := range revs {
		parts[i] = fmt.Sprintf("rev%d:%d", r, counts[tunnelpb.ProtocolRevision(r)])
	}
	return strings.Join(parts, ",")
}
