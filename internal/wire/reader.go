package wire

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MaxMessageLen bounds the length field of a typed message. Postgres itself
// refuses messages over 1 GiB; a larger value can only be corruption.
const MaxMessageLen = 1 << 30

// ErrMessageTooLarge reports a length field over the configured limit.
var ErrMessageTooLarge = errors.New("message length exceeds limit")

// Reader reads typed protocol messages from a buffered stream. Bodies
// returned by Body stay valid only until the next call on the Reader.
// A Reader is not safe for concurrent use.
type Reader struct {
	r      *bufio.Reader
	buf    []byte
	typ    byte
	remain int // body bytes of the current message not yet consumed
	maxLen int
}

// NewReader returns a Reader over r. size is the bufio buffer size.
func NewReader(r io.Reader, size int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, size), maxLen: MaxMessageLen}
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
	var hdr [5]byte
	if _, err := io.ReadFull(r.r, hdr[:]); err != nil {
		return 0, 0, err
	}
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
func (r *Reader) Buffered() int { return r.r.Buffered() }

// Underlying returns the buffered reader, for handing the stream over to
// another protocol reader (for example after a TLS upgrade is refused).
func (r *Reader) Underlying() *bufio.Reader { return r.r }

// AppendHeader appends a message header for typ and body length n to dst.
func AppendHeader(dst []byte, typ byte, n int) []byte {
	dst = append(dst, typ)
	return binary.BigEndian.AppendUint32(dst, uint32(n+4))
}

// Peek returns up to n bytes of the current body without consuming them
// (fewer when the body is shorter). n must not exceed the buffer size.
// The slice is valid until the next call on the Reader.
func (r *Reader) Peek(n int) ([]byte, error) {
	return r.r.Peek(min(n, r.remain, r.r.Size()))
}

// Skip consumes n bytes of the current body.
func (r *Reader) Skip(n int) error {
	if n > r.remain {
		return fmt.Errorf("skip %d beyond body of %d", n, r.remain)
	}
	d, err := r.r.Discard(n)
	r.remain -= d
	return err
}

// Remaining is the number of unread bytes of the current body.
func (r *Reader) Remaining() int { return r.remain }
