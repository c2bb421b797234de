package wire_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/brownie/brownie-sidecar/internal/wire"
)

const (
	version32 = 3<<16 | 2
	version40 = 4 << 16
)

// startupBody encodes the body of a StartupMessage (everything after the
// length word): version, name/value pairs, then the terminating NUL.
func startupBody(version uint32, kv ...string) []byte {
	b := binary.BigEndian.AppendUint32(nil, version)
	for _, s := range kv {
		b = append(b, s...)
		b = append(b, 0)
	}
	return append(b, 0)
}

// requestBody encodes the body of a request packet: the code, then extra.
func requestBody(code uint32, extra ...byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, code), extra...)
}

// packet prefixes body with its length word, as a client sends it.
func packet(body []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(body)+4)), body...)
}

// cancelBody encodes a CancelRequest body for pid and secret.
func cancelBody(pid uint32, secret []byte) []byte {
	return requestBody(wire.CodeCancel, append(binary.BigEndian.AppendUint32(nil, pid), secret...)...)
}

func seq(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + 1)
	}
	return b
}

func TestParseStartupRecognisesRequestPackets(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
		want wire.Startup
	}{
		{"SSLRequest", requestBody(wire.CodeSSL), wire.Startup{Kind: wire.KindSSL}},
		{"GSSENCRequest", requestBody(wire.CodeGSSEnc), wire.Startup{Kind: wire.KindGSSEnc}},
		{"CancelRequest with a 3.0 four-byte secret", cancelBody(4242, []byte{1, 2, 3, 4}),
			wire.Startup{Kind: wire.KindCancel, CancelPID: 4242, CancelSecret: []byte{1, 2, 3, 4}}},
		{"CancelRequest with a 3.2 32-byte secret", cancelBody(0xDEADBEEF, seq(32)),
			wire.Startup{Kind: wire.KindCancel, CancelPID: 0xDEADBEEF, CancelSecret: seq(32)}},
		{"CancelRequest with the longest 3.2 secret", cancelBody(1, seq(256)),
			wire.Startup{Kind: wire.KindCancel, CancelPID: 1, CancelSecret: seq(256)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := wire.ParseStartup(tc.body)
			if err != nil {
				t.Fatalf("ParseStartup: %v", err)
			}
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got %+v, want %+v", *got, tc.want)
			}
		})
	}
}

func TestParseStartupDoesNotAliasTheInput(t *testing.T) {
	body := cancelBody(7, []byte{1, 2, 3, 4})
	st, err := wire.ParseStartup(body)
	if err != nil {
		t.Fatal(err)
	}
	clear(body)
	if !bytes.Equal(st.CancelSecret, []byte{1, 2, 3, 4}) {
		t.Errorf("CancelSecret changed with the input buffer: %v", st.CancelSecret)
	}
}

func TestParseStartupRejectsMalformedRequestPackets(t *testing.T) {
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"empty body", nil},
		{"code cut short", []byte{0x04, 0xd2, 0x16}},
		{"SSLRequest with trailing bytes", requestBody(wire.CodeSSL, 0)},
		{"GSSENCRequest with trailing bytes", requestBody(wire.CodeGSSEnc, 1, 2, 3, 4)},
		{"CancelRequest without a pid", requestBody(wire.CodeCancel)},
		{"CancelRequest without a secret", cancelBody(1, nil)},
		{"CancelRequest with a three-byte secret", cancelBody(1, []byte{1, 2, 3})},
		{"CancelRequest with a 257-byte secret", cancelBody(1, seq(257))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := wire.ParseStartup(tc.body)
			if !errors.Is(err, wire.ErrBadStartup) {
				t.Fatalf("got (%+v, %v), want ErrBadStartup", st, err)
			}
		})
	}
}

func TestParseStartupKeepsParametersInOrderAndSplitsOutProtocolOptions(t *testing.T) {
	body := startupBody(wire.Version30,
		"user", "alice",
		"_pq_.compression", "on",
		"database", "brownie_metadata",
		"options", "-c search_path=a",
		"_pq_.other", "",
		"application_name", "psql",
	)
	st, err := wire.ParseStartup(body)
	if err != nil {
		t.Fatalf("ParseStartup: %v", err)
	}
	want := &wire.Startup{
		Kind:    wire.KindStartup,
		Version: wire.Version30,
		Params: []wire.Param{
			{"user", "alice"},
			{"database", "brownie_metadata"},
			{"options", "-c search_path=a"},
			{"application_name", "psql"},
		},
		ProtocolOptions: []string{"_pq_.compression", "_pq_.other"},
	}
	if !reflect.DeepEqual(st, want) {
		t.Errorf("got  %+v\nwant %+v", st, want)
	}
	if v, ok := st.Get("database"); !ok || v != "brownie_metadata" {
		t.Errorf("Get(database) = %q, %v", v, ok)
	}
	if v, ok := st.Get("_pq_.compression"); ok {
		t.Errorf("protocol option reachable through Get: %q", v)
	}
	if _, ok := st.Get("missing"); ok {
		t.Error("Get(missing) reported a value")
	}
}

func TestParseStartupAcceptsEmptyValues(t *testing.T) {
	st, err := wire.ParseStartup(startupBody(wire.Version30, "user", "bob", "database", ""))
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := st.Get("database"); !ok || v != "" {
		t.Errorf("Get(database) = %q, %v; want empty and present", v, ok)
	}
}

func TestParseStartupAcceptsProtocol32AndReportsTheVersion(t *testing.T) {
	st, err := wire.ParseStartup(startupBody(version32, "user", "bob"))
	if err != nil {
		t.Fatalf("ParseStartup: %v", err)
	}
	if st.Kind != wire.KindStartup || st.Version != version32 {
		t.Errorf("got kind %v version %#x, want startup %#x", st.Kind, st.Version, version32)
	}
}

func TestParseStartupRejectsOtherMajorVersions(t *testing.T) {
	for _, v := range []uint32{version40, 2 << 16, 0, 1234<<16 | 5677, 0xFFFF0000} {
		_, err := wire.ParseStartup(startupBody(v, "user", "bob"))
		if !errors.Is(err, wire.ErrBadStartup) {
			t.Errorf("version %d.%d: got %v, want ErrBadStartup", v>>16, v&0xFFFF, err)
		} else if !strings.Contains(err.Error(), "version") {
			t.Errorf("version %d.%d: message %q does not mention the version", v>>16, v&0xFFFF, err)
		}
	}
}

func TestParseStartupRejectsMalformedStartupMessages(t *testing.T) {
	v30 := binary.BigEndian.AppendUint32(nil, wire.Version30)
	cat := func(parts ...string) []byte { return append(bytes.Clone(v30), strings.Join(parts, "")...) }
	for _, tc := range []struct {
		name string
		body []byte
	}{
		{"version only", v30},
		{"only the terminator", cat("\x00")},
		{"missing terminator", cat("user\x00bob\x00")},
		{"missing terminator after several params", cat("user\x00bob\x00database\x00db\x00")},
		{"bytes after the terminator", cat("user\x00bob\x00\x00x")},
		{"a second terminator", cat("user\x00bob\x00\x00\x00")},
		{"no user", cat("database\x00db\x00\x00")},
		{"unterminated name", cat("user\x00bob\x00datab")},
		{"unterminated first name", cat("user")},
		{"unterminated value", cat("user\x00bo")},
		{"name without value", cat("user\x00")},
		{"user only as a protocol option", cat("_pq_.user\x00bob\x00\x00")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := wire.ParseStartup(tc.body)
			if !errors.Is(err, wire.ErrBadStartup) {
				t.Fatalf("got (%+v, %v), want ErrBadStartup", st, err)
			}
		})
	}
}

// TestParseStartupRejectsAMissingTerminatorAfterAProtocolOption pins a known
// bug: the missing-terminator check is skipped when the last pair is a
// "_pq_." option, so the packet is accepted.
func TestParseStartupRejectsAMissingTerminatorAfterAProtocolOption(t *testing.T) {
	body := append(binary.BigEndian.AppendUint32(nil, wire.Version30), "user\x00bob\x00_pq_.x\x00y\x00"...)
	st, err := wire.ParseStartup(body)
	if errors.Is(err, wire.ErrBadStartup) {
		return
	}
	t.Fatalf("packet without terminator accepted after a _pq_ option: (%+v, %v)", st, err)
}

// headerOnly serves a 4-byte length word and fails the test if anything
// past it is read.
type headerOnly struct {
	t   *testing.T
	hdr []byte
}

func (h *headerOnly) Read(p []byte) (int, error) {
	if len(h.hdr) == 0 {
		h.t.Error("ReadStartup read past the length word")
		return 0, errors.New("read past the length word")
	}
	n := copy(p, h.hdr)
	h.hdr = h.hdr[n:]
	return n, nil
}

func TestReadStartupRejectsBadLengthsWithoutReadingTheBody(t *testing.T) {
	for _, n := range []uint32{0, 4, 7, wire.MaxStartLen + 1, 1 << 31, 0xFFFFFFFF} {
		r := &headerOnly{t: t, hdr: binary.BigEndian.AppendUint32(nil, n)}
		st, err := wire.ReadStartup(r)
		if !errors.Is(err, wire.ErrBadStartup) {
			t.Errorf("length %d: got (%+v, %v), want ErrBadStartup", n, st, err)
		}
	}
}

func TestReadStartupAcceptsAPacketOfExactlyMaxStartLen(t *testing.T) {
	fixed := len(startupBody(wire.Version30, "user", "bob", "application_name", ""))
	body := startupBody(wire.Version30, "user", "bob", "application_name", strings.Repeat("x", wire.MaxStartLen-4-fixed))
	pkt := packet(body)
	if len(pkt) != wire.MaxStartLen {
		t.Fatalf("test packet is %d bytes", len(pkt))
	}
	st, err := wire.ReadStartup(bytes.NewReader(pkt))
	if err != nil {
		t.Fatalf("ReadStartup: %v", err)
	}
	if v, _ := st.Get("application_name"); len(v) != wire.MaxStartLen-4-fixed {
		t.Errorf("application_name has %d bytes", len(v))
	}
}

func TestReadStartupReadsOnePacketAndLeavesTheRest(t *testing.T) {
	stream := append(packet(requestBody(wire.CodeSSL)), packet(startupBody(wire.Version30, "user", "bob", "database", "db"))...)
	stream = append(stream, 'Q')
	r := bytes.NewReader(stream)

	st, err := wire.ReadStartup(r)
	if err != nil || st.Kind != wire.KindSSL {
		t.Fatalf("first packet: got (%+v, %v), want SSLRequest", st, err)
	}
	st, err = wire.ReadStartup(r)
	if err != nil || st.Kind != wire.KindStartup {
		t.Fatalf("second packet: got (%+v, %v), want StartupMessage", st, err)
	}
	if want := []wire.Param{{"user", "bob"}, {"database", "db"}}; !slices.Equal(st.Params, want) {
		t.Errorf("params %v, want %v", st.Params, want)
	}
	if r.Len() != 1 {
		t.Errorf("%d bytes left unread, want 1", r.Len())
	}
}

func TestReadStartupReportsEndOfStream(t *testing.T) {
	full := packet(startupBody(wire.Version30, "user", "bob"))
	for _, tc := range []struct {
		name  string
		input []byte
		want  []error // any of these
	}{
		{"nothing sent", nil, []error{io.EOF}},
		{"half a length word", full[:2], []error{io.ErrUnexpectedEOF}},
		// io.ReadFull reports io.EOF when no body byte arrives at all; the
		// session treats both as the client going away.
		{"length word only", full[:4], []error{io.EOF, io.ErrUnexpectedEOF}},
		{"truncated body", full[:len(full)-1], []error{io.ErrUnexpectedEOF}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := wire.ReadStartup(bytes.NewReader(tc.input))
			if st != nil || !slices.ContainsFunc(tc.want, func(w error) bool { return errors.Is(err, w) }) {
				t.Errorf("got (%+v, %v), want one of %v", st, err, tc.want)
			}
			if errors.Is(err, wire.ErrBadStartup) {
				t.Errorf("end of stream reported as a malformed packet: %v", err)
			}
		})
	}
}

func TestReadStartupPassesOnReadErrors(t *testing.T) {
	boom := errors.New("boom")
	_, err := wire.ReadStartup(io.MultiReader(bytes.NewReader([]byte{0, 0, 0, 8, 4}), &errReader{boom}))
	if !errors.Is(err, boom) {
		t.Errorf("got %v, want %v", err, boom)
	}
}

type errReader struct{ err error }

func (e *errReader) Read([]byte) (int, error) { return 0, e.err }

// encodeStartup re-encodes a decoded StartupMessage body.
func encodeStartup(st *wire.Startup) []byte {
	var kv []string
	for _, p := range st.Params {
		kv = append(kv, p.Name, p.Value)
	}
	for _, o := range st.ProtocolOptions {
		kv = append(kv, o, "")
	}
	return startupBody(st.Version, kv...)
}

func FuzzParseStartup(f *testing.F) {
	// Whole packets, length word included, as clients send them; the
	// corpus under testdata/fuzz/FuzzParseStartup holds more.
	f.Add(packet(requestBody(wire.CodeSSL)))
	f.Add(packet(requestBody(wire.CodeGSSEnc)))
	f.Add(packet(cancelBody(12345, []byte{0x9a, 0x3c, 0x11, 0x07})))
	f.Add(packet(cancelBody(12345, seq(32))))
	f.Add(packet(startupBody(wire.Version30, "user", "postgres", "database", "postgres", "application_name", "psql", "client_encoding", "UTF8")))
	f.Add(packet(startupBody(version32, "user", "bob", "_pq_.protocol_managed_params", "search_path")))
	f.Fuzz(func(t *testing.T, pkt []byte) {
		// ReadStartup sees the packet as sent, length word included.
		st1, err1 := wire.ReadStartup(bytes.NewReader(pkt))
		if err1 == nil {
			checkStartup(t, st1)
		}
		if len(pkt) < 4 {
			return
		}
		// ParseStartup sees the body whatever the length word says, so
		// the fuzzer need not get the length right to reach it.
		body := pkt[4:]
		st, err := wire.ParseStartup(body)
		if err != nil {
			if !errors.Is(err, wire.ErrBadStartup) {
				t.Fatalf("ParseStartup error %v does not wrap ErrBadStartup", err)
			}
			return
		}
		checkStartup(t, st)
		if n := binary.BigEndian.Uint32(pkt); int(n) == len(pkt) && n <= wire.MaxStartLen && err1 != nil {
			t.Fatalf("ReadStartup failed (%v) where ParseStartup succeeded on a well-framed packet", err1)
		}
		if st.Kind != wire.KindStartup {
			return
		}
		re := encodeStartup(st)
		if len(st.ProtocolOptions) == 0 && !bytes.Equal(re, body) {
			// Without "_pq_." options (whose values are dropped) nothing
			// is lost, so the encoding must be the input itself.
			t.Fatalf("re-encoding %q differs from the input %q", re, body)
		}
		again, err := wire.ParseStartup(re)
		if err != nil {
			t.Fatalf("re-encoded startup does not parse: %v", err)
		}
		if again.Version != st.Version || !slices.Equal(again.Params, st.Params) || !slices.Equal(again.ProtocolOptions, st.ProtocolOptions) {
			t.Fatalf("round trip changed the packet:\n got %+v\nwant %+v", again, st)
		}
	})
}

// checkStartup asserts the invariants of a successfully decoded packet.
func checkStartup(t *testing.T, st *wire.Startup) {
	t.Helper()
	switch st.Kind {
	case wire.KindStartup:
		if st.Version>>16 != 3 {
			t.Fatalf("accepted version %#x", st.Version)
		}
		if _, ok := st.Get("user"); !ok {
			t.Fatal("accepted a startup message without user")
		}
		for _, p := range st.Params {
			if p.Name == "" || strings.ContainsRune(p.Name, 0) || strings.ContainsRune(p.Value, 0) || strings.HasPrefix(p.Name, "_pq_.") && len(p.Name) > 5 {
				t.Fatalf("bad param %q=%q", p.Name, p.Value)
			}
		}
	case wire.KindCancel:
		if n := len(st.CancelSecret); n < 4 || n > 256 {
			t.Fatalf("accepted a %d-byte cancel secret", n)
		}
	case wire.KindSSL, wire.KindGSSEnc:
	default:
		t.Fatalf("unknown kind %v", st.Kind)
	}
}
