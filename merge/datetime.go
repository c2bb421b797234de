package merge

import (
	"bytes"
	"errors"
	"math"
)

// This file reads the text output of date, time, timestamp and
// timestamptz in DateStyle ISO into the integers their binary form carries
// (days, or microseconds, since 2000-01-01), so that text values compare
// as the server compares them. Other DateStyles are refused by the caller.

var errBadValue = errors.New("invalid value")

// Infinite dates and timestamps, as PostgreSQL stores them.
const (
	dateNoBegin = math.MinInt32
	dateNoEnd   = math.MaxInt32
	tsNoBegin   = math.MinInt64
	tsNoEnd     = math.MaxInt64
	usecsPerDay = 86400 * 1000000
)

// daysFromCivil returns the days from 1970-01-01 to the proleptic
// Gregorian date y-m-d (astronomical year numbering: 1 BC is year 0).
func daysFromCivil(y, m, d int64) int64 {
	if m <= 2 {
		y--
	}
	era := y
	if era < 0 {
		era -= 399
	}
	era /= 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return era*146097 + doe - 719468
}

// pgEpochDays is daysFromCivil(2000, 1, 1).
var pgEpochDays = daysFromCivil(2000, 1, 1)

// scanInt reads an unsigned decimal integer of at least one digit.
func scanInt(s []byte) (n int64, rest []byte, ok bool) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' && i < 18 {
		n = n*10 + int64(s[i]-'0')
		i++
	}
	return n, s[i:], i > 0
}

// parseDateBody reads "YYYY-MM-DD" and returns the days since 2000-01-01
// for year y (not yet adjusted for BC) and the rest of s.
func parseYMD(s []byte) (y, m, d int64, rest []byte, ok bool) {
	if y, s, ok = scanInt(s); !ok || len(s) == 0 || s[0] != '-' {
		return 0, 0, 0, nil, false
	}
	if m, s, ok = scanInt(s[1:]); !ok || len(s) == 0 || s[0] != '-' || m < 1 || m > 12 {
		return 0, 0, 0, nil, false
	}
	if d, s, ok = scanInt(s[1:]); !ok || d < 1 || d > 31 {
		return 0, 0, 0, nil, false
	}
	return y, m, d, s, true
}

// cutBC removes a trailing " BC" and reports whether it was there.
func cutBC(s []byte) ([]byte, bool) {
	if bytes.HasSuffix(s, []byte(" BC")) {
		return s[:len(s)-3], true
	}
	return s, false
}

func astronomical(y int64, bc bool) int64 {
	if bc {
		return 1 - y
	}
	return y
}

// parseDateText reads date_out's ISO text.
func parseDateText(s []byte) (int32, error) {
	switch string(s) {
	case "infinity":
		return dateNoEnd, nil
	case "-infinity":
		return dateNoBegin, nil
	}
	s, bc := cutBC(s)
	y, m, d, rest, ok := parseYMD(s)
	if !ok || len(rest) != 0 {
		return 0, errBadValue
	}
	return int32(daysFromCivil(astronomical(y, bc), m, d) - pgEpochDays), nil
}

// parseClock reads "HH:MM:SS[.ffffff]" and returns microseconds.
func parseClock(s []byte) (int64, []byte, bool) {
	h, s, ok := scanInt(s)
	if !ok || len(s) == 0 || s[0] != ':' {
		return 0, nil, false
	}
	mi, s, ok := scanInt(s[1:])
	if !ok || len(s) == 0 || s[0] != ':' {
		return 0, nil, false
	}
	sec, s, ok := scanInt(s[1:])
	if !ok {
		return 0, nil, false
	}
	us := ((h*60+mi)*60 + sec) * 1000000
	if len(s) > 0 && s[0] == '.' {
		s = s[1:]
		scale := int64(100000)
		i := 0
		for ; i < len(s) && s[i] >= '0' && s[i] <= '9'; i++ {
			if scale == 0 {
				return 0, nil, false
			}
			us += int64(s[i]-'0') * scale
			scale /= 10
		}
		if i == 0 {
			return 0, nil, false
		}
		s = s[i:]
	}
	return us, s, true
}

// parseTimeText reads time_out's text.
func parseTimeText(s []byte) (int64, error) {
	us, rest, ok := parseClock(s)
	if !ok || len(rest) != 0 {
		return 0, errBadValue
	}
	return us, nil
}

// parseTimestampText reads timestamp_out's or, with tz, timestamptz_out's
// ISO text and returns microseconds since 2000-01-01 (UTC for tz).
func parseTimestampText(s []byte, tz bool) (int64, error) {
	switch string(s) {
	case "infinity":
		return tsNoEnd, nil
	case "-infinity":
		return tsNoBegin, nil
	}
	s, bc := cutBC(s)
	y, m, d, s, ok := parseYMD(s)
	if !ok || len(s) == 0 || s[0] != ' ' {
		return 0, errBadValue
	}
	us, s, ok := parseClock(s[1:])
	if !ok {
		return 0, errBadValue
	}
	if tz {
		// The zone is +HH, +HH:MM or +HH:MM:SS (or -).
		if len(s) == 0 || (s[0] != '+' && s[0] != '-') {
			return 0, errBadValue
		}
		neg := s[0] == '-'
		off, rest, ok := scanInt(s[1:])
		if !ok {
			return 0, errBadValue
		}
		off *= 3600
		for _, mul := range []int64{60, 1} {
			if len(rest) == 0 || rest[0] != ':' {
				break
			}
			var n int64
			if n, rest, ok = scanInt(rest[1:]); !ok {
				return 0, errBadValue
			}
			off += n * mul
		}
		if neg {
			off = -off
		}
		us -= off * 1000000
		s = rest
	}
	if len(s) != 0 {
		return 0, errBadValue
	}
	days := daysFromCivil(astronomical(y, bc), m, d) - pgEpochDays
	return days*usecsPerDay + us, nil
}
