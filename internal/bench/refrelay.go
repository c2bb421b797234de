package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/brownie/brownie-sidecar/internal/netx"
	"github.com/brownie/brownie-sidecar/internal/wire"
)

// refRelayCmd is the hidden first argument that turns the bench program
// into a reference relay (see runRefRelay); the bench starts itself that
// way so each relay is a process of its own whose CPU time can be read.
const refRelayCmd = "reference-relay"

// Reference relay kinds.
const (
	refPipe = "go-pipe"
	refLoop = "go-loop"
)

// refKinds are the session-mode reference relays; refTxLoop (txloop.go)
// is the transaction-mode one.
var refKinds = []string{refPipe, refLoop}

// runRefRelay runs a reference relay until it is killed: the least a Go
// proxy must do to carry pgbench to PostgreSQL with the client certificate
// upstream, and nothing more. It answers SSLRequest and GSSENCRequest with
// 'N', opens a verify-full TLS connection to the server for each client,
// forwards the StartupMessage and then copies bytes both ways without
// looking at them: no parsing, pooling, routing, metrics or cancel. It
// measures the ceiling of a design, so the sidecar's ratio to PgBouncer
// can be read against what Go itself reaches on the same machine in the
// same run.
//
//   - go-pipe: two goroutines per client copying through netx.WrapFast
//     sockets (the sidecar's model).
//   - go-loop: one goroutine serving every client from a level-triggered
//     epoll set, as PgBouncer's event loop does, parking in the Go poller
//     only when no socket is ready.
//
// Not for production: no timeouts, and go-loop waits for a full socket
// buffer in the loop, stalling every client.
func runRefRelay(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet(refRelayCmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	kind := fs.String("kind", refPipe, "go-pipe, go-loop or go-txloop")
	poolSize := fs.Int("pool", 10, "go-txloop: upstream connections")
	listen := fs.String("listen", "127.0.0.1:0", "client address")
	upstream := fs.String("upstream", "", "PostgreSQL host:port (TLS, verify-full)")
	certs := fs.String("certs", "", "directory with ca.crt, client.crt, client.key")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	cfg, err := refTLSConfig(*certs, *upstream)
	if err != nil {
		fmt.Fprintln(stderr, "reference relay:", err)
		return exitUsage
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(stderr, "reference relay:", err)
		return exitFail
	}
	if err := serveRefRelay(ln, *kind, *upstream, cfg, *poolSize, func(err error) { fmt.Fprintln(stderr, "reference relay:", err) }); err != nil {
		fmt.Fprintln(stderr, "reference relay:", err)
		return exitFail
	}
	return exitOK
}

// serveRefRelay serves clients from ln until ln is closed, then stops the
// loop (go-loop), closing the clients it holds; go-pipe clients end when
// they or the server close. logf hears each client's failure.
func serveRefRelay(ln net.Listener, kind, upstream string, cfg *tls.Config, poolSize int, logf func(error)) error {
	var l *epollLoop
	var txp *txPool
	switch kind {
	case refTxLoop:
		txp = newTxPool(upstream, cfg, poolSize)
		defer txp.stop()
	case refPipe:
	case refLoop:
		var err error
		if l, err = newEpollLoop(); err != nil {
			return err
		}
		defer l.stop()
	default:
		return fmt.Errorf("unknown -kind %q", kind)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		c, err := ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return nil
		}
		if err != nil {
			return err
		}
		wg.Go(func() {
			serve := func() error { return refServe(c, upstream, cfg, l) }
			if txp != nil {
				serve = func() error { return txp.serve(c) }
			}
			if err := serve(); err != nil {
				logf(err)
			}
		})
	}
}

func refTLSConfig(dir, upstream string) (*tls.Config, error) {
	host, _, err := net.SplitHostPort(upstream)
	if err != nil {
		return nil, fmt.Errorf("-upstream: %w", err)
	}
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "client.crt"), filepath.Join(dir, "client.key"))
	if err != nil {
		return nil, err
	}
	ca, err := os.ReadFile(filepath.Join(dir, "ca.crt"))
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca) {
		return nil, errors.New("ca.crt holds no certificate")
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: roots, ServerName: host, MinVersion: tls.VersionTLS12}, nil
}

// refServe takes one client through startup and hands it to the pipe
// goroutines or to the loop l (nil for go-pipe).
func refServe(c net.Conn, upstream string, cfg *tls.Config, l *epollLoop) error {
	startup, err := refReadStartup(c)
	if err != nil {
		c.Close()
		return err
	}
	raw, sw, up, err := refDial(upstream, cfg, startup)
	if err != nil {
		c.Close()
		return err
	}
	closeBoth := func() { c.Close(); raw.Close() }
	if l == nil {
		cc := netx.WrapFast(c)
		var once sync.Once
		stop := func() { once.Do(closeBoth) }
		go func() { refCopy(cc, up); stop() }()
		refCopy(up, cc)
		stop()
		return nil
	}
	cfd, err := rawFD(c)
	if err != nil {
		closeBoth()
		return err
	}
	ufd, err := rawFD(raw)
	if err != nil {
		closeBoth()
		return err
	}
	sw.nb = &nbConn{fd: ufd}
	l.add(&loopPair{client: c, upRaw: raw, cfd: cfd, up: up, nb: sw.nb})
	return nil
}

// refDial opens a verify-full TLS connection to the server through the
// PostgreSQL SSLRequest and sends it startup. The TLS connection runs over
// sw, blocking until sw.nb is set for an event loop; raw is for closing.
func refDial(upstream string, cfg *tls.Config, startup []byte) (raw net.Conn, sw *switchConn, up *tls.Conn, err error) {
	if raw, err = net.Dial("tcp", upstream); err != nil {
		return nil, nil, nil, err
	}
	var answer [1]byte
	if _, err = raw.Write(wire.SSLRequest()); err == nil {
		if _, err = io.ReadFull(raw, answer[:]); err == nil && answer[0] != 'S' {
			err = fmt.Errorf("server refused TLS (%q)", answer[0])
		}
	}
	if err == nil {
		sw = &switchConn{Conn: netx.WrapFast(raw)}
		up = tls.Client(sw, cfg)
		if err = up.Handshake(); err == nil {
			_, err = up.Write(startup)
		}
	}
	if err != nil {
		raw.Close()
		return nil, nil, nil, err
	}
	return raw, sw, up, nil
}

// refReadStartup answers SSLRequest and GSSENCRequest with 'N' and returns
// the StartupMessage.
func refReadStartup(c net.Conn) ([]byte, error) {
	for {
		pkt, err := wire.ReadPacket(c)
		if err != nil {
			return nil, err
		}
		switch binary.BigEndian.Uint32(pkt[4:8]) {
		case wire.CodeSSL, wire.CodeGSSEnc:
			if _, err := c.Write([]byte{'N'}); err != nil {
				return nil, err
			}
			continue
		}
		return pkt, nil
	}
}

func refCopy(dst io.Writer, src io.Reader) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func rawFD(c net.Conn) (int, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return 0, fmt.Errorf("%T has no descriptor", c)
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return 0, err
	}
	fd := -1
	if err := rc.Control(func(f uintptr) { fd = int(f) }); err != nil {
		return 0, err
	}
	return fd, nil
}

// switchConn is the upstream socket under tls.Conn: blocking (through the Go
// poller) for the handshake, then non-blocking for the loop once nb is set.
type switchConn struct {
	net.Conn
	nb *nbConn
}

func (s *switchConn) Read(p []byte) (int, error) {
	if s.nb != nil {
		return s.nb.Read(p)
	}
	return s.Conn.Read(p)
}

func (s *switchConn) Write(p []byte) (int, error) {
	if s.nb != nil {
		return s.nb.Write(p)
	}
	return s.Conn.Write(p)
}

// errWouldBlock tells tls.Conn that no more bytes are there yet; as a
// temporary net.Error it leaves the connection usable, keeping a partial
// record for the next Read.
var errWouldBlock error = wouldBlock{}

type wouldBlock struct{}

func (wouldBlock) Error() string   { return "would block" }
func (wouldBlock) Timeout() bool   { return true }
func (wouldBlock) Temporary() bool { return true }

// nbConn reads a non-blocking descriptor for the loop: a read happens only
// after epoll reported the socket readable (ready), and a short read means
// the socket is drained, so the loop makes no read that finds nothing.
type nbConn struct {
	fd    int
	ready bool
}

func (c *nbConn) Read(p []byte) (int, error) {
	if !c.ready {
		return 0, errWouldBlock
	}
	n, err := rawRead(c.fd, p)
	switch {
	case errors.Is(err, syscall.EAGAIN):
		c.ready = false
		return 0, errWouldBlock
	case err != nil:
		return 0, err
	case n == 0:
		return 0, io.EOF
	}
	if n < len(p) {
		c.ready = false
	}
	return n, nil
}

func (c *nbConn) Write(p []byte) (int, error) {
	if err := rawWriteAll(c.fd, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func rawRead(fd int, p []byte) (int, error) {
	n, e := netx.RawRead(uintptr(fd), p)
	if e != 0 {
		return 0, e
	}
	return n, nil
}

// rawWriteAll writes all of p, waiting in poll(2) (blocking the loop) when
// the socket buffer is full.
func rawWriteAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, e := netx.RawWrite(uintptr(fd), p)
		switch e {
		case 0:
			p = p[n:]
		case syscall.EAGAIN:
			pfd := struct {
				fd             int32
				events, revent int16
			}{fd: int32(fd), events: 0x4} // POLLOUT
			_, _, _ = syscall.Syscall(syscall.SYS_POLL, uintptr(unsafe.Pointer(&pfd)), 1, uintptr(time.Second.Milliseconds()))
		default:
			return e
		}
	}
	return nil
}

// loopPair is one client and its upstream, served by the loop.
type loopPair struct {
	client, upRaw net.Conn // kept for closing
	cfd           int
	up            *tls.Conn
	nb            *nbConn
}

// epollLoop is go-loop's event loop: one goroutine and one epollSet.
// Pairs arrive on a channel with a notify.
type epollLoop struct {
	set     *epollSet
	pending chan *loopPair
	byFD    map[int]*loopPair // loop goroutine only
	buf     []byte            // loop goroutine only
}

func newEpollLoop() (*epollLoop, error) {
	set, err := newEpollSet()
	if err != nil {
		return nil, err
	}
	l := &epollLoop{set: set, pending: make(chan *loopPair, 256), byFD: map[int]*loopPair{}, buf: make([]byte, 32<<10)}
	go set.run(l.admit, l.ready, func() {
		for fd, p := range l.byFD {
			if fd == p.cfd {
				p.close() // the epoll set is gone with its descriptor
			}
		}
	})
	return l, nil
}

// stop ends the loop and closes every client it holds. Call once, after
// the last add.
func (l *epollLoop) stop() {
	l.set.close(true)
	for len(l.pending) > 0 {
		(<-l.pending).close()
	}
}

func (l *epollLoop) add(p *loopPair) {
	l.pending <- p
	l.set.notify()
}

func (l *epollLoop) ready(fd int) {
	switch p := l.byFD[fd]; {
	case p == nil:
	case fd == p.cfd:
		l.fromClient(p, l.buf)
	default:
		l.fromServer(p, l.buf)
	}
}

func (l *epollLoop) admit() {
	for {
		select {
		case p := <-l.pending:
			l.byFD[p.cfd], l.byFD[p.nb.fd] = p, p
			if err := l.set.watch(p.cfd); err != nil {
				l.drop(p)
			} else if err := l.set.watch(p.nb.fd); err != nil {
				l.drop(p)
			}
		default:
			return
		}
	}
}

func (l *epollLoop) fromClient(p *loopPair, buf []byte) {
	n, err := rawRead(p.cfd, buf)
	switch {
	case errors.Is(err, syscall.EAGAIN):
		return
	case err != nil || n == 0:
		l.drop(p)
		return
	}
	if _, err := p.up.Write(buf[:n]); err != nil {
		l.drop(p)
	}
}

func (l *epollLoop) fromServer(p *loopPair, buf []byte) {
	p.nb.ready = true
	for {
		n, err := p.up.Read(buf)
		if n > 0 && rawWriteAll(p.cfd, buf[:n]) != nil {
			l.drop(p)
			return
		}
		if errors.Is(err, errWouldBlock) {
			return
		}
		if err != nil {
			l.drop(p)
			return
		}
	}
}

func (l *epollLoop) drop(p *loopPair) {
	for _, fd := range []int{p.cfd, p.nb.fd} {
		l.set.unwatch(fd)
		delete(l.byFD, fd)
	}
	p.close()
}

func (p *loopPair) close() {
	p.client.Close()
	p.upRaw.Close()
}

// refRelayProcs is the GOMAXPROCS of the reference relays: the sidecars'
// (from -sidecar-env), else one, the thread count the sidecar starts with,
// so a control and the sidecar it bounds schedule their goroutines on as
// many threads (the sidecar adds threads only while its goroutines wait).
func refRelayProcs(sidecarEnv map[string]string) string {
	if v, ok := sidecarEnv["GOMAXPROCS"]; ok {
		return v
	}
	return "1"
}

// startRefRelay starts this program as the reference relay kind (a
// process of its own, so its CPU time is measured like a pooler's) in
// front of the benchmark's PostgreSQL and waits until a session works
// through it.
func (b *bench) startRefRelay(ctx context.Context, kind string, poolSize int) (*proc, *net.TCPAddr, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, nil, err
	}
	addr, err := freeAddr()
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(self, refRelayCmd, "-kind", kind, "-listen", addr.String(), "-pool", strconv.Itoa(poolSize),
		"-upstream", net.JoinHostPort("localhost", strconv.Itoa(b.pg.Port())), "-certs", b.certDir)
	cmd.Env = cleanEnv("", map[string]string{"GOMAXPROCS": refRelayProcs(b.opts.sidecarEnv)})
	b.logf("starting reference relay %s on %s", kind, addr)
	p, err := startProc(kind, cmd, filepath.Join(b.dir, kind+".log"))
	if err != nil {
		return nil, nil, err
	}
	b.onCleanup(func() { p.stop(syscall.SIGTERM, 5*time.Second) })
	if err := waitSession(ctx, p, addr.String(), 30*time.Second); err != nil {
		return nil, nil, fmt.Errorf("%s: %w", kind, err)
	}
	return p, addr, nil
}
