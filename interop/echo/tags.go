package echo

import (
	"context"
	"sync"
	"time"
)

// tagState is what happened to the handler of one tagged call.
type tagState struct {
	started   bool
	cancelled bool
	finished  bool
	ended     chan struct{} // closed once cancelled or finished is set
}

// Outcome is the report CheckHandler gives for a tag.
type Outcome struct {
	Started, Cancelled, Finished bool
}

// Tags records, per tag, whether its handler started and how it ended.
type Tags struct {
	mu     sync.Mutex
	states map[string]*tagState
}

// NewTags returns an empty registry.
func NewTags() *Tags {
	return &Tags{states: map[string]*tagState{}}
}

// stateLocked returns the state for tag, creating it if needed.
func (t *Tags) stateLocked(tag string) *tagState {
	st := t.states[tag]
	if st == nil {
		st = &tagState{ended: make(chan struct{})}
		t.states[tag] = st
	}
	return st
}

// Start records that the handler for tag started. The returned function
// must be called when the handler returns: it records "cancelled" if ctx
// ended before then and "finished" otherwise. An empty tag records nothing.
func (t *Tags) Start(ctx context.Context, tag string) func() {
	if tag == "" {
		return func() {}
	}
	t.mu.Lock()
	st := t.stateLocked(tag)
	if st.cancelled || st.finished { // a reused tag starts afresh
		st = &tagState{ended: make(chan struct{})}
		t.states[tag] = st
	}
	st.started = true
	t.mu.Unlock()
	return func() { t.end(st, ctx.Err() != nil) }
}

func (t *Tags) end(st *tagState, cancelled bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if st.cancelled || st.finished {
		return
	}
	st.cancelled = cancelled
	st.finished = !cancelled
	close(st.ended)
}

// Wait waits up to wait (or until ctx ends) for the handler of tag to end,
// then reports its outcome.
func (t *Tags) Wait(ctx context.Context, tag string, wait time.Duration) Outcome {
	t.mu.Lock()
	ended := t.stateLocked(tag).ended
	t.mu.Unlock()

	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-ended:
	case <-timer.C:
	case <-ctx.Done():
	}

	t.mu.Lock()
	defer t.mu.Unlock()
	st := t.stateLocked(tag)
	return Outcome{Started: st.started, Cancelled: st.cancelled, Finished: st.finished}
}
