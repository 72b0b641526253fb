package echo

import (
	"context"
	"sort"
	"strings"

	"google.golang.org/grpc/metadata"

	"grpctunnel-interop/echopb"
)

// IsTransportKey reports whether a metadata key belongs to the transport
// rather than to the application: pseudo-headers, host, content-type,
// user-agent, te and every grpc-* key. These are never echoed back.
func IsTransportKey(key string) bool {
	switch key {
	case ":authority", "host", "content-type", "user-agent", "te":
		return true
	}
	return strings.HasPrefix(key, ":") || strings.HasPrefix(key, "grpc-")
}

// ToEntries converts metadata into entries, one per value, keys sorted,
// values kept in order, transport keys skipped. For "-bin" keys grpc-go
// already holds the decoded raw bytes, which are copied as they are.
func ToEntries(md metadata.MD) []*echopb.MetadataEntry {
	keys := make([]string, 0, len(md))
	for k := range md {
		if !IsTransportKey(k) {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	var out []*echopb.MetadataEntry
	for _, k := range keys {
		for _, v := range md[k] {
			out = append(out, &echopb.MetadataEntry{Key: k, Value: []byte(v)})
		}
	}
	return out
}

// FromEntries converts entries into metadata, keeping the order of values
// for each key. Values of "-bin" keys are raw bytes; grpc-go encodes them.
func FromEntries(entries []*echopb.MetadataEntry) metadata.MD {
	md := metadata.MD{}
	for _, e := range entries {
		md.Append(e.GetKey(), string(e.GetValue()))
	}
	return md
}

// incomingEntries is the request metadata the handler saw, as entries.
func incomingEntries(ctx context.Context) []*echopb.MetadataEntry {
	md, _ := metadata.FromIncomingContext(ctx)
	return ToEntries(md)
}
