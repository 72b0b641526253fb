package main

import "grpctunnel-interop/roles"

// cmdReverseClient: open a reverse tunnel to --addr with "x-agent-key: K"
// and serve the echo service over it until stdin closes or the tunnel ends.
func cmdReverseClient(e *peerEnv, args []string) int {
	var c commonFlags
	var addr, key string
	fs := e.newFlagSet("reverse-client", &c, defaultServingTimeout)
	fs.StringVar(&addr, "addr", "", "HOST:PORT of the reverse-tunnel server")
	fs.StringVar(&key, "key", "", "value of the x-agent-key request header of the opening RPC")
	if err := parse(fs, args, required("addr", &addr), required("key", &key)); err != nil {
		e.logf("reverse-client: %v", err)
		return exitUsage
	}
	ctx, cancel := withTimeout(c.timeout)
	defer cancel()
	cl, err := roles.StartReverseClient(ctx, addr, key, c.opts)
	if err != nil {
		e.logf("reverse-client: %v", err)
		return exitFailed
	}
	go announceServing(e, cl)
	why := e.untilStopped(cl.Done(), c.timeout)
	if ctx.Err() != nil {
		why = "timeout"
	}
	return endReverseClient(e, cl, why)
}

// announceServing prints SERVING once the tunnel is established.
func announceServing(e *peerEnv, cl *roles.ReverseClient) {
	select {
	case <-cl.Ready():
		e.out.printf("SERVING")
	case <-cl.Done():
	}
}

// endReverseClient stops serving, prints ENDED and picks the exit code.
func endReverseClient(e *peerEnv, cl *roles.ReverseClient, why string) int {
	cl.Stop()
	started, err := cl.Result()
	e.logf("reverse-client: ended (%s), started=%v; WIRE %v", why, started, cl.Tap.Snapshot())
	if err != nil {
		e.out.printf("ENDED %s", oneLine(err.Error()))
	} else {
		e.out.printf("ENDED ok")
	}
	switch {
	case why == "timeout":
		return exitTimeout
	case err != nil || !started:
		return exitFailed
	default:
		return exitOK
	}
}
