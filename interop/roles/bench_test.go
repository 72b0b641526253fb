package roles

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordIO collects what a bench client reports; Sync returns at once.
type recordIO struct {
	mu      sync.Mutex
	results map[string][]Figure
	errors  []string
	syncs   []string
}

func (r *recordIO) Result(w string, f []Figure) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results[w] = f
}

func (r *recordIO) Error(w string, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, w+": "+err.Error())
}

func (r *recordIO) Sync(line string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.syncs = append(r.syncs, line)
	return nil
}

// TestBenchClient runs every workload, briefly, through a Go tunnel and
// directly against the bench server, and checks each reports its keys.
func TestBenchClient(t *testing.T) {
	srv, err := StartBenchServer(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Stop()
	p := BenchParams{Duration: 50 * time.Millisecond, Warmup: 10 * time.Millisecond, Calls: 50, Callers: 4, Streams: 50}
	want := map[string][]string{
		"unary_seq":     {"p50_us", "p99_us", "calls_per_s"},
		"unary_conc":    {"calls_per_s", "p50_us", "p99_us"},
		"stream_64k":    {"mb_per_s", "msgs_per_s"},
		"stream_1m":     {"mb_per_s", "msgs_per_s"},
		"client_stream": {"mb_per_s"},
		"bidi_pingpong": {"round_trips_per_s", "p50_us", "p99_us"},
		"many_streams":  {"streams", "open_ping_ms", "close_ms"},
		"mixed":         {"calls_per_s", "p50_us", "p99_us", "push_mb_per_s"},
	}
	for _, direct := range []bool{false, true} {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		rec := &recordIO{results: map[string][]Figure{}}
		if err := RunBenchClient(ctx, srv.Addr(), direct, BenchWorkloads, p, Options{}, rec); err != nil {
			t.Fatalf("direct=%v: %v", direct, err)
		}
		cancel()
		if len(rec.errors) > 0 {
			t.Errorf("direct=%v: %s", direct, strings.Join(rec.errors, "; "))
		}
		if got := strings.Join(rec.syncs, ","); got != "READY many_streams,HOLD many_streams" {
			t.Errorf("direct=%v: syncs %q", direct, got)
		}
		for w, keys := range want {
			figures := rec.results[w]
			have := map[string]float64{}
			for _, f := range figures {
				have[f.Key] = f.Value
			}
			for _, k := range keys {
				if _, ok := have[k]; !ok {
					t.Errorf("direct=%v: %s lacks %s: %v", direct, w, k, figures)
				}
			}
			if _, ok := have["early_close"]; ok == direct {
				t.Errorf("direct=%v: %s: early_close present=%v", direct, w, ok)
			}
		}
		if n := rec.results["many_streams"]; len(n) > 0 && n[0].Value != 50 {
			t.Errorf("direct=%v: many_streams %v", direct, n)
		}
	}
}

func TestFormatResult(t *testing.T) {
	got := FormatResult("unary_seq", []Figure{{"p50_us", 12.5}, {"calls_per_s", 1000}})
	if want := "RESULT unary_seq p50_us=12.5 calls_per_s=1000"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
