package proxy

import (
	"context"
	"fmt"

	"github.com/brownie/brownie-sidecar/health"
)

// The two-phase recovery (package twophase) runs beside the server's
// pools; it and the merges' catalog reads use the sidecar's own
// connections to the shards' primaries.

// startTwoPhaseRecovery runs the two-phase recovery until ctx ends.
func (s *Server) startTwoPhaseRecovery(ctx context.Context) {
	s.poolWG.Add(1)
	go func() {
		defer s.poolWG.Done()
		s.twoPhase.Run(ctx)
	}()
}

// onPrimary runs fn on the sidecar's own connection to shard's current
// primary (see health.Checker.OnHost).
func (s *Server) onPrimary(ctx context.Context, shard string, fn func(health.Conn) error) error {
	t, ok := s.primaryTarget(shard)
	if !ok {
		return fmt.Errorf("shard %s is not in the shard map", shard)
	}
	return s.health.OnHost(ctx, t, fn)
}

// DialPrimary opens a connection of its own to shard's current primary,
// authenticated as the sidecar, with application_name appName, outside
// every pool. The caller owns it and must close it; it may be used from
// one goroutine at a time.
func (s *Server) DialPrimary(ctx context.Context, shard, appName string) (health.Conn, error) {
	t, ok := s.primaryTarget(shard)
	if !ok {
		return nil, fmt.Errorf("shard %s has no known primary", shard)
	}
	u, err := s.dialer.dialAs(ctx, t, appName)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return u, nil
}
