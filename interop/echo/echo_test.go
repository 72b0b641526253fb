package echo

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"
)

func TestPattern(t *testing.T) {
	p := Pattern(600)
	for _, i := range []int{0, 1, 250, 251, 252, 502, 599} {
		if p[i] != byte(i%251) {
			t.Errorf("byte %d is %d, want %d", i, p[i], i%251)
		}
	}
}

func TestToEntriesSkipsTransportKeysAndKeepsOrder(t *testing.T) {
	md := metadata.MD{
		":authority":      {"h"},
		"content-type":    {"application/grpc"},
		"user-agent":      {"ua"},
		"te":              {"trailers"},
		"grpc-timeout":    {"1S"},
		"x-multi":         {"2", "1"},
		"x-raw-bin":       {"\x00\x01"},
		"grpc-accept-enc": {"gzip"},
	}
	got := ToEntries(md)
	want := []struct{ k, v string }{{"x-multi", "2"}, {"x-multi", "1"}, {"x-raw-bin", "\x00\x01"}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i, w := range want {
		if got[i].GetKey() != w.k || string(got[i].GetValue()) != w.v {
			t.Errorf("entry %d is %s=%q, want %s=%q", i, got[i].GetKey(), got[i].GetValue(), w.k, w.v)
		}
	}
	back := FromEntries(got)
	if len(back["x-multi"]) != 2 || back["x-multi"][0] != "2" || back["x-raw-bin"][0] != "\x00\x01" {
		t.Errorf("round trip gave %v", back)
	}
}

func TestTags(t *testing.T) {
	tags := NewTags()
	ctx := context.Background()

	if out := tags.Wait(ctx, "never", 10*time.Millisecond); out != (Outcome{}) {
		t.Errorf("unknown tag: %+v", out)
	}

	end := tags.Start(ctx, "ok")
	go func() { time.Sleep(20 * time.Millisecond); end() }()
	if out := tags.Wait(ctx, "ok", 5*time.Second); out != (Outcome{Started: true, Finished: true}) {
		t.Errorf("finished handler: %+v", out)
	}

	cctx, cancel := context.WithCancel(ctx)
	end = tags.Start(cctx, "cancelled")
	if out := tags.Wait(ctx, "cancelled", 10*time.Millisecond); out != (Outcome{Started: true}) {
		t.Errorf("running handler: %+v", out)
	}
	cancel()
	end()
	if out := tags.Wait(ctx, "cancelled", time.Second); out != (Outcome{Started: true, Cancelled: true}) {
		t.Errorf("cancelled handler: %+v", out)
	}
}

func TestSleepEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := sleep(ctx, 5000); err == nil || time.Since(start) > 2*time.Second {
		t.Errorf("sleep returned %v after %v", err, time.Since(start))
	}
}
