package proxy

import (
	"net"
	"testing"

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
