package main

import (
	"errors"

	"grpctunnel-interop/cases"
	"grpctunnel-interop/roles"
)

// cmdReverseServer: accept --tunnels reverse tunnels, then run the case
// matrix through the pool of all tunnels and, with --key-header, through
// each key's pool.
func cmdReverseServer(e *peerEnv, args []string) int {
	var c commonFlags
	var tunnels int
	var keyHeader string
	fs := e.newFlagSet("reverse-server", &c, defaultTestTimeout)
	fs.IntVar(&tunnels, "tunnels", 0, "number of reverse tunnels to wait for (at least 1)")
	fs.StringVar(&keyHeader, "key-header", "", "request header of the opening RPC whose first value is the affinity key")
	positive := func() error {
		if tunnels < 1 {
			return errors.New("--tunnels must be at least 1")
		}
		return nil
	}
	if err := parse(fs, args, positive); err != nil {
		e.logf("reverse-server: %v", err)
		return exitUsage
	}
	srv, err := roles.StartReverseServer(c.opts, keyHeader)
	if err != nil {
		e.logf("reverse-server: %v", err)
		return exitFailed
	}
	defer srv.Stop()
	e.out.printf("LISTENING %s", srv.Addr())

	ctx, cancel := withTimeout(c.timeout)
	defer cancel()
	rep := cases.NewReporter(e.out)
	if err := srv.WaitTunnels(ctx, tunnels); err != nil {
		rep.Fail("tunnels", err)
		return result(rep)
	}
	e.logf("reverse-server: %d tunnels open, keys %q", srv.Tunnels(), srv.Keys())
	srv.RunMatrix(ctx, rep)
	e.logf("reverse-server: WIRE %v", srv.Tap.Snapshot())
	return result(rep)
}
