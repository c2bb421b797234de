package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/wire"
)

// msg encodes one typed message.
func msg(typ byte, body string) []byte {
	return append(wire.AppendHeader(nil, typ, len(body)), body...)
}

// stream concatenates messages.
func stream(msgs ...[]byte) []byte { return bytes.Join(msgs, nil) }

// rawHeader encodes a header with an arbitrary length field.
func rawHeader(typ byte, length uint32) []byte {
	return binary.BigEndian.AppendUint32([]byte{typ}, length)
}

func mustNext(t *testing.T, r *wire.Reader, wantTyp byte, wantLen int) {
	t.Helper()
	typ, n, err := r.Next()
	if err != nil {
		t.Fatalf("Next: %v", err)
	}
	if typ != wantTyp || n != wantLen {
		t.Fatalf("Next = (%q, %d), want (%q, %d)", typ, n, wantTyp, wantLen)
	}
}

func mustBody(t *testing.T, r *wire.Reader, want string) {
	t.Helper()
	b, err := r.Body()
	if err != nil {
		t.Fatalf("Body: %v", err)
	}
	if string(b) != want {
		t.Fatalf("Body = %q, want %q", b, want)
	}
}

func TestReaderReadsMessagesInSequence(t *testing.T) {
	in := stream(msg('Q', "SELECT 1\x00"), msg('S', ""), msg('d', "copy data"), msg('X', ""))
	r := wire.NewReader(bytes.NewReader(in), 16)

	mustNext(t, r, 'Q', 9)
	mustBody(t, r, "SELECT 1\x00")

	mustNext(t, r, 'S', 0)
	mustBody(t, r, "")

	mustNext(t, r, 'd', 9)
	var w bytes.Buffer
	if err := r.CopyBody(&w); err != nil {
		t.Fatalf("CopyBody: %v", err)
	}
	if w.String() != "copy data" {
		t.Errorf("CopyBody wrote %q", w.String())
	}

	mustNext(t, r, 'X', 0)
	if _, _, err := r.Next(); err != io.EOF {
		t.Errorf("Next at end of stream: got %v, want io.EOF", err)
	}
}

func TestNextSkipsAnUnreadBody(t *testing.T) {
	long := strings.Repeat("x", 100) // longer than the buffer, so Discard must read
	in := stream(msg('D', long), msg('D', "second"), msg('C', "SELECT 2\x00"))
	r := wire.NewReader(bytes.NewReader(in), 16)

	mustNext(t, r, 'D', len(long))
	mustNext(t, r, 'D', len("second"))
	mustNext(t, r, 'C', len("SELECT 2\x00"))
	mustBody(t, r, "SELECT 2\x00")
}

// TestNextSkipsWhatAFailedCopyBodyLeft checks that a write error in CopyBody
// leaves the Reader able to skip to the next message.
func TestNextSkipsWhatAFailedCopyBodyLeft(t *testing.T) {
	in := stream(msg('d', "0123456789"), msg('c', ""))
	r := wire.NewReader(bytes.NewReader(in), 16)
	mustNext(t, r, 'd', 10)

	w := &shortWriter{room: 4}
	if err := r.CopyBody(w); !errors.Is(err, errFull) {
		t.Fatalf("CopyBody: got %v, want %v", err, errFull)
	}
	if w.buf.String() != "0123" {
		t.Fatalf("CopyBody wrote %q before failing", w.buf.String())
	}
	typ, n, err := r.Next()
	if err == nil && typ == 'c' && n == 0 {
		return
	}
	t.Fatalf("after a failed CopyBody, Next = (%q, %d, %v), want ('c', 0, nil)", typ, n, err)
}

// TestNextResumesAfterATransientErrorInsideABody checks that a read error
// part-way through a body (a read deadline, say) leaves the Reader in step
// with the stream, for both ways of reading a body.
func TestNextResumesAfterATransientErrorInsideABody(t *testing.T) {
	first, second := msg('d', "0123456789"), msg('c', "")
	for _, tc := range []struct {
		name string
		read func(*wire.Reader) error
	}{
		{"Body", func(r *wire.Reader) error { _, err := r.Body(); return err }},
		{"CopyBody", func(r *wire.Reader) error { return r.CopyBody(io.Discard) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := &scriptedReader{steps: []any{first[:8], errTransient, append(bytes.Clone(first[8:]), second...)}}
			r := wire.NewReader(src, 16)
			mustNext(t, r, 'd', 10)
			if err := tc.read(r); !errors.Is(err, errTransient) {
				t.Fatalf("got %v, want %v", err, errTransient)
			}
			typ, n, err := r.Next()
			if err == nil && typ == 'c' && n == 0 {
				return
			}
			t.Fatalf("after a failed %s, Next = (%q, %d, %v), want ('c', 0, nil)", tc.name, typ, n, err)
		})
	}
}

var errTransient = errors.New("i/o timeout")

// scriptedReader returns its steps in order: a []byte is served (possibly
// over several reads), an error is returned once.
type scriptedReader struct{ steps []any }

func (s *scriptedReader) Read(p []byte) (int, error) {
	for len(s.steps) > 0 {
		switch st := s.steps[0].(type) {
		case error:
			s.steps = s.steps[1:]
			return 0, st
		case []byte:
			if len(st) == 0 {
				s.steps = s.steps[1:]
				continue
			}
			n := copy(p, st)
			s.steps[0] = st[n:]
			return n, nil
		}
	}
	return 0, io.EOF
}

var errFull = errors.New("writer full")

// shortWriter accepts room bytes, then fails.
type shortWriter struct {
	buf  bytes.Buffer
	room int
}

func (w *shortWriter) Write(p []byte) (int, error) {
	if len(p) > w.room {
		n, _ := w.buf.Write(p[:w.room])
		w.room = 0
		return n, errFull
	}
	w.room -= len(p)
	return w.buf.Write(p)
}

func TestBodyIsEmptyOnceConsumed(t *testing.T) {
	r := wire.NewReader(bytes.NewReader(stream(msg('Q', "abc"), msg('Q', "def"))), 16)
	mustNext(t, r, 'Q', 3)
	mustBody(t, r, "abc")
	mustBody(t, r, "")
	var w bytes.Buffer
	if err := r.CopyBody(&w); err != nil || w.Len() != 0 {
		t.Errorf("CopyBody after Body: wrote %q, err %v", w.String(), err)
	}
	mustNext(t, r, 'Q', 3)
	mustBody(t, r, "def")
}

func TestBodyReusesItsBufferForSmallerMessages(t *testing.T) {
	r := wire.NewReader(bytes.NewReader(stream(msg('Q', "long body"), msg('Q', "tiny"))), 64)
	mustNext(t, r, 'Q', 9)
	first, err := r.Body()
	if err != nil {
		t.Fatal(err)
	}
	mustNext(t, r, 'Q', 4)
	second, err := r.Body()
	if err != nil {
		t.Fatal(err)
	}
	if string(second) != "tiny" || &first[0] != &second[0] {
		t.Errorf("second body %q at a new buffer; want %q in the reused buffer", second, "tiny")
	}
}

func TestBufferedCountsBytesReadAheadOfTheCurrentMessage(t *testing.T) {
	in := stream(msg('P', "parse"), msg('S', ""))
	r := wire.NewReader(bytes.NewReader(in), 64)
	if got := r.Buffered(); got != 0 {
		t.Errorf("Buffered before any read = %d, want 0", got)
	}
	mustNext(t, r, 'P', 5)
	if got, want := r.Buffered(), len(in)-5; got != want {
		t.Errorf("Buffered after first header = %d, want %d", got, want)
	}
	mustBody(t, r, "parse")
	mustNext(t, r, 'S', 0)
	if got := r.Buffered(); got != 0 {
		t.Errorf("Buffered after the last message = %d, want 0", got)
	}
}

func TestNextRejectsBodiesOverTheLimit(t *testing.T) {
	for _, tc := range []struct {
		name    string
		max     int // 0: default
		hdr     []byte
		wantErr error
	}{
		{"one byte over a set limit", 16, rawHeader('D', 4+17), wire.ErrMessageTooLarge},
		{"over the default 1 GiB", 0, rawHeader('D', 4+wire.MaxMessageLen+1), wire.ErrMessageTooLarge},
		{"largest length field", 0, rawHeader('D', 0xFFFFFFFF), wire.ErrMessageTooLarge},
		{"zero limit and a one-byte body", -1, rawHeader('D', 5), wire.ErrMessageTooLarge},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The header is all there is: a Reader that read on into the
			// body would get io.EOF instead.
			r := wire.NewReader(bytes.NewReader(tc.hdr), 16)
			switch {
			case tc.max > 0:
				r.SetMaxLen(tc.max)
			case tc.max < 0:
				r.SetMaxLen(0)
			}
			typ, n, err := r.Next()
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Next = (%q, %d, %v), want %v", typ, n, err, tc.wantErr)
			}
		})
	}
}

func TestNextAcceptsABodyOfExactlyTheLimit(t *testing.T) {
	r := wire.NewReader(bytes.NewReader(msg('D', "0123456789abcdef")), 16)
	r.SetMaxLen(16)
	mustNext(t, r, 'D', 16)
	mustBody(t, r, "0123456789abcdef")
}

func TestNextRejectsLengthsShorterThanTheLengthField(t *testing.T) {
	for length := range uint32(4) {
		r := wire.NewReader(bytes.NewReader(append(rawHeader('Q', length), "more"...)), 16)
		typ, n, err := r.Next()
		if err == nil || errors.Is(err, wire.ErrMessageTooLarge) || errors.Is(err, io.EOF) {
			t.Errorf("length %d: Next = (%q, %d, %v), want an invalid-length error", length, typ, n, err)
		} else if !strings.Contains(err.Error(), "invalid message length") {
			t.Errorf("length %d: message %q", length, err)
		}
	}
}

func TestReaderReportsTruncatedStreams(t *testing.T) {
	full := msg('Q', "SELECT 1\x00")
	t.Run("half a header", func(t *testing.T) {
		r := wire.NewReader(bytes.NewReader(full[:3]), 16)
		if _, _, err := r.Next(); err != io.ErrUnexpectedEOF {
			t.Errorf("got %v, want io.ErrUnexpectedEOF", err)
		}
	})
	t.Run("truncated body read with Body", func(t *testing.T) {
		r := wire.NewReader(bytes.NewReader(full[:len(full)-2]), 16)
		mustNext(t, r, 'Q', 9)
		if b, err := r.Body(); err != io.ErrUnexpectedEOF {
			t.Errorf("got (%q, %v), want io.ErrUnexpectedEOF", b, err)
		}
	})
	t.Run("truncated body read with CopyBody", func(t *testing.T) {
		r := wire.NewReader(bytes.NewReader(full[:len(full)-2]), 16)
		mustNext(t, r, 'Q', 9)
		var w bytes.Buffer
		if err := r.CopyBody(&w); err != io.EOF {
			t.Errorf("got %v, want io.EOF", err)
		}
		if w.String() != "SELECT " {
			t.Errorf("CopyBody wrote %q", w.String())
		}
	})
	t.Run("truncated body skipped by Next", func(t *testing.T) {
		r := wire.NewReader(bytes.NewReader(full[:len(full)-2]), 16)
		mustNext(t, r, 'Q', 9)
		if _, _, err := r.Next(); err == nil {
			t.Error("Next skipped past the end of the stream without error")
		}
	})
}

func TestAppendHeaderRoundTripsThroughNext(t *testing.T) {
	for _, tc := range []struct {
		typ  byte
		n    int
		want []byte
	}{
		{'S', 0, []byte{'S', 0, 0, 0, 4}},
		{'Q', 9, []byte{'Q', 0, 0, 0, 13}},
		{'d', 1 << 20, []byte{'d', 0, 0x10, 0, 4}},
		{'D', wire.MaxMessageLen, []byte{'D', 0x40, 0, 0, 4}},
	} {
		prefix := []byte("kept")
		got := wire.AppendHeader(bytes.Clone(prefix), tc.typ, tc.n)
		if !bytes.Equal(got, append(prefix, tc.want...)) {
			t.Errorf("AppendHeader(%q, %d) = %v, want prefix + %v", tc.typ, tc.n, got, tc.want)
			continue
		}
		r := wire.NewReader(bytes.NewReader(got[len(prefix):]), 16)
		typ, n, err := r.Next()
		if err != nil || typ != tc.typ || n != tc.n {
			t.Errorf("Next after AppendHeader(%q, %d) = (%q, %d, %v)", tc.typ, tc.n, typ, n, err)
		}
	}
}

func TestUnderlyingHandsOverTheBufferedStream(t *testing.T) {
	r := wire.NewReader(bytes.NewReader(stream(msg('S', ""), []byte("rest"))), 64)
	mustNext(t, r, 'S', 0)
	rest, err := io.ReadAll(r.Underlying())
	if err != nil || string(rest) != "rest" {
		t.Errorf("Underlying read (%q, %v), want %q", rest, err, "rest")
	}
}

func FuzzReader(f *testing.F) {
	// A client's extended-protocol round, a server's answer, a COPY, and
	// broken framing; the corpus under testdata/fuzz/FuzzReader holds more.
	f.Add(stream(msg('P', "\x00SELECT $1\x00\x00\x00"), msg('B', "\x00\x00\x00\x00\x00\x01\x00\x00\x00\x011\x00\x00"),
		msg('D', "P\x00"), msg('E', "\x00\x00\x00\x00\x00"), msg('S', "")))
	f.Add(stream(msg('T', "\x00\x01a\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x17\x00\x04\xff\xff\xff\xff\x00\x00"),
		msg('D', "\x00\x01\x00\x00\x00\x011"), msg('C', "SELECT 1\x00"), msg('Z', "I")))
	f.Add(stream(msg('d', strings.Repeat("row\t1\n", 20)), msg('c', "")))
	f.Add(append(msg('Q', "x\x00"), rawHeader('D', 3)...))
	f.Add(rawHeader('D', 4+1<<20+1))
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxLen = 1 << 20
		r := wire.NewReader(bytes.NewReader(data), 16)
		r.SetMaxLen(maxLen)
		consumed := 0 // offset of the next header in data
		for i := 0; ; i++ {
			typ, n, err := r.Next()
			if err != nil {
				switch {
				case err == io.EOF:
					if consumed != len(data) {
						t.Fatalf("io.EOF at offset %d of %d", consumed, len(data))
					}
				case errors.Is(err, wire.ErrMessageTooLarge):
					if n := int(binary.BigEndian.Uint32(data[consumed+1:])) - 4; n <= maxLen {
						t.Fatalf("length %d reported too large", n)
					}
				case err == io.ErrUnexpectedEOF:
					if consumed+5 <= len(data) {
						t.Fatalf("io.ErrUnexpectedEOF with a whole header at offset %d of %d", consumed, len(data))
					}
				default:
					if consumed+5 > len(data) || binary.BigEndian.Uint32(data[consumed+1:]) >= 4 {
						t.Fatalf("unexpected error at offset %d of %d: %v", consumed, len(data), err)
					}
				}
				return
			}
			if consumed+5 > len(data) {
				t.Fatalf("header at offset %d read past the %d-byte input", consumed, len(data))
			}
			hdr := data[consumed : consumed+5]
			if typ != hdr[0] || n != int(binary.BigEndian.Uint32(hdr[1:]))-4 || n < 0 || n > maxLen {
				t.Fatalf("Next = (%q, %d) for header %v", typ, n, hdr)
			}
			consumed += 5
			var body []byte
			switch i % 3 {
			case 0:
				body, err = r.Body()
			case 1:
				var w bytes.Buffer
				err = r.CopyBody(&w)
				body = w.Bytes()
			case 2:
				// Leave the body for the next Next to skip.
				if consumed+n > len(data) {
					body, err = nil, io.ErrUnexpectedEOF
				} else {
					body = data[consumed : consumed+n]
				}
			}
			if len(body) > n {
				t.Fatalf("got %d body bytes for length field %d", len(body), n)
			}
			if consumed+len(body) > len(data) {
				t.Fatalf("consumed %d bytes of a %d-byte input", consumed+len(body), len(data))
			}
			if !bytes.Equal(body, data[consumed:consumed+len(body)]) {
				t.Fatalf("body at offset %d differs from the input", consumed)
			}
			if err != nil {
				if consumed+n <= len(data) {
					t.Fatalf("body error %v with the whole body in the input", err)
				}
				return
			}
			if len(body) != n {
				t.Fatalf("got %d body bytes without error for length field %d", len(body), n)
			}
			consumed += n
		}
	})
}
