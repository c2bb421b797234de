package proxy

import (
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/brownie/brownie-sidecar/internal/netx"
	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/internal/wire"
	"github.com/brownie/brownie-sidecar/router"
)

// A check whose read timed out says whether the server's bytes were
// waiting unread (the sidecar did not read in time) or not (the server
// did not answer), on real loopback sockets.
func TestATimedOutReadSaysWhetherTheServersAnswerWasWaiting(t *testing.T) {
	for _, answered := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			c, err := ln.Accept()
			if err != nil {
				accepted <- nil
				return
			}
			accepted <- c
		}()
		raw, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		server := <-accepted
		ln.Close()
		if server == nil {
			t.Fatal("accept failed")
		}
		conn := netx.WrapFast(raw)
		u := &upstream{conn: conn, raw: raw, r: wire.NewReader(conn, 4<<10),
			target: router.Target{Shard: "shard-0", Host: router.Host{Addr: ln.Addr().String()}}}

		if answered {
			// The start of an answer, then nothing: the read below must
			// find it waiting in the socket, where it arrived unread.
			if _, err := server.Write([]byte{'T', 0, 0}); err != nil {
				t.Fatal(err)
			}
			awaitReadable(t, raw)
		}
		_ = raw.SetReadDeadline(time.Unix(1, 0)) // the check's budget is spent before it reads
		err = u.exec("SELECT 1", nil)
		const note = "already waiting, unread"
		switch detail := pgerr.From(err).Detail; {
		case !strings.Contains(detail, "i/o timeout"):
			t.Errorf("answered %v: error %v, want a read timeout", answered, err)
		case answered && !strings.Contains(detail, note):
			t.Errorf("answered: detail %q does not say the answer was waiting", detail)
		case !answered && strings.Contains(detail, note):
			t.Errorf("not answered: detail %q says an answer was waiting", detail)
		}
		raw.Close()
		server.Close()
	}
}

// awaitReadable waits (up to 5 s) until c's socket has bytes to read,
// polling it without reading.
func awaitReadable(t *testing.T, c net.Conn) {
	t.Helper()
	rc, err := c.(syscall.Conn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	ready := false
	_ = rc.Control(func(fd uintptr) {
		var set syscall.FdSet
		set.Bits[fd/64] |= 1 << (fd % 64)
		tv := syscall.Timeval{Sec: 5}
		n, err := syscall.Select(int(fd)+1, &set, nil, nil, &tv)
		ready = err == nil && n == 1
	})
	if !ready {
		t.Fatal("the server's bytes never arrived")
	}
}
