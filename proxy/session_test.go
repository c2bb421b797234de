package proxy

import (
	"net"
	"testing"
	"unsafe"

	"go.uber.org/zap/zapcore"
)

func TestSessionLogFieldsNameThePeerAndTheClientPidOnceRegistered(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	ss := &session{}
	f := sessionFields{ss: ss, conn: a}
	enc := zapcore.NewMapObjectEncoder()
	if err := f.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if _, ok := enc.Fields["client_pid"]; ok || enc.Fields["peer"] != "pipe" {
		t.Fatalf("before registration: %v; want only peer=pipe", enc.Fields)
	}
	ss.pid = 4242
	enc = zapcore.NewMapObjectEncoder()
	if err := f.MarshalLogObject(enc); err != nil {
		t.Fatal(err)
	}
	if enc.Fields["client_pid"] != uint32(4242) || enc.Fields["peer"] != "pipe" {
		t.Fatalf("after registration: %v; want peer=pipe and client_pid=4242", enc.Fields)
	}
}

// A large share of an idle client's heap is its session struct, allocated
// in the smallest size class that holds it: a field that pushes it past
// maxSessionSize costs every client 256 bytes, so the budget is a
// decision, not an accident. Put new small fields beside the others (a
// bool between two pointers takes eight bytes).
func TestSessionFitsItsSizeClass(t *testing.T) {
	if n := unsafe.Sizeof(session{}); n > maxSessionSize {
		t.Fatalf("session is %d bytes, over its %d-byte size class", n, maxSessionSize)
	}
}
