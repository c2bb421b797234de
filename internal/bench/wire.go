package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/brownie/brownie-sidecar/internal/pgcluster"
)

// openSession opens a plaintext session to a pooler on addr as the Brownie
// role in the Brownie database: StartupMessage, then messages up to
// ReadyForQuery, then query (if not empty) up to the next ReadyForQuery. It
// returns the open, idle connection; the caller closes it. ctx bounds the
// whole exchange.
func openSession(ctx context.Context, addr, query string) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.StartupMessage{
		ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{
			"user":             pgcluster.BrownieRole,
			"database":         pgcluster.BrownieDatabase,
			"application_name": "brownie-bench",
		},
	})
	err = fe.Flush()
	if err == nil {
		err = readUntilReady(fe)
	}
	if err == nil && query != "" {
		fe.Send(&pgproto3.Query{String: query})
		if err = fe.Flush(); err == nil {
			err = readUntilReady(fe)
		}
	}
	if err == nil && !stop() {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, err
	}
	return conn, nil
}

// readUntilReady reads backend messages until ReadyForQuery. A FATAL error
// ends the session and is returned at once; an ERROR is returned after
// ReadyForQuery.
func readUntilReady(fe *pgproto3.Frontend) error {
	var firstErr error
	for {
		msg, err := fe.Receive()
		if err != nil {
			return errors.Join(firstErr, err)
		}
		switch m := msg.(type) {
		case *pgproto3.ReadyForQuery:
			return firstErr
		case *pgproto3.ErrorResponse:
			e := fmt.Errorf("%s %s: %s", m.Severity, m.Code, m.Message)
			if m.Severity == "FATAL" || m.Severity == "PANIC" {
				return e
			}
			if firstErr == nil {
				firstErr = e
			}
		case *pgproto3.AuthenticationCleartextPassword, *pgproto3.AuthenticationMD5Password,
			*pgproto3.AuthenticationSASL, *pgproto3.AuthenticationGSS:
			return fmt.Errorf("server asked for authentication (%T); expected trust", m)
		}
	}
}

// runQuery runs query as a simple Query on an open, idle session and reads
// up to its ReadyForQuery; ctx bounds the exchange.
func runQuery(ctx context.Context, conn net.Conn, query string) error {
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	fe := pgproto3.NewFrontend(conn, conn)
	fe.Send(&pgproto3.Query{String: query})
	err := fe.Flush()
	if err == nil {
		err = readUntilReady(fe)
	}
	if err == nil && !stop() {
		err = ctx.Err()
	}
	return err
}

// runOnSessions runs query on each of conns, rssConcurrency at a time,
// each given timeout, and returns the errors with their counts.
func runOnSessions(ctx context.Context, conns []net.Conn, query string, timeout time.Duration) map[string]int {
	var (
		mu   sync.Mutex
		errs = map[string]int{}
		wg   sync.WaitGroup
		sem  = make(chan struct{}, rssConcurrency)
	)
	for _, c := range conns {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			qctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			if err := runQuery(qctx, c, query); err != nil {
				mu.Lock()
				errs[err.Error()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs
}
