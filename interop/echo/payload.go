package echo

import "grpctunnel-interop/echopb"

// Pattern returns n bytes where byte i is i % 251, the payload the proto
// prescribes for EchoRequest.response_size.
func Pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i % 251)
	}
	return b
}

// responsePayload is the payload answering req: the pattern when
// response_size is set, the echoed payload otherwise.
func responsePayload(req *echopb.EchoRequest) []byte {
	if n := req.GetResponseSize(); n != 0 {
		return Pattern(int(n))
	}
	return req.GetPayload()
}
