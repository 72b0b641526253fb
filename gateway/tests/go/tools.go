//go:build tools

// Package tools pins the Go programs the gateway's end-to-end tests build
// from the module proxy: grpc-go's interop client and server, and grpcurl.
package tools

import (
	_ "github.com/fullstorydev/grpcurl/cmd/grpcurl"
	_ "google.golang.org/grpc/interop/client"
	_ "google.golang.org/grpc/interop/server"
)
