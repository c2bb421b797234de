package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// proc is a long-running child process (PgBouncer or the sidecar) whose
// output goes to a log file. stop is idempotent and safe to call after the
// process exited by itself.
type proc struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once Wait returned
	waitErr error         // valid after done

	stopOnce sync.Once
}

// startProc starts cmd with stdout and stderr appended to logPath. The child
// gets its own process group, so a Ctrl-C in the terminal reaches only this
// program, which then stops children in order; and it is killed by the
// kernel if this program dies without cleaning up.
func startProc(name string, cmd *exec.Cmd, logPath string) (*proc, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	cmd.Stdout, cmd.Stderr = f, f
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Setpgid = true
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.waitErr = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// pid returns the child's process id.
func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// exitError describes how the process ended, with the tail of its log.
func (p *proc) exitError() error {
	return fmt.Errorf("%s exited unexpectedly (%v); tail of %s:\n%s", p.name, p.waitErr, p.logPath, tail(p.logPath, 20))
}

// stop sends sig, waits up to grace for the process to exit and kills it
// otherwise. Only the first call does anything.
func (p *proc) stop(sig syscall.Signal, grace time.Duration) {
	p.stopOnce.Do(func() {
		if p.exited() {
			return
		}
		_ = p.cmd.Process.Signal(sig)
		select {
		case <-p.done:
		case <-time.After(grace):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// sidecarLog is what a sidecar wrote to its output: the structured log
// lines (it runs with LOG_LEVEL=warn, so every one is a warning or an
// error) and, separately, anything that is not a JSON log line.
type sidecarLog struct {
	lines        []string       // JSON log lines, the last maxLogLines
	linesDropped int            // earlier JSON lines not kept
	byMsg        map[string]int // JSON lines per "level msg"
	other        int            // non-JSON lines
	otherSample  []string       // the first few of them
}

const maxLogLines = 5

// readSidecarLog reads the byte range [from, to) of a sidecar's output
// file; to < 0 means up to the end.
func readSidecarLog(path string, from, to int64) sidecarLog {
	l := sidecarLog{byMsg: map[string]int{}}
	f, err := os.Open(path)
	if err != nil {
		l.other, l.otherSample = 1, []string{fmt.Sprintf("(cannot read %s: %v)", path, err)}
		return l
	}
	defer f.Close()
	if _, err := f.Seek(from, io.SeekStart); err != nil {
		l.other, l.otherSample = 1, []string{fmt.Sprintf("(cannot read %s: %v)", path, err)}
		return l
	}
	var r io.Reader = f
	if to >= 0 {
		r = io.LimitReader(f, to-from)
	}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		var entry struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
		}
		switch {
		case line == "":
		case json.Unmarshal([]byte(line), &entry) == nil && entry.Level != "":
			l.byMsg[entry.Level+" "+entry.Msg]++
			l.lines = append(l.lines, line)
			if len(l.lines) > maxLogLines {
				l.lines = l.lines[1:]
				l.linesDropped++
			}
		default:
			l.other++
			if len(l.otherSample) < 5 {
				l.otherSample = append(l.otherSample, line)
			}
		}
	}
	return l
}

// fileSize returns the size of path, 0 if unknown.
func fileSize(path string) int64 {
	fi, err := os.Stat(path)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// osUser is the OS account a server process runs as when this program is
// root (PostgreSQL and PgBouncer refuse to run as root).
type osUser struct {
	uid, gid int
	home     string
}

// serverUser returns the postgres OS user when running as root, nil
// otherwise.
func serverUser() (*osUser, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("running as root needs the OS user postgres to run PgBouncer: %w", err)
	}
	uid, err1 := strconv.Atoi(u.Uid)
	gid, err2 := strconv.Atoi(u.Gid)
	if err1 != nil || err2 != nil {
		return nil, fmt.Errorf("user postgres has a non-numeric uid or gid (%s:%s)", u.Uid, u.Gid)
	}
	return &osUser{uid: uid, gid: gid, home: u.HomeDir}, nil
}

// credential makes cmd run as u (no-op for nil).
func (u *osUser) apply(cmd *exec.Cmd) {
	if u == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Credential = &syscall.Credential{
		Uid: uint32(u.uid), Gid: uint32(u.gid), Groups: []uint32{uint32(u.gid)},
	}
}

// chown gives path to u (no-op for nil).
func (u *osUser) chown(path string) error {
	if u == nil {
		return nil
	}
	return os.Chown(path, u.uid, u.gid)
}

// cleanEnv returns a minimal environment: PATH, HOME and the given
// variables. Nothing else from this process leaks in, so a PGHOST or
// POOL_SIZE in the caller's shell cannot change what is measured.
func cleanEnv(home string, vars map[string]string) []string {
	path := os.Getenv("PATH")
	if path == "" {
		path = "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
	}
	if home == "" {
		home = os.Getenv("HOME")
	}
	env := []string{"PATH=" + path, "HOME=" + home, "LANG=C"}
	for k, v := range vars {
		env = append(env, k+"="+v)
	}
	return env
}

// freeAddr returns a loopback TCP address that was free a moment ago.
func freeAddr() (*net.TCPAddr, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr), nil
}
