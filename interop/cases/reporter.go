package cases

import (
	"fmt"
	"io"
	"strings"
	"sync"
)

// Reporter writes one machine-readable line per case:
//
//	PASS <name>
//	FAIL <name>: <reason>
//	SKIP <name>: <reason>
//
// and, from Result, the closing line "RESULT <p> passed, <f> failed".
// Reasons are flattened to one line.
type Reporter struct {
	mu      sync.Mutex
	w       io.Writer
	passed  int
	failed  int
	skipped int
}

// NewReporter writes to w (the peer's stdout).
func NewReporter(w io.Writer) *Reporter {
	return &Reporter{w: w}
}

func (r *Reporter) line(format string, args ...any) {
	fmt.Fprintf(r.w, format+"\n", args...)
}

// Pass records a passed case.
func (r *Reporter) Pass(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.passed++
	r.line("PASS %s", name)
}

// Fail records a failed case (also used for setup failures, with a name
// that is not a case name, such as "tunnel").
func (r *Reporter) Fail(name string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed++
	r.line("FAIL %s: %s", name, oneLine(err.Error()))
}

// Skip records a case that does not apply; it counts as neither passed
// nor failed.
func (r *Reporter) Skip(name, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skipped++
	r.line("SKIP %s: %s", name, oneLine(reason))
}

// Counts returns the numbers of passed, failed and skipped cases so far.
func (r *Reporter) Counts() (passed, failed, skipped int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.passed, r.failed, r.skipped
}

// Result writes the closing RESULT line and reports whether nothing failed.
func (r *Reporter) Result() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.line("RESULT %d passed, %d failed", r.passed, r.failed)
	return r.failed == 0
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\r", " ")
	return strings.ReplaceAll(s, "\n", " | ")
}
