package proxy

import (
	"bufio"
	"io"
	"sync"
)

// writerPool holds the bufSize write buffers of sessions that have
// something to send; an idle session holds none.
var writerPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, bufSize) }}

// pooledWriter is a buffered writer that takes its buffer from writerPool
// at the first Write and gives it back at the Flush that empties it. With
// thousands of idle client sessions this saves a write buffer per session
// for each direction. Not safe for concurrent use: callers serialise (the
// client writer under its mutex, the upstream writer in the session
// goroutine).
type pooledWriter struct {
	dst io.Writer
	bw  *bufio.Writer
}

// Write buffers p, taking a buffer from the pool when none is held.
func (w *pooledWriter) Write(p []byte) (int, error) {
	if w.bw == nil {
		w.bw = writerPool.Get().(*bufio.Writer)
		w.bw.Reset(w.dst)
	}
	return w.bw.Write(p)
}

// Flush writes what is buffered and, when that succeeds, returns the buffer
// to the pool. After a failure the buffer (and its error) is kept.
func (w *pooledWriter) Flush() error {
	if w.bw == nil {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	w.bw.Reset(nil)
	writerPool.Put(w.bw)
	w.bw = nil
	return nil
}

// Reset directs later writes to dst, discarding anything unflushed.
func (w *pooledWriter) Reset(dst io.Writer) {
	w.dst = dst
	if w.bw != nil {
		w.bw.Reset(nil)
		writerPool.Put(w.bw)
		w.bw = nil
	}
}
