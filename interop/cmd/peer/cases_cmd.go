package main

import (
	"strings"

	"grpctunnel-interop/cases"
)

// cmdCases lists the case names, one per line, in the order they run.
func cmdCases(e *peerEnv) int {
	for _, name := range cases.Names() {
		e.out.printf("%s", name)
	}
	return exitOK
}

// oneLine flattens a message to one line.
func oneLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r", " "), "\n", " | ")
}
