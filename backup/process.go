package backup

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/internal/config"
)

// WorkerEnviron returns the worker's environment: environ without any
// variable of the sidecar's configuration (the worker receives its
// configuration, secrets included, on stdin), as sorted "KEY=value"
// strings. What remains (PATH, HOME, proxies, the clouds' own AWS_*,
// GOOGLE_* and AZURE_* variables) lets the clouds' default credential
// chains work in the worker as they would in the sidecar.
func WorkerEnviron(environ map[string]string) []string {
	drop := make(map[string]bool)
	for _, k := range config.Variables() {
		drop[k] = true
	}
	out := []string{}
	for k, v := range environ {
		if !drop[k] {
			out = append(out, k+"="+v)
		}
	}
	slices.Sort(out)
	return out
}

// maxWorkerLine bounds one line of the worker's output.
const maxWorkerLine = 64 << 20

// runWorker runs one operation in a new worker process and returns its
// result. It answers the worker's calls, relays its log, and stops it
// (SIGTERM, then SIGKILL after the grace period) when ctx ends. An error
// means the worker produced no result (it could not start, crashed or was
// stopped); the result's own Error is the operation's failure.
func (m *Manager) runWorker(ctx context.Context, req WorkerRequest) (*WorkerResult, error) {
	req.Config = m.cfg
	req.Database, req.User, req.SSLMode = m.database, m.user, m.sslMode
	req.Version = m.version
	req.LockKey = m.lockKey
	req.PGDump, req.PGRestore = m.pgDump, m.pgRestore
	req.Now = m.now()
	req.LogLevel = zapcore.LevelOf(m.log.Core()).String()
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}

	cmd := exec.CommandContext(ctx, m.worker, "serve")
	cmd.Env = m.workerEnv
	cmd.SysProcAttr = workerProcAttr()
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = m.grace
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	s := &workerSession{m: m, stdin: stdin}
	logs := &workerLog{log: m.log.Named("worker")}
	stdout := &lineWriter{line: s.handle}
	stderr := &lineWriter{line: logs.relay}
	cmd.Stdout, cmd.Stderr = stdout, stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start backup worker: %w", err)
	}
	s.reply(append(line, '\n'))
	werr := cmd.Wait()
	stdout.flush()
	stderr.flush()

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.result != nil {
		return s.result, nil
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("backup worker stopped: %w", context.Cause(ctx))
	}
	msg := "backup worker failed"
	switch {
	case s.err != nil:
		msg += ": " + s.err.Error()
	case werr != nil:
		msg += ": " + werr.Error()
	default:
		msg += ": it exited without a result"
	}
	if tail := logs.tail(); tail != "" {
		msg += ": " + tail
	}
	return nil, errors.New(msg)
}

// workerSession is the sidecar's end of one worker's protocol.
type workerSession struct {
	m     *Manager
	stdin io.WriteCloser

	mu     sync.Mutex
	result *WorkerResult
	err    error // the first protocol error
}

// handle answers one line of the worker's stdout. Lines come one at a
// time, from the goroutine copying the worker's stdout.
func (s *workerSession) handle(line []byte) {
	var msg WorkerMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		s.fail(errors.New("it wrote a line that is not a protocol message"))
		return
	}
	var rep WorkerReply
	switch {
	case msg.Result != nil:
		s.mu.Lock()
		s.result = msg.Result
		s.mu.Unlock()
		_ = s.stdin.Close()
		return
	case msg.Call == CallShards:
		rep.Shards = s.m.shards()
	case msg.Call == CallCerts:
		certPEM, keyPEM, caPEM, err := s.m.certs()
		if err != nil {
			rep.Error = "client certificate: " + err.Error()
		} else {
			rep.CertPEM, rep.KeyPEM, rep.CAPEM = string(certPEM), string(keyPEM), string(caPEM)
		}
	default:
		rep.Error = fmt.Sprintf("unknown call %q", msg.Call)
	}
	out, err := json.Marshal(rep)
	if err != nil {
		s.fail(err)
		return
	}
	s.reply(append(out, '\n'))
}

// reply writes one line to the worker's stdin. A worker that is gone
// fails its operation through its exit, not here.
func (s *workerSession) reply(line []byte) {
	if _, err := s.stdin.Write(line); err != nil && !errors.Is(err, syscall.EPIPE) && !errors.Is(err, io.ErrClosedPipe) {
		s.fail(fmt.Errorf("write to it: %w", err))
	}
}

func (s *workerSession) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.err == nil {
		s.err = err
	}
}

// workerLog relays the worker's zap log through the sidecar's logger and
// keeps the end of anything else it writes (a panic) for the error
// message.
type workerLog struct {
	log   *zap.Logger
	mu    sync.Mutex
	other []byte
}

// relay logs one line of the worker's stderr.
func (l *workerLog) relay(line []byte) {
	var entry map[string]any
	if err := json.Unmarshal(line, &entry); err != nil || entry["msg"] == nil {
		l.mu.Lock()
		l.other = append(l.other, line...)
		l.other = append(l.other, '\n')
		if len(l.other) > 4096 {
			l.other = slices.Clone(l.other[len(l.other)-4096:])
		}
		l.mu.Unlock()
		l.log.Warn("backup worker output", zap.ByteString("line", line))
		return
	}
	level := zapcore.InfoLevel
	if s, ok := entry["level"].(string); ok {
		if lv, err := zapcore.ParseLevel(s); err == nil {
			level = lv
		}
	}
	msg, _ := entry["msg"].(string)
	ce := l.log.Check(level, msg)
	if ce == nil {
		return
	}
	for _, k := range []string{"level", "msg", "ts", "time", "timestamp", "logger", "caller"} {
		delete(entry, k)
	}
	keys := make([]string, 0, len(entry))
	for k := range entry {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fields := make([]zap.Field, 0, len(keys))
	for _, k := range keys {
		fields = append(fields, zap.Any(k, entry[k]))
	}
	ce.Write(fields...)
}

// tail returns the end of the worker's non-log output on one line.
func (l *workerLog) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(strings.Fields(string(l.other)), " ")
}

// lineWriter calls line for each complete line written to it (without the
// newline); a line longer than maxWorkerLine is cut there. It is used by
// one goroutine at a time (os/exec's copy of a child's output).
type lineWriter struct {
	line func([]byte)
	buf  []byte
}

func (w *lineWriter) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			w.buf = append(w.buf, p...)
			if len(w.buf) > maxWorkerLine {
				w.flush()
			}
			break
		}
		w.buf = append(w.buf, p[:i]...)
		p = p[i+1:]
		w.flush()
	}
	return n, nil
}

// flush hands over what is buffered as a line, if anything.
func (w *lineWriter) flush() {
	if len(w.buf) == 0 {
		return
	}
	l := w.buf
	w.buf = nil
	w.line(l)
}
