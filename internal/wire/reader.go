package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sync"
)

// MaxMessageLen bounds the length field of a typed message. Postgres itself
// refuses messages over 1 GiB; a larger value can only be corruption.
const MaxMessageLen = 1 << 30

// ErrMessageTooLarge reports a length field over the configured limit.
var ErrMessageTooLarge = errors.New("message length exceeds limit")

// Reader reads typed protocol messages from a buffered stream. Bodies
// returned by Body stay valid only until the next call on the Reader.
// A Reader is not safe for concurrent use.
//
// Release drops its read buffer between messages (a long-idle client
// session then holds no buffer); the next Next reads the 5-byte header
// straight from the stream and takes a new buffer for the body and what
// follows.
type Reader struct {
	src    io.Reader
	r      *bufio.Reader // nil while released
	size   int
	buf    []byte
	typ    byte
	remain int // body bytes of the current message not yet consumed
	maxLen int
	// hdr holds a message header being read and hdrN how many of its
	// bytes were read, so a header cut short by an error (a deadline)
	// resumes where it stopped.
	hdr  [5]byte
	hdrN int
}

// RecycledSize is the buffer size of the Readers whose buffers Recycle
// keeps for the next Reader: a client session's.
const RecycledSize = 4 << 10

// recycled holds the read buffers of Readers that are done (Recycle), for
// the next Reader of RecycledSize: a client connecting for one request
// then allocates no read buffer, where it was half of what a connection
// allocated.
var recycled = sync.Pool{}

// takeBuffer returns a buffered reader of size over src: a recycled one
// when size is RecycledSize and one is kept, else a new one. Buffers a
// Reader drops between messages (Release) are not recycled: a pool would
// keep them until two collections have passed, while dropped they are
// garbage at the next one, and a Reader takes a buffer again at most once
// per idle period.
func takeBuffer(src io.Reader, size int) *bufio.Reader {
	if size == RecycledSize {
		if br, ok := recycled.Get().(*bufio.Reader); ok {
			br.Reset(src)
			return br
		}
	}
	return bufio.NewReaderSize(src, size)
}

// NewReader returns a Reader over r. size is the bufio buffer size.
func NewReader(r io.Reader, size int) *Reader {
	return &Reader{src: r, r: takeBuffer(r, size), size: size, maxLen: MaxMessageLen}
}

// Release drops the read buffer and the body buffer, when nothing is
// buffered and no message is partly read; it
// reports whether the Reader now holds no buffer (true when it already
// held none). The next Next reads the header straight from the stream
// with one small read, then takes a buffer again. Idempotent.
func (r *Reader) Release() bool {
	if r.r == nil {
		return true
	}
	if r.remain > 0 || r.hdrN > 0 || r.r.Buffered() > 0 {
		return false
	}
	r.r, r.buf = nil, nil
	return true
}

// Recycle ends the Reader's use: its read buffer, whatever it holds, goes
// to the next Reader that takes one (when its size is RecycledSize). The
// caller must be done with the Reader and with every body it returned;
// after Recycle the Reader holds no buffer and must not be used.
// Idempotent.
func (r *Reader) Recycle() {
	if r.r != nil && r.r.Size() == RecycledSize {
		r.r.Reset(nil) // keeps no reference to the stream
		recycled.Put(r.r)
	}
	r.r, r.buf = nil, nil
}

// Released reports whether the Reader holds no read buffer (see Release).
func (r *Reader) Released() bool { return r.r == nil }

// Wait returns when at least one byte of the next message has been read,
// with a buffer (one read into it, which the next Next then serves: no
// extra system call) or, when released, without one (up to the 5 header
// bytes, kept for Next). It consumes nothing a later call needs: after an
// error, such as a read deadline, Wait or Next may be called again and the
// Reader is still in step with the stream. Call it between messages.
func (r *Reader) Wait() error {
	if r.r != nil {
		_, err := r.r.Peek(1)
		return err
	}
	if r.hdrN > 0 {
		return nil
	}
	n, err := r.src.Read(r.hdr[:])
	r.hdrN = n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// SetMaxLen sets the largest accepted body length.
func (r *Reader) SetMaxLen(n int) { r.maxLen = n }

// Next reads the next message header and returns its type and body length
// (without the 4 length bytes). Any unread body of the previous message is
// discarded first.
func (r *Reader) Next() (typ byte, bodyLen int, err error) {
	if r.remain > 0 {
		if _, err := r.r.Discard(r.remain); err != nil {
			return 0, 0, err
		}
		r.remain = 0
	}
	if err := r.readHeader(); err != nil {
		return 0, 0, err
	}
	hdr := r.hdr
	n := int(binary.BigEndian.Uint32(hdr[1:])) - 4
	if n < 0 {
		return 0, 0, fmt.Errorf("invalid message length %d for type %q", n+4, hdr[0])
	}
	if n > r.maxLen {
		return 0, 0, fmt.Errorf("%w: type %q length %d > %d", ErrMessageTooLarge, hdr[0], n, r.maxLen)
	}
	r.typ, r.remain = hdr[0], n
	return hdr[0], n, nil
}

// readHeader reads the rest of the next message header into r.hdr: from
// the buffer, or straight from the stream when released (then it takes a
// buffer once the header is complete).
func (r *Reader) readHeader() error {
	var from io.Reader = r.r
	if r.r == nil {
		from = r.src
	}
	n, err := io.ReadFull(from, r.hdr[r.hdrN:])
	r.hdrN += n
	if err != nil {
		if err == io.EOF && r.hdrN > 0 {
			err = io.ErrUnexpectedEOF
		}
		return err
	}
	r.hdrN = 0
	if r.r == nil {
		r.r = takeBuffer(r.src, r.size)
	}
	return nil
}

// Body reads the whole body of the current message into an internal buffer
// that is reused by later calls. After an error the Reader still knows its
// position: the next Next skips what is left of the body.
func (r *Reader) Body() ([]byte, error) {
	if cap(r.buf) < r.remain {
		r.buf = make([]byte, r.remain)
	}
	b := r.buf[:r.remain]
	n, err := io.ReadFull(r.r, b)
	r.remain -= n
	if err != nil {
		return nil, err
	}
	return b, nil
}

// CopyBody streams the rest of the current message body to w straight from
// the read buffer. Only bytes w accepted are consumed, so after a failed
// write the Reader still knows its position.
func (r *Reader) CopyBody(w io.Writer) error {
	for r.remain > 0 {
		b, perr := r.r.Peek(min(r.remain, r.r.Size()))
		if len(b) > 0 {
			n, werr := w.Write(b)
			_, _ = r.r.Discard(n)
			r.remain -= n
			if werr != nil {
				return werr
			}
			if n < len(b) {
				return io.ErrShortWrite
			}
		}
		if perr != nil && r.remain > 0 {
			return perr
		}
	}
	return nil
}

// Buffered reports how many bytes can be read without touching the
// underlying stream; relays flush their writer when it is zero.
func (r *Reader) Buffered() int {
	if r.r == nil {
		return 0
	}
	return r.r.Buffered()
}

// Underlying returns the buffered reader, for handing the stream over to
// another protocol reader (for example after a TLS upgrade is refused).
// It takes a buffer when the Reader was released; call it between
// messages, not after a failed Wait or Next.
func (r *Reader) Underlying() *bufio.Reader {
	if r.r == nil {
		r.r = takeBuffer(r.src, r.size)
	}
	return r.r
}

// AppendHeader appends a message header for typ and body length n to dst.
func AppendHeader(dst []byte, typ byte, n int) []byte {
	dst = append(dst, typ)
	return binary.BigEndian.AppendUint32(dst, uint32(n+4))
}

// Peek returns up to n bytes of the current body without consuming them
// (fewer when the body is shorter). n must not exceed the buffer size.
// The slice is valid until the next call on the Reader.
func (r *Reader) Peek(n int) ([]byte, error) {
	if r.remain == 0 {
		return nil, nil
	}
	return r.r.Peek(min(n, r.remain, r.r.Size()))
}

// Skip consumes n bytes of the current body.
func (r *Reader) Skip(n int) error {
	if n > r.remain {
		return fmt.Errorf("skip %d beyond body of %d", n, r.remain)
	}
	if n == 0 {
		return nil
	}
	d, err := r.r.Discard(n)
	r.remain -= d
	return err
}

// Remaining is the number of unread bytes of the current body.
func (r *Reader) Remaining() int { return r.remain }
