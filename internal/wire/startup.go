package wire

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"strings"
)

// Request codes carried in the protocol-version field of untyped packets.
const (
	CodeCancel  = 80877102
	CodeSSL     = 80877103
	CodeGSSEnc  = 80877104
	Version30   = 3 << 16
	majorMask   = 0xFFFF0000
	MaxStartLen = 10000 // same bound as Postgres (MAX_STARTUP_PACKET_LENGTH) and pgproto3
)

// StartupKind says which untyped packet a client sent.
type StartupKind int

// Kinds of untyped packets.
const (
	KindStartup StartupKind = iota
	KindSSL
	KindGSSEnc
	KindCancel
)

// Startup is a decoded untyped packet.
type Startup struct {
	Kind StartupKind
	// Version is the requested protocol version (KindStartup only).
	Version uint32
	// Params are the startup parameters in the order sent.
	Params []Param
	// ProtocolOptions are "_pq_."-prefixed options the client asked for;
	// the sidecar supports none and reports them back as unrecognized.
	ProtocolOptions []string
	// CancelPID and CancelSecret identify the session to cancel.
	CancelPID    uint32
	CancelSecret []byte
}

// Param is one startup parameter.
type Param struct{ Name, Value string }

// Get returns the value of the named parameter and whether it was present.
func (s *Startup) Get(name string) (string, bool) {
	for _, p := range s.Params {
		if p.Name == name {
			return p.Value, true
		}
	}
	return "", false
}

// ErrBadStartup marks a malformed untyped packet (SQLSTATE 08P01).
var ErrBadStartup = errors.New("invalid startup packet")

// ErrStartupLength marks an untyped packet whose length word is out of
// bounds; it is also an ErrBadStartup. Postgres closes such a connection
// without answering (it is what a typed message, such as a Terminate sent
// before any startup packet, looks like).
var ErrStartupLength = fmt.Errorf("%w: invalid length", ErrBadStartup)

// ReadStartup reads one untyped packet (length-prefixed, no type byte) of at
// most MaxStartLen bytes and decodes it.
func ReadStartup(r io.Reader) (*Startup, error) {
	pkt, err := ReadPacket(r)
	if err != nil {
		return nil, err
	}
	return ParseStartup(pkt[4:])
}

// ReadPacket reads one untyped packet (a startup message or an SSL, GSSENC
// or cancel request), length word included, refusing lengths outside 8 to
// MaxStartLen with ErrBadStartup.
func ReadPacket(r io.Reader) ([]byte, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[:]))
	if n < 8 || n > MaxStartLen {
		return nil, fmt.Errorf("%w %d", ErrStartupLength, n)
	}
	pkt := make([]byte, n)
	copy(pkt, hdr[:])
	if _, err := io.ReadFull(r, pkt[4:]); err != nil {
		return nil, err
	}
	return pkt, nil
}

// SSLRequest returns the untyped packet that asks a server for TLS.
func SSLRequest() []byte {
	return binary.BigEndian.AppendUint32([]byte{0, 0, 0, 8}, CodeSSL)
}

// ParseStartup decodes the body of an untyped packet (everything after the
// length word).
func ParseStartup(body []byte) (*Startup, error) {
	if len(body) < 4 {
		return nil, fmt.Errorf("%w: too short", ErrBadStartup)
	}
	code := binary.BigEndian.Uint32(body)
	rest := body[4:]
	switch code {
	case CodeSSL, CodeGSSEnc:
		if len(rest) != 0 {
			return nil, fmt.Errorf("%w: trailing bytes after request code", ErrBadStartup)
		}
		if code == CodeSSL {
			return &Startup{Kind: KindSSL}, nil
		}
		return &Startup{Kind: KindGSSEnc}, nil
	case CodeCancel:
		// 4-byte PID, then a secret of 4 bytes (3.0) up to 256 bytes (3.2).
		if len(rest) < 8 || len(rest) > 4+256 {
			return nil, fmt.Errorf("%w: cancel request length", ErrBadStartup)
		}
		return &Startup{Kind: KindCancel, CancelPID: binary.BigEndian.Uint32(rest), CancelSecret: bytes.Clone(rest[4:])}, nil
	}
	if code&majorMask != Version30 {
		return nil, fmt.Errorf("%w: unsupported protocol version %d.%d", ErrBadStartup, code>>16, code&0xFFFF)
	}
	s := &Startup{Kind: KindStartup, Version: code}
	// One string holds every name and value: the parameters are slices
	// of it (a startup message has a handful, each parsed once).
	str := string(rest)
	s.Params = make([]Param, 0, strings.Count(str, "\x00")/2)
	for len(str) > 0 {
		if str[0] == 0 {
			if len(str) != 1 {
				return nil, fmt.Errorf("%w: bytes after terminator", ErrBadStartup)
			}
			str = str[1:]
			break
		}
		name, r2, ok := strings.Cut(str, "\x00")
		if !ok {
			return nil, fmt.Errorf("%w: unterminated parameter name", ErrBadStartup)
		}
		val, r3, ok := strings.Cut(r2, "\x00")
		if !ok {
			return nil, fmt.Errorf("%w: unterminated value for %q", ErrBadStartup, name)
		}
		str = r3
		if len(str) == 0 {
			return nil, fmt.Errorf("%w: missing terminator", ErrBadStartup)
		}
		if strings.HasPrefix(name, "_pq_.") && len(name) > 5 {
			s.ProtocolOptions = append(s.ProtocolOptions, name)
			continue
		}
		s.Params = append(s.Params, Param{Name: name, Value: val})
	}
	if len(str) != 0 {
		return nil, fmt.Errorf("%w: missing terminator", ErrBadStartup)
	}
	if _, ok := s.Get("user"); !ok {
		return nil, fmt.Errorf("%w: no user name", ErrBadStartup)
	}
	return s, nil
}
