package wire

import "bytes"

// AppendQuery appends a simple-protocol Query message for sql.
func AppendQuery(dst []byte, sql string) []byte {
	dst = AppendHeader(dst, 'Q', len(sql)+1)
	return append(append(dst, sql...), 0)
}

// AppendCopyFail appends a CopyFail message with msg as its reason.
func AppendCopyFail(dst []byte, msg string) []byte {
	return append(append(AppendHeader(dst, 'f', len(msg)+1), msg...), 0)
}

// ErrorClass returns the SQLSTATE class (its first two characters) of an
// ErrorResponse body without decoding the rest, or "unknown".
func ErrorClass(body []byte) string {
	if c := ErrorField(body, 'C'); len(c) >= 2 {
		return c[:2]
	}
	return "unknown"
}

// ErrorField returns the value of field f of an ErrorResponse (or
// NoticeResponse) body without decoding the rest, or "".
func ErrorField(body []byte, f byte) string {
	for i := 0; i < len(body) && body[i] != 0; {
		field := body[i]
		j := i + 1
		for j < len(body) && body[j] != 0 {
			j++
		}
		if field == f {
			return string(body[i+1 : j])
		}
		i = j + 1
	}
	return ""
}

// CString reads the NUL-terminated string at the start of b and returns
// it and the rest of b; ok is false when b holds no NUL.
func CString(b []byte) (s string, rest []byte, ok bool) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return "", nil, false
	}
	return string(b[:i]), b[i+1:], true
}
