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
	cancels   int // cancel frames
	// messages being reassembled, per direction and stream ID
	partial   map[partialKey]*partialMsg
	cancelled map[int64]bool // streams with a cancel frame: no longer tracked
	cut       int            // streams ended (half_close, close_stream) inside a message
}

// partialKey names one direction of one stream.
type partialKey struct {
	toServer bool
	stream   int64
}

// partialMsg is a message whose envelope was seen but not all its bytes.
type partialMsg struct {
	size, got uint64
}

// New returns an empty tap.
func New() *Tap {
	return &Tap{revisions: map[tunnelpb.ProtocolRevision]int{}, partial: map[partialKey]*partialMsg{}, cancelled: map[int64]bool{}}
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
		t.track(partialKey{false, m.GetStreamId()}, m.GetResponseMessage(), m.GetMoreResponseData(), m.GetCloseStream() != nil)
	case *tunnelpb.ClientToServer:
		if ns := m.GetNewStream(); ns != nil {
			t.revisions[ns.GetProtocolRevision()]++
		}
		if m.GetCancel() != nil {
			// after a cancel, the server's close_stream may cut a message
			t.cancels++
			t.cancelled[m.GetStreamId()] = true
			delete(t.partial, partialKey{false, m.GetStreamId()})
			delete(t.partial, partialKey{true, m.GetStreamId()})
		}
		t.track(partialKey{true, m.GetStreamId()}, m.GetRequestMessage(), m.GetMoreRequestData(), m.GetHalfClose() != nil)
	}
}

// track follows message reassembly of one direction of a stream, counting
// ends (half_close, close_stream) that cut a message short (P-34). A cancel
// may legitimately cut a message, so a cancelled stream is no longer
// tracked. (Frames sent are recorded before they are sent, frames received
// after they were received, so a cancel is always recorded before the
// close_stream it causes.)
func (t *Tap) track(k partialKey, envelope *tunnelpb.MessageData, more []byte, end bool) {
	if t.cancelled[k.stream] {
		return
	}
	p := t.partial[k]
	switch {
	case envelope != nil:
		p = &partialMsg{size: uint64(envelope.GetSize()), got: uint64(len(envelope.GetData()))}
		t.partial[k] = p
	case more != nil && p != nil:
		p.got += uint64(len(more))
	case end && p != nil && p.got < p.size:
		t.cut++
	}
	if p != nil && (p.got >= p.size || end) {
		delete(t.partial, k)
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
	// Cancels counts cancel frames.
	Cancels int
	// Cut counts streams whose half_close or close_stream came in the
	// middle of a message (after its envelope, before all its bytes).
	Cut int
}

// Snapshot returns a copy of the observations so far.
func (t *Tap) Snapshot() Stats {
	t.mu.Lock()
	defer t.mu.Unlock()
	revs := make(map[tunnelpb.ProtocolRevision]int, len(t.revisions))
	for k, v := range t.revisions {
		revs[k] = v
	}
	return Stats{Settings: append([]*tunnelpb.Settings(nil), t.settings...), StreamRevisions: revs, Cancels: t.cancels, Cut: t.cut}
}

// FlowControlled reports whether every stream seen so far used revision one
// (and at least one stream was seen).
func (s Stats) FlowControlled() bool {
	return s.StreamRevisions[tunnelpb.ProtocolRevision_REVISION_ONE] > 0 &&
		s.StreamRevisions[tunnelpb.ProtocolRevision_REVISION_ZERO] == 0
}

// String renders the stats on one line, for example
// "settings=1 revisions=[0,1] window=65536 streams=rev1:123 cancels=2 cut=0".
func (s Stats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "settings=%d", len(s.Settings))
	if n := len(s.Settings); n > 0 {
		last := s.Settings[n-1]
		fmt.Fprintf(&b, " revisions=%s window=%d", revisionList(last.GetSupportedProtocolRevisions()), last.GetInitialWindowSize())
	}
	b.WriteString(" streams=")
	b.WriteString(revisionCounts(s.StreamRevisions))
	fmt.Fprintf(&b, " cancels=%d cut=%d", s.Cancels, s.Cut)
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
