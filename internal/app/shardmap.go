package app

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
	"go.uber.org/zap"

	"github.com/brownie/brownie-sidecar/internal/config"
	"github.com/brownie/brownie-sidecar/internal/metrics"
	"github.com/brownie/brownie-sidecar/router"
)

// newRouter builds the router from SHARD_MAP_FILE, or, without one, from a
// one-shard map whose primary is DB_HOST:DB_PORT and which holds every
// table.
func newRouter(cfg config.Config) (*router.Router, []byte, error) {
	if cfg.Routing.ShardMapFile == "" {
		rt, err := router.New(&router.Map{
			Shards: []router.Shard{{
				Name:    "shard-0",
				Primary: router.Host{Addr: net.JoinHostPort(cfg.DB.Host, strconv.Itoa(cfg.DB.Port)), ServerName: cfg.DB.ServerName},
			}},
			Unlisted: router.UnlistedReplicated,
		})
		return rt, nil, err
	}
	data, m, err := readMap(cfg.Routing.ShardMapFile)
	if err != nil {
		return nil, nil, err
	}
	rt, err := router.New(m)
	if err != nil {
		return nil, nil, fmt.Errorf("SHARD_MAP_FILE %s: %w", cfg.Routing.ShardMapFile, err)
	}
	return rt, data, nil
}

func readMap(file string) ([]byte, *router.Map, error) {
	data, err := os.ReadFile(file)
	if err != nil {
		return nil, nil, fmt.Errorf("SHARD_MAP_FILE: %w", err)
	}
	m, err := router.ParseMap(data)
	if err != nil {
		return data, nil, fmt.Errorf("SHARD_MAP_FILE %s: %w", file, err)
	}
	return data, m, nil
}

// mapWatcher reloads the shard map file when it changes. A file that does
// not parse or validate is refused: the router keeps its map, and the
// refusal shows in logs, metrics and readiness until a good file arrives.
type mapWatcher struct {
	file    string
	rt      *router.Router
	log     *zap.Logger
	metrics *metrics.Metrics

	mu      sync.Mutex
	sum     [32]byte // of the file content in use
	lastErr error
}

func newMapWatcher(file string, data []byte, rt *router.Router, log *zap.Logger, m *metrics.Metrics) *mapWatcher {
	return &mapWatcher{file: file, rt: rt, log: log, metrics: m, sum: sha256.Sum256(data)}
}

// Ready returns the reason the file on disk is refused, or nil.
func (w *mapWatcher) Ready() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.lastErr != nil {
		return fmt.Errorf("shard map file refused, previous map still serving: %v", w.lastErr)
	}
	return nil
}

// Run watches the map file's directory (Kubernetes swaps ConfigMap files by
// renaming a symlink) until ctx ends.
func (w *mapWatcher) Run(ctx context.Context) error {
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	defer fw.Close()
	if err := fw.Add(filepath.Dir(w.file)); err != nil {
		return fmt.Errorf("watching %s: %w", filepath.Dir(w.file), err)
	}
	// Events come in bursts (write, chmod, rename); reload once they settle.
	var settle <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-fw.Events:
			if !ok {
				return errors.New("shard map watcher closed")
			}
			_ = ev
			settle = time.After(100 * time.Millisecond)
		case err, ok := <-fw.Errors:
			if !ok {
				return errors.New("shard map watcher closed")
			}
			w.log.Warn("shard map watch error", zap.Error(err))
		case <-settle:
			settle = nil
			w.reload()
		}
	}
}

// reload reads the file and swaps the router's map when the content
// changed and is valid.
func (w *mapWatcher) reload() {
	data, m, err := readMap(w.file)
	if data == nil && err != nil && errors.Is(err, os.ErrNotExist) {
		return // mid-swap; the next event brings the new file
	}
	sum := sha256.Sum256(data)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err == nil && bytes.Equal(sum[:], w.sum[:]) && w.lastErr == nil {
		return
	}
	if err == nil {
		err = w.rt.Swap(m)
	}
	if err != nil {
		w.lastErr = err
		w.metrics.ShardMapReloads.WithLabelValues("invalid").Inc()
		w.metrics.ShardMapValid.Set(0)
		w.log.Error("shard map refused", zap.String("file", w.file), zap.Error(err))
		return
	}
	w.sum, w.lastErr = sum, nil
	w.metrics.ShardMapReloads.WithLabelValues("ok").Inc()
	w.metrics.ShardMapValid.Set(1)
	w.log.Info("shard map reloaded", zap.String("file", w.file), zap.Strings("shards", m.ShardNames()),
		zap.Int("overrides", len(m.Overrides)))
}
