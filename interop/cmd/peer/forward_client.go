package main

import (
	"grpctunnel-interop/cases"
	"grpctunnel-interop/roles"
)

// cmdForwardClient: open a forward tunnel to --addr and run the case matrix.
func cmdForwardClient(e *peerEnv, args []string) int {
	var c commonFlags
	var addr string
	fs := e.newFlagSet("forward-client", &c, defaultTestTimeout)
	fs.StringVar(&addr, "addr", "", "HOST:PORT of the tunnel server")
	if err := parse(fs, args, required("addr", &addr)); err != nil {
		e.logf("forward-client: %v", err)
		return exitUsage
	}
	ctx, cancel := withTimeout(c.timeout)
	defer cancel()
	rep := cases.NewReporter(e.out)
	stats := roles.RunForwardClient(ctx, addr, c.opts, rep)
	e.logf("forward-client: WIRE %v", stats)
	return result(rep)
}

// result writes the RESULT line and maps it to the exit code.
func result(rep *cases.Reporter) int {
	if rep.Result() {
		return exitOK
	}
	return exitFailed
}
