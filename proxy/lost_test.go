package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/pool"
	"github.com/brownie/brownie-sidecar/router"
)

// A request routed to the session's idle upstream just before the relay
// found that upstream dead and detached it (for the session to go on with
// a new one) fails to be written; the client must hear of the loss, not
// find its connection closed without a word.
func TestAWriteToAnUpstreamDetachedAsLostReachesTheClientAsAnError(t *testing.T) {
	upClient, upServer := net.Pipe()
	defer upServer.Close()
	u := &upstream{conn: upClient, raw: upClient, target: router.Target{Shard: "shard-0", Host: router.Host{Addr: "127.0.0.1:5432"}}}
	p := pool.New(pool.Config{Size: 1}, func(context.Context) (*upstream, error) { return u, nil })
	defer p.Close()
	c, err := p.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}

	client, app := net.Pipe()
	defer client.Close()
	defer app.Close()
	srv := &Server{metrics: metrics.New(prometheus.NewRegistry())}
	ss := &session{srv: srv, log: sessionLog{base: zap.NewNop()}, client: client, up: c}
	ss.cond = sync.NewCond(&ss.mu)
	ss.cw = clientWriter{w: pooledWriter{dst: client}, conn: client}

	// The relay finds the idle upstream dead and detaches it.
	ss.mu.Lock()
	ss.detachLostLocked(c, errors.New("EOF"), "replaced", "idle upstream connection lost; the session goes on with a new one")
	// The session goroutine's write to it fails.
	ss.mu.Lock()
	werr := ss.upstreamWriteFailedLocked(net.ErrClosed)
	ss.mu.Unlock()

	got := make(chan pgproto3.BackendMessage, 1)
	go func() {
		fe := pgproto3.NewFrontend(app, app)
		_ = app.SetReadDeadline(time.Now().Add(5 * time.Second))
		msg, err := fe.Receive()
		if err != nil {
			got <- nil
			return
		}
		got <- msg
	}()
	ss.awaitLostReport(werr)
	msg := <-got
	e, ok := msg.(*pgproto3.ErrorResponse)
	if !ok || e.Severity != "FATAL" || e.Code != "08006" {
		t.Fatalf("the client got %#v, want FATAL 08006", msg)
	}
}
