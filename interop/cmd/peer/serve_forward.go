package main

import "grpctunnel-interop/roles"

// cmdServeForward: serve forward tunnels (and the echo service directly)
// until stdin closes.
func cmdServeForward(e *peerEnv, args []string) int {
	var c commonFlags
	fs := e.newFlagSet("serve-forward", &c, defaultServingTimeout)
	if err := parse(fs, args); err != nil {
		e.logf("serve-forward: %v", err)
		return exitUsage
	}
	srv, err := roles.StartForwardServer(c.opts)
	if err != nil {
		e.logf("serve-forward: %v", err)
		return exitFailed
	}
	e.out.printf("LISTENING %s", srv.Addr())
	why := e.untilStopped(nil, c.timeout)
	e.logf("serve-forward: stopping (%s); WIRE %v", why, srv.Tap.Snapshot())
	srv.Stop()
	if why == "timeout" {
		return exitTimeout
	}
	return exitOK
}
