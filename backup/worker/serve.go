package worker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/brownie/brownie-sidecar/backup"
)

const usage = `usage: brownie-backup serve

brownie-backup is the backup worker of brownie-sidecar, which starts it for
each backup, restore and listing and talks to it over stdin and stdout (see
the package documentation of github.com/brownie/brownie-sidecar/backup).
It is not meant to be run by hand.
`

// Exit codes of the worker program.
const (
	ExitOK    = 0
	ExitFail  = 1
	ExitUsage = 2
)

// Main is the worker program: args[0] is the program name and the only
// command is "serve". It returns the exit code. ctx is cancelled to stop
// the operation (SIGTERM).
func Main(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	if len(args) != 2 || args[1] != "serve" {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	return Serve(ctx, stdin, stdout, stderr)
}

// maxLine bounds one protocol line read from the sidecar.
const maxLine = 16 << 20

// Serve runs the one operation the sidecar asks for on in (a
// backup.WorkerRequest line), answers on out (calls, then the result) and
// logs to logs as JSON lines. It returns ExitOK once it has written a
// result, failed operations included, and ExitFail when the protocol
// itself failed.
func Serve(ctx context.Context, in io.Reader, out io.Writer, logs io.Writer) int {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	if !sc.Scan() {
		fmt.Fprintf(logs, "{\"level\":\"error\",\"msg\":\"backup worker got no request\"}\n")
		return ExitFail
	}
	var req backup.WorkerRequest
	if err := json.Unmarshal(sc.Bytes(), &req); err != nil {
		fmt.Fprintf(logs, "{\"level\":\"error\",\"msg\":\"backup worker got an invalid request\"}\n")
		return ExitFail
	}
	log := newLogger(logs, req.LogLevel)
	defer func() { _ = log.Sync() }()
	p := &peer{ctx: ctx, in: sc, out: out}

	start := time.Now()
	now := time.Now
	if !req.Now.IsZero() {
		now = func() time.Time { return req.Now.Add(time.Since(start)) }
	}
	e, err := NewEngine(req.Config, Options{
		Log: log, Version: req.Version, Database: req.Database, User: req.User, SSLMode: req.SSLMode,
		Now: now, LockKey: req.LockKey, PGDump: req.PGDump, PGRestore: req.PGRestore,
		Shards: func() ([]backup.Shard, error) {
			rep, err := p.call(backup.CallShards)
			if err != nil {
				return nil, err
			}
			return rep.Shards, nil
		},
		Certs: func() (certPEM, keyPEM, caPEM []byte, err error) {
			rep, err := p.call(backup.CallCerts)
			if err != nil {
				return nil, nil, nil, err
			}
			return []byte(rep.CertPEM), []byte(rep.KeyPEM), []byte(rep.CAPEM), nil
		},
	})
	if err != nil {
		res := failed(err, req.Op == backup.OpCreate || req.Op == backup.OpScheduled, "")
		if req.Op == backup.OpScheduled {
			res.Outcome = backup.RunFailed
		}
		return p.result(res)
	}
	defer func() {
		if err := e.Close(); err != nil {
			log.Warn("backup destination close failed", zap.Error(err))
		}
	}()
	return p.result(e.serve(ctx, req))
}

// serve runs req's operation.
func (e *Engine) serve(ctx context.Context, req backup.WorkerRequest) *backup.WorkerResult {
	switch req.Op {
	case backup.OpCreate:
		return e.Create(ctx)
	case backup.OpScheduled:
		return e.Scheduled(ctx, req.Slot)
	case backup.OpList:
		list, err := e.List(ctx)
		if err != nil {
			return failed(err, false, "")
		}
		return &backup.WorkerResult{Manifests: list}
	case backup.OpGet:
		man, err := e.Get(ctx, req.Name)
		if err != nil {
			return failed(err, false, req.Name)
		}
		return &backup.WorkerResult{Manifest: man}
	case backup.OpRestore:
		if req.Restore == nil {
			return failed(errors.New("restore request missing"), false, "")
		}
		res, err := e.Restore(ctx, *req.Restore)
		out := &backup.WorkerResult{Restore: res}
		if err != nil {
			out.Error = backup.NewWorkerError(err, false, req.Restore.BackupName)
		}
		return out
	default:
		return failed(fmt.Errorf("unknown operation %q", req.Op), false, "")
	}
}

// peer is the worker's end of the protocol. call is safe for concurrent
// use: calls are serialised.
type peer struct {
	ctx context.Context // the operation's: a call gives up when it ends
	mu  sync.Mutex
	in  *bufio.Scanner
	out io.Writer
	// broken is set once a call gave up waiting: its reply may still come,
	// so no later reply can be trusted.
	broken bool
}

// call asks the sidecar for something and waits for its reply, or until
// the operation is cancelled.
func (p *peer) call(what string) (*backup.WorkerReply, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.broken {
		return nil, fmt.Errorf("ask the sidecar for %s: an earlier call was abandoned", what)
	}
	if err := p.write(backup.WorkerMessage{Call: what}); err != nil {
		return nil, fmt.Errorf("ask the sidecar for %s: %w", what, err)
	}
	type answer struct {
		line []byte
		err  error
	}
	ch := make(chan answer, 1)
	go func() {
		if !p.in.Scan() {
			err := p.in.Err()
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			ch <- answer{err: err}
			return
		}
		ch <- answer{line: bytes.Clone(p.in.Bytes())}
	}()
	var a answer
	select {
	case a = <-ch:
	case <-p.ctx.Done():
		p.broken = true // the reader stays blocked until the process exits
		return nil, fmt.Errorf("ask the sidecar for %s: %w", what, p.ctx.Err())
	}
	if a.err != nil {
		return nil, fmt.Errorf("ask the sidecar for %s: %w", what, a.err)
	}
	var rep backup.WorkerReply
	if err := json.Unmarshal(a.line, &rep); err != nil {
		return nil, fmt.Errorf("ask the sidecar for %s: invalid reply", what)
	}
	if rep.Error != "" {
		return nil, errors.New(rep.Error)
	}
	return &rep, nil
}

// result writes the operation's result and returns the exit code.
func (p *peer) result(res *backup.WorkerResult) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.write(backup.WorkerMessage{Result: res}); err != nil {
		return ExitFail
	}
	return ExitOK
}

func (p *peer) write(msg backup.WorkerMessage) error {
	line, err := json.Marshal(msg)
	if err != nil {
		return err
	}
	_, err = p.out.Write(append(line, '\n'))
	return err
}

// newLogger logs JSON lines (level, msg and fields; the sidecar adds the
// time and its own logger name when it relays them) at level and above.
func newLogger(w io.Writer, level string) *zap.Logger {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		lvl = zapcore.InfoLevel
	}
	enc := zapcore.NewJSONEncoder(zapcore.EncoderConfig{
		LevelKey: "level", MessageKey: "msg", NameKey: "logger",
		EncodeLevel: zapcore.LowercaseLevelEncoder, EncodeDuration: zapcore.SecondsDurationEncoder,
		LineEnding: zapcore.DefaultLineEnding,
	})
	return zap.New(zapcore.NewCore(enc, zapcore.Lock(zapcore.AddSync(w)), lvl))
}
