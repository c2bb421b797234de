package main

import (
	"os"
	"syscall"
	"unsafe"
)

// epollSet is the event loop of go-loop and go-txloop: a level-triggered
// epoll set whose own descriptor sits in the Go poller, so the loop
// goroutine parks there when no socket is ready instead of holding a
// thread in epoll_wait, and an eventfd that other goroutines signal when
// they hand the loop work (notify). run is the loop goroutine; watch and
// unwatch belong to it too once it runs.
type epollSet struct {
	ep, wake int
	file     *os.File // ep in the Go poller; closing it ends run
	rc       syscall.RawConn
	done     chan struct{} // closed when run returns
}

func newEpollSet() (*epollSet, error) {
	ep, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	r, _, e := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if e != 0 {
		syscall.Close(ep)
		return nil, e
	}
	s := &epollSet{ep: ep, wake: int(r), done: make(chan struct{})}
	if err := s.watch(s.wake); err != nil {
		s.closeFDs()
		return nil, err
	}
	if err := syscall.SetNonblock(ep, true); err != nil {
		s.closeFDs()
		return nil, err
	}
	s.file = os.NewFile(uintptr(ep), "epoll")
	if s.rc, err = s.file.SyscallConn(); err != nil {
		s.file.Close()
		syscall.Close(s.wake)
		return nil, err
	}
	return s, nil
}

func (s *epollSet) closeFDs() {
	syscall.Close(s.ep)
	syscall.Close(s.wake)
}

// watch adds fd to the set, reported while it has data to read.
func (s *epollSet) watch(fd int) error {
	return syscall.EpollCtl(s.ep, syscall.EPOLL_CTL_ADD, fd, &syscall.EpollEvent{Events: syscall.EPOLLIN, Fd: int32(fd)})
}

// unwatch removes fd from the set; call it before closing fd.
func (s *epollSet) unwatch(fd int) {
	_ = syscall.EpollCtl(s.ep, syscall.EPOLL_CTL_DEL, fd, nil)
}

// notify wakes run, which then calls its woken. Safe from any goroutine.
func (s *epollSet) notify() {
	one := [8]byte{7: 1}
	_, _ = syscall.Write(s.wake, one[:]) // EAGAIN: a wake-up is pending anyway
}

// run calls woken after a notify and ready for each descriptor with data,
// until close; then it calls stopped and closes done.
func (s *epollSet) run(woken func(), ready func(fd int), stopped func()) {
	defer close(s.done)
	defer stopped()
	events := make([]syscall.EpollEvent, 128)
	n := 0
	poll := func(fd uintptr) bool {
		r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, fd, uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), 0, 0, 0)
		n = int(r)
		return e == 0 && n > 0
	}
	for {
		if err := s.rc.Read(poll); err != nil { // closed by close
			return
		}
		for _, ev := range events[:n] {
			if fd := int(ev.Fd); fd == s.wake {
				var b [8]byte
				_, _ = syscall.Read(s.wake, b[:])
				woken()
			} else {
				ready(fd)
			}
		}
	}
}

// close ends run and waits for it to return, when it was started.
func (s *epollSet) close(started bool) {
	_ = s.file.Close()
	if started {
		<-s.done
	}
	_ = syscall.Close(s.wake)
}
