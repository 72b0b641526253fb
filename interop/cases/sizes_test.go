package cases

import "testing"

// Every size of the sizes case but 0 and 1 gets an exact-wire-size call.
func TestExactSizeRequest(t *testing.T) {
	for _, n := range Sizes {
		_, _, ok := exactSizeRequest(n)
		if ok != (n > 1) {
			t.Errorf("size %d: exact request found=%v, want %v", n, ok, n > 1)
		}
	}
}

// Names are unique and free of the characters the line protocol reserves.
func TestNames(t *testing.T) {
	seen := map[string]bool{}
	for _, name := range Names() {
		if seen[name] {
			t.Errorf("duplicate case %q", name)
		}
		seen[name] = true
		for _, r := range name {
			if r == ' ' || r == ':' || r == '/' {
				t.Errorf("case %q contains %q", name, r)
			}
		}
	}
	if len(seen) != 16 {
		t.Errorf("%d cases, want 16", len(seen))
	}
}
