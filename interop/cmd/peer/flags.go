package main

import (
	"flag"
	"fmt"
	"time"

	"grpctunnel-interop/roles"
)

// Default overall bounds.
const (
	defaultTestTimeout    = 120 * time.Second // forward-client, reverse-server
	defaultServingTimeout = 10 * time.Minute  // serve-forward, reverse-client
)

// commonFlags are the flags every role takes.
type commonFlags struct {
	opts    roles.Options
	timeout time.Duration
}

// newFlagSet returns a flag set with the common flags registered.
func (e *peerEnv) newFlagSet(name string, c *commonFlags, timeout time.Duration) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.log)
	fs.BoolVar(&c.opts.NoFlowControl, "no-flow-control", false,
		"disable flow control with the Go reference's own option (Settings lists only REVISION_ZERO)")
	fs.BoolVar(&c.opts.NoNegotiate, "no-negotiate", false,
		"emulate a revision-zero (v0.2.0) peer: strip grpctunnel-negotiate from the opening RPC")
	fs.DurationVar(&c.timeout, "timeout", timeout, "overall bound of this subcommand")
	return fs
}

// parse parses args, rejecting positional arguments, then runs the checks.
func parse(fs *flag.FlagSet, args []string, checks ...func() error) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	for _, check := range checks {
		if err := check(); err != nil {
			return err
		}
	}
	return nil
}

// required returns a check that a string flag was given.
func required(name string, value *string) func() error {
	return func() error {
		if *value == "" {
			return fmt.Errorf("--%s is required", name)
		}
		return nil
	}
}
