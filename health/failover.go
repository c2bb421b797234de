package health

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
	"github.com/brownie/brownie-sidecar/router"
)

// replicationQuery reads a host's replication state through the
// SECURITY DEFINER function of deploy/sql/02_sidecar.sql: on a primary
// one row per walsender, on a standby one row naming itself.
const replicationQuery = `SELECT kind, name, state, sync_state FROM brownie_sidecar.replication_state()`

// syncInfo is what a shard's primary last reported about its standbys:
// the addresses of the hosts that were synchronous standbys (sync_state
// sync, streaming) and of those known to be standbys at all.
type syncInfo struct {
	primary string // the primary's address
	sync    map[string]bool
	known   map[string]bool
	at      time.Time
}

// readReplication runs replicationQuery on c and records the result in
// res. A server error (the function missing or not granted) is kept in
// res.ReplError and leaves the connection usable; other errors broke it.
func readReplication(c Conn, res *hostHealth) error {
	standbys := map[string]string{}
	self := ""
	err := c.Exec(replicationQuery, func(v [][]byte) {
		if len(v) != 4 || v[1] == nil {
			return
		}
		switch string(v[0]) {
		case "standby":
			if string(v[2]) == "streaming" {
				standbys[string(v[1])] = string(v[3])
			}
		case "self":
			self = string(v[1])
		}
	})
	var pe *pgerr.Error
	if errors.As(err, &pe) {
		res.ReplError = pe.Message
		return nil
	}
	if err != nil {
		return err
	}
	res.Standbys, res.StandbyName = standbys, self
	return nil
}

// standbyKind says what candidate was to the shard's failed primary
// failed at the last check that saw that primary: synchronous,
// asynchronous (a standby, not a synchronous one) or unknown. Called with
// h.mu held.
func (h *Checker) standbyKindLocked(shard, failed, candidate string) string {
	si, ok := h.syncOf[shard]
	switch {
	case !ok || si.primary != failed:
		return "unknown"
	case si.sync[candidate]:
		return "synchronous"
	case si.known[candidate]:
		return "asynchronous"
	}
	return "unknown"
}

// recordSyncLocked remembers which hosts of a synchronous shard primary
// reports as its synchronous standbys, and exports them. Called by
// publish with h.mu held, for a primary that answered.
func (h *Checker) recordSyncLocked(shard string, primary *hostHealth, hosts []*hostHealth) {
	if primary.ReplError != "" {
		if !h.replWarn[primary.Host.Addr] {
			h.replWarn[primary.Host.Addr] = true
			h.log.Warn("replication state unreadable", zap.String("shard", shard), zap.String("addr", primary.Host.Addr),
				zap.String("error", primary.ReplError),
				zap.String("hint", "apply deploy/sql/02_sidecar.sql (brownie_sidecar.replication_state()); until then no failover of this synchronous shard is accepted"))
		}
		return
	}
	delete(h.replWarn, primary.Host.Addr)
	si := syncInfo{primary: primary.Host.Addr, sync: map[string]bool{}, known: map[string]bool{}, at: primary.CheckedAt}
	for _, r := range hosts {
		if r == primary {
			continue
		}
		name := h.names[r.Host.Addr]
		if name == "" {
			continue
		}
		state, ok := primary.Standbys[name]
		if !ok {
			continue
		}
		r.SyncState = state
		si.known[r.Host.Addr] = true
		si.sync[r.Host.Addr] = state == "sync"
	}
	h.syncOf[shard] = si
	for _, r := range hosts {
		if r != primary {
			h.metrics.SyncStandby.WithLabelValues(shard, r.Host.Addr).Set(boolGauge(si.sync[r.Host.Addr]))
		}
	}
}

// WaitPrimary returns shard's primary as soon as the health checks report
// one answering: at once when they do now, unless it is failed (the host
// the caller could not reach), in which case only a round of checks
// started after the call counts. Meanwhile it asks for checks at once,
// and counts as waiting in the metrics and Status. It returns an error
// naming the shard and what is wrong with it when ctx ends first. Safe
// for concurrent use; it holds no lock while it waits.
func (h *Checker) WaitPrimary(ctx context.Context, shard string, failed router.Host) (router.Host, error) {
	after := h.started.Load()
	start := time.Now()
	h.mu.Lock()
	h.waiting[shard]++
	h.mu.Unlock()
	h.metrics.FailoverWaiting.WithLabelValues(shard).Inc()
	result := "resumed"
	defer func() {
		h.mu.Lock()
		if h.waiting[shard]--; h.waiting[shard] <= 0 {
			delete(h.waiting, shard)
		}
		h.mu.Unlock()
		h.metrics.FailoverWaiting.WithLabelValues(shard).Dec()
		h.metrics.FailoverWaits.WithLabelValues(shard, result).Inc()
		h.metrics.FailoverWaitSeconds.WithLabelValues(shard).Observe(time.Since(start).Seconds())
	}()
	h.Recheck()
	for {
		next := h.waitRound()
		if v := h.view.Load(); v != nil {
			sv := v.Shards[shard]
			if sv == nil {
				if _, ok := h.router.Map().Shard(shard); !ok {
					result = "timed_out"
					return router.Host{}, fmt.Errorf("shard %s is no longer in the shard map", shard)
				}
			} else if sv.PrimaryOK && (sv.Primary.Addr != failed.Addr || v.Round > after) {
				return sv.Primary, nil
			}
		}
		select {
		case <-next:
		case <-ctx.Done():
			result = "timed_out"
			if errors.Is(ctx.Err(), context.Canceled) {
				result = "canceled"
			}
			return router.Host{}, h.noPrimary(shard)
		}
	}
}

// noPrimary describes why shard has no primary now.
func (h *Checker) noPrimary(shard string) error {
	if v := h.view.Load(); v != nil {
		if sv := v.Shards[shard]; sv != nil && sv.Problem != "" {
			return errors.New(sv.Problem)
		}
	}
	return fmt.Errorf("no host of shard %s answers as a primary", shard)
}

// Standbys returns the standbys of shard that answered their last check
// and are not banned, in map order and whatever their lag: hosts that can
// greet a new session when the primaries cannot. Safe for concurrent use;
// it never blocks on I/O.
func (h *Checker) Standbys(shard string) []router.Host {
	v := h.view.Load()
	if v == nil || v.Shards[shard] == nil {
		return nil
	}
	now := time.Now()
	var out []router.Host
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, r := range v.Shards[shard].Hosts {
		if r.Up && r.InRecovery && !h.banned[r.Host.Addr].After(now) {
			out = append(out, r.Host)
		}
	}
	return out
}
