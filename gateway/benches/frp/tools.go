//go:build tools

// Package tools pins frp (fatedier/frp), the tunnel the gateway bench
// compares the gateway with: `go build` here builds its `frps` and `frpc`.
package tools

import (
	_ "github.com/fatedier/frp/cmd/frpc"
	_ "github.com/fatedier/frp/cmd/frps"
)
