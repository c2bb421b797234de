package merge

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/brownie/brownie-sidecar/internal/pgerr"
)

// field is one column of a RowDescription.
type field struct {
	name   []byte // without the NUL
	table  uint32
	attnum int16
	typ    uint32
	typlen int16
	typmod int32
	format int16
}

// protocolError reports a malformed message body handed to the package: a
// bug in the caller or the upstream, never in the client's statement.
func protocolError(format string, args ...any) error {
	return pgerr.Errorf(pgerr.ProtocolViolation, "merge: "+format, args...)
}

// parseRowDesc decodes a RowDescription body (the bytes after the 5-byte
// header). The names alias b.
func parseRowDesc(b []byte) ([]field, error) {
	if len(b) < 2 {
		return nil, protocolError("row description of %d bytes", len(b))
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	fs := make([]field, n)
	for i := range fs {
		z := bytes.IndexByte(b, 0)
		if z < 0 || len(b) < z+1+18 {
			return nil, protocolError("row description truncated in field %d", i+1)
		}
		f := &fs[i]
		f.name = b[:z]
		b = b[z+1:]
		f.table = binary.BigEndian.Uint32(b)
		f.attnum = int16(binary.BigEndian.Uint16(b[4:]))
		f.typ = binary.BigEndian.Uint32(b[6:])
		f.typlen = int16(binary.BigEndian.Uint16(b[10:]))
		f.typmod = int32(binary.BigEndian.Uint32(b[12:]))
		f.format = int16(binary.BigEndian.Uint16(b[16:]))
		b = b[18:]
	}
	if len(b) != 0 {
		return nil, protocolError("row description has %d trailing bytes", len(b))
	}
	return fs, nil
}

// appendRowDesc appends the RowDescription body for fs to dst.
func appendRowDesc(dst []byte, fs []field) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(fs)))
	for _, f := range fs {
		dst = append(dst, f.name...)
		dst = append(dst, 0)
		dst = binary.BigEndian.AppendUint32(dst, f.table)
		dst = binary.BigEndian.AppendUint16(dst, uint16(f.attnum))
		dst = binary.BigEndian.AppendUint32(dst, f.typ)
		dst = binary.BigEndian.AppendUint16(dst, uint16(f.typlen))
		dst = binary.BigEndian.AppendUint32(dst, uint32(f.typmod))
		dst = binary.BigEndian.AppendUint16(dst, uint16(f.format))
	}
	return dst
}

// splitRow decodes a DataRow body into its column values, reusing cols. A
// NULL is a nil slice; every other value, even empty, is non-nil and
// aliases b. It fails unless the row has exactly want columns.
func splitRow(b []byte, want int, cols [][]byte) ([][]byte, error) {
	if len(b) < 2 {
		return nil, protocolError("data row of %d bytes", len(b))
	}
	n := int(binary.BigEndian.Uint16(b))
	if n != want {
		return nil, protocolError("data row has %d columns, the row description %d", n, want)
	}
	cols = cols[:0]
	off := 2
	for i := 0; i < n; i++ {
		if len(b)-off < 4 {
			return nil, protocolError("data row truncated in column %d", i+1)
		}
		l := int32(binary.BigEndian.Uint32(b[off:]))
		off += 4
		if l < 0 {
			cols = append(cols, nil)
			continue
		}
		if int(l) > len(b)-off {
			return nil, protocolError("data row truncated in column %d", i+1)
		}
		cols = append(cols, b[off:off+int(l):off+int(l)])
		off += int(l)
	}
	if off != len(b) {
		return nil, protocolError("data row has %d trailing bytes", len(b)-off)
	}
	return cols, nil
}

// appendDataRow appends the DataRow body holding cols to dst.
func appendDataRow(dst []byte, cols [][]byte) []byte {
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(cols)))
	for _, c := range cols {
		if c == nil {
			dst = binary.BigEndian.AppendUint32(dst, 0xFFFFFFFF)
			continue
		}
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(c)))
		dst = append(dst, c...)
	}
	return dst
}

// formatOf returns the format code for column i of n under the Bind rule:
// no codes means text, one code applies to every column, otherwise one per
// column.
func formatOf(codes []int16, i int) int16 {
	switch len(codes) {
	case 0:
		return 0
	case 1:
		return codes[0]
	}
	if i < len(codes) {
		return codes[i]
	}
	return 0
}

// checkFormats validates a list of format codes for n values.
func checkFormats(what string, codes []int16, n int) error {
	if len(codes) > 1 && len(codes) != n {
		return pgerr.Errorf(pgerr.ProtocolViolation, "merge: %d %s format codes for %d columns", len(codes), what, n)
	}
	for _, c := range codes {
		if c != 0 && c != 1 {
			return pgerr.Errorf(pgerr.ProtocolViolation, "merge: unsupported %s format code %d", what, c)
		}
	}
	return nil
}

func typeName(oid uint32) string {
	if n, ok := typeNames[oid]; ok {
		return n
	}
	return fmt.Sprintf("oid %d", oid)
}
