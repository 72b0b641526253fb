package cases

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"grpctunnel-interop/echo"
	"grpctunnel-interop/echopb"
)

// data returns n bytes of a pattern distinct from the response_size pattern
// (byte i = (i*7 + seed) % 256), so echoed and generated payloads cannot be
// confused.
func data(n int, seed int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + seed)
	}
	return b
}

// want is the expected content of one EchoResponse.
type want struct {
	payload []byte
	seq     uint64
	count   uint32
	total   uint64
}

// expect compares resp with w.
func expect(resp *echopb.EchoResponse, w want) error {
	if resp == nil {
		return errors.New("nil response")
	}
	if err := samePayload(resp.GetPayload(), w.payload); err != nil {
		return fmt.Errorf("seq %d: %w", w.seq, err)
	}
	if resp.GetSeq() != w.seq || resp.GetCount() != w.count || resp.GetTotalBytes() != w.total {
		return fmt.Errorf("got seq=%d count=%d total_bytes=%d, want seq=%d count=%d total_bytes=%d",
			resp.GetSeq(), resp.GetCount(), resp.GetTotalBytes(), w.seq, w.count, w.total)
	}
	return nil
}

// samePayload compares two payloads byte for byte.
func samePayload(got, want []byte) error {
	if bytes.Equal(got, want) {
		return nil
	}
	if len(got) != len(want) {
		return fmt.Errorf("payload has %d bytes, want %d", len(got), len(want))
	}
	for i := range got {
		if got[i] != want[i] {
			return fmt.Errorf("payload differs at byte %d of %d: got %#02x, want %#02x", i, len(got), got[i], want[i])
		}
	}
	return nil
}

// expectCode checks that err is a status with the given code.
func expectCode(err error, code codes.Code) error {
	if err == nil {
		return fmt.Errorf("call succeeded, want %s", code)
	}
	if got := status.Code(err); got != code {
		return fmt.Errorf("got %s (%v), want %s", got, err, code)
	}
	return nil
}

// expectEOF checks that a stream ended cleanly.
func expectEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	if err == nil {
		return errors.New("got an extra message, want end of stream")
	}
	return fmt.Errorf("want end of stream, got %w", err)
}

// withoutTransportKeys drops the keys a transport may add (see
// echo.IsTransportKey), so tunnels and plain HTTP/2 compare alike.
func withoutTransportKeys(md metadata.MD) metadata.MD {
	out := metadata.MD{}
	for k, vs := range md {
		if !echo.IsTransportKey(k) {
			out[k] = vs
		}
	}
	return out
}

// sameMetadata requires got to hold exactly the keys and values of want,
// values in order.
func sameMetadata(what string, got, want metadata.MD) error {
	keys := map[string]bool{}
	for k := range got {
		keys[k] = true
	}
	for k := range want {
		keys[k] = true
	}
	var diffs []string
	for k := range keys {
		if !slices.Equal(got[k], want[k]) {
			diffs = append(diffs, fmt.Sprintf("%s: got %q, want %q", k, got[k], want[k]))
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	sort.Strings(diffs)
	return fmt.Errorf("%s differ: %s", what, strings.Join(diffs, "; "))
}

// entries builds metadata entries from key/value pairs.
func entries(kv ...string) []*echopb.MetadataEntry {
	out := make([]*echopb.MetadataEntry, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &echopb.MetadataEntry{Key: kv[i], Value: []byte(kv[i+1])})
	}
	return out
}

// newTag returns a tag unique across processes and runs.
func newTag(kind string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return kind + "-" + hex.EncodeToString(b[:])
}

// binValue is a "-bin" metadata value: raw bytes that include controls,
// DEL and a two-byte UTF-8 sequence, but are valid UTF-8 as a whole (the
// tunnel carries them in a proto string, PROTOCOL.md P-57).
var binValue = string([]byte{0x00, 0x01, 0x7f, 'o', 'k', 0xc3, 0xa9})

// binValue2 is a second, different "-bin" value.
var binValue2 = string([]byte{0x02, 0x10, 't', 0xe2, 0x82, 0xac, 0x7f})
