package wiretap

import (
	"testing"

	"github.com/jhump/grpctunnel/tunnelpb"
	"google.golang.org/protobuf/types/known/emptypb"
)

func envelope(id int64, size uint32, n int) *tunnelpb.ServerToClient {
	return &tunnelpb.ServerToClient{StreamId: id, Frame: &tunnelpb.ServerToClient_ResponseMessage{
		ResponseMessage: &tunnelpb.MessageData{Size: size, Data: make([]byte, n)}}}
}

func more(id int64, n int) *tunnelpb.ServerToClient {
	return &tunnelpb.ServerToClient{StreamId: id, Frame: &tunnelpb.ServerToClient_MoreResponseData{MoreResponseData: make([]byte, n)}}
}

func closeStream(id int64) *tunnelpb.ServerToClient {
	return &tunnelpb.ServerToClient{StreamId: id, Frame: &tunnelpb.ServerToClient_CloseStream{CloseStream: &tunnelpb.CloseStream{}}}
}

func TestCutMessages(t *testing.T) {
	tap := New()
	// stream 1: complete message then close: fine
	for _, f := range []any{envelope(1, 20, 10), more(1, 10), closeStream(1)} {
		tap.observe(f)
	}
	// stream 2: close after 10 of 20 bytes: cut
	for _, f := range []any{envelope(2, 20, 10), closeStream(2)} {
		tap.observe(f)
	}
	// stream 3: request cut by half_close
	tap.observe(&tunnelpb.ClientToServer{StreamId: 3, Frame: &tunnelpb.ClientToServer_RequestMessage{
		RequestMessage: &tunnelpb.MessageData{Size: 5, Data: []byte{1}}}})
	tap.observe(&tunnelpb.ClientToServer{StreamId: 3, Frame: &tunnelpb.ClientToServer_HalfClose{HalfClose: &emptypb.Empty{}}})
	// stream 4: empty message, then close
	tap.observe(envelope(4, 0, 0))
	tap.observe(closeStream(4))

	// stream 5: cancelled by the client; data still in flight, then close
	tap.observe(&tunnelpb.ClientToServer{StreamId: 5, Frame: &tunnelpb.ClientToServer_Cancel{Cancel: &emptypb.Empty{}}})
	tap.observe(envelope(5, 20, 10))
	tap.observe(closeStream(5))

	if st := tap.Snapshot(); st.Cut != 2 || st.Cancels != 1 {
		t.Errorf("cut=%d, want 2 (%v)", st.Cut, st)
	}
}
