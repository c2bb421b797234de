package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The kinds of system call the system-call table counts.
const (
	sysRead = iota
	sysWrite
	sysWait
	sysKinds
)

// sysEvents are the syscall tracepoints perf counts, each with its kind.
var sysEvents = []struct {
	name string
	kind int
}{
	{"syscalls:sys_enter_read", sysRead},
	{"syscalls:sys_enter_recvfrom", sysRead},
	{"syscalls:sys_enter_write", sysWrite},
	{"syscalls:sys_enter_sendto", sysWrite},
	{"syscalls:sys_enter_epoll_wait", sysWait},
	{"syscalls:sys_enter_epoll_pwait", sysWait},
}

// sysCounts are the system calls of one process over a run, by kind:
// reads, writes and epoll waits.
type sysCounts [sysKinds]int64

// perTx returns c per transaction of the processed ones (more than 0):
// reads, writes and waits.
func (c sysCounts) perTx(processed int64) (reads, writes, waits float64) {
	n := float64(processed)
	return float64(c[sysRead]) / n, float64(c[sysWrite]) / n, float64(c[sysWait]) / n
}

// parsePerfStat returns the counts of `perf stat -x,` output b (comment
// lines and blank lines are skipped; events other than sysEvents are
// ignored). Every event of sysEvents must appear with a count: one that
// perf did not count (`<not counted>`, `<not supported>`) is an error, not
// a zero.
func parsePerfStat(b []byte) (sysCounts, error) {
	var c sysCounts
	seen := make([]bool, len(sysEvents))
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		// value, unit, event, run time, percentage, metric value, metric unit
		f := strings.Split(line, ",")
		if len(f) < 3 {
			return sysCounts{}, fmt.Errorf("perf stat line %q: too few fields", line)
		}
		for i, ev := range sysEvents {
			if f[2] != ev.name {
				continue
			}
			n, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return sysCounts{}, fmt.Errorf("perf stat: %s: %s", ev.name, f[0])
			}
			c[ev.kind] += n
			seen[i] = true
		}
	}
	for i, ev := range sysEvents {
		if !seen[i] {
			return sysCounts{}, fmt.Errorf("perf stat: no count of %s", ev.name)
		}
	}
	return c, nil
}

// perfStat is a running `perf stat` counting the system calls of every
// thread of one process.
type perfStat struct {
	cmd    *exec.Cmd
	out    string // perf's CSV output
	ctl    *os.File
	stderr bytes.Buffer
}

// perfAttachTimeout bounds how long startPerfStat waits for perf to count,
// and stop for perf to exit.
const perfAttachTimeout = 10 * time.Second

// startPerfStat starts perf (the executable) counting sysEvents on every
// thread of process pid, writing its output to out, and returns once the
// counters are attached and enabled: perf starts with them disabled
// (--delay -1) and acknowledges an "enable" on its control descriptor
// only after enabling them.
func startPerfStat(perf string, pid int, out string) (*perfStat, error) {
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	ackR, ackW, err := os.Pipe()
	if err != nil {
		ctlR.Close()
		ctlW.Close()
		return nil, err
	}
	defer ackR.Close()
	events := make([]string, len(sysEvents))
	for i, ev := range sysEvents {
		events[i] = ev.name
	}
	p := &perfStat{out: out, ctl: ctlW}
	p.cmd = exec.Command(perf, "stat", "-x,", "-e", strings.Join(events, ","), "-p", strconv.Itoa(pid), "-o", out,
		"--delay", "-1", "--control", "fd:3,4") // ExtraFiles: ctlR is fd 3, ackW fd 4
	p.cmd.ExtraFiles = []*os.File{ctlR, ackW}
	p.cmd.Stderr = &p.stderr
	err = p.cmd.Start()
	ctlR.Close()
	ackW.Close() // perf holds the only write end: reading ends when it exits
	if err != nil {
		ctlW.Close()
		return nil, err
	}
	ack := make([]byte, 4)
	_ = ackR.SetReadDeadline(time.Now().Add(perfAttachTimeout))
	if _, err = ctlW.WriteString("enable\n"); err == nil {
		if _, err = io.ReadFull(ackR, ack); err == nil && string(ack) != "ack\n" {
			err = fmt.Errorf("perf answered %q", ack)
		}
	}
	if err != nil {
		_ = p.cmd.Process.Kill()
		_ = p.cmd.Wait()
		ctlW.Close()
		return nil, fmt.Errorf("perf stat did not start counting (%v): %s", err, p.errorLine())
	}
	return p, nil
}

// stop interrupts perf, which then writes its counts, and returns them.
func (p *perfStat) stop() (sysCounts, error) {
	defer p.ctl.Close()
	_ = p.cmd.Process.Signal(os.Interrupt)
	kill := time.AfterFunc(perfAttachTimeout, func() { _ = p.cmd.Process.Kill() })
	waitErr := p.cmd.Wait() // perf ends by its SIGINT: not an exit status of 0
	kill.Stop()
	b, err := os.ReadFile(p.out)
	if err == nil {
		var c sysCounts
		if c, err = parsePerfStat(b); err == nil {
			return c, nil
		}
	}
	return sysCounts{}, fmt.Errorf("%w (perf %v: %s)", err, waitErr, p.errorLine())
}

// errorLine is the last line perf wrote to stderr that is not one of its
// notes on enabling and disabling the counters.
func (p *perfStat) errorLine() string {
	var last string
	for _, line := range strings.Split(p.stderr.String(), "\n") {
		if line = strings.TrimSpace(line); line != "" && line != "Events disabled" && line != "Events enabled" {
			last = line
		}
	}
	return last
}

// startSyscallCount starts counting the system calls of process pid into
// the work directory's perf/run.csv, or returns nil when they are not
// counted: no process (pid 0), or perf failed here before, or fails now.
// The first failure is logged, and no count is tried after it.
func (b *bench) startSyscallCount(pid int, run string) *perfStat {
	if pid <= 0 || b.perfOff {
		return nil
	}
	fail := func(err error) *perfStat {
		b.perfOff = true
		b.logf("system calls per transaction not counted from here on: %v", err)
		return nil
	}
	perf, err := exec.LookPath("perf")
	if err != nil {
		return fail(errors.New("perf not found; install it with `apt-get install linux-perf` (make deps-bench)"))
	}
	dir := filepath.Join(b.dir, "perf")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail(err)
	}
	p, err := startPerfStat(perf, pid, filepath.Join(dir, run+".csv"))
	if err != nil {
		return fail(err)
	}
	return p
}

// stopSyscallCount stops p and returns the system calls it counted, and
// whether it did: not when p is nil (not counting) or perf failed. A
// failure is logged, and no count is tried after it.
func (b *bench) stopSyscallCount(p *perfStat) (sysCounts, bool) {
	if p == nil {
		return sysCounts{}, false
	}
	c, err := p.stop()
	if err != nil {
		b.perfOff = true
		b.logf("system calls per transaction not counted from here on: %v", err)
		return sysCounts{}, false
	}
	return c, true
}
