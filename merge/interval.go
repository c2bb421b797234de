package merge

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math"
	"math/bits"
	"strconv"
)

// interval is PostgreSQL's interval: microseconds, days and months, kept
// apart as the server keeps them.
type interval struct {
	time  int64
	day   int32
	month int32
}

var errIntervalRange = errors.New("interval out of range")

// span returns the interval's sort key as a signed 128-bit number
// (high, low): time + (month*30 + day) days in microseconds, as
// interval_cmp_value computes it.
func (iv interval) span() (int64, uint64) {
	days := int64(iv.month)*30 + int64(iv.day) + iv.time/usecsPerDay
	frac := iv.time % usecsPerDay
	hi, lo := mul64(days, usecsPerDay)
	return add128(hi, lo, frac)
}

// mul64 returns a*b as a signed 128-bit number.
func mul64(a, b int64) (int64, uint64) {
	neg := (a < 0) != (b < 0)
	ua, ub := uint64(a), uint64(b)
	if a < 0 {
		ua = uint64(-a)
	}
	if b < 0 {
		ub = uint64(-b)
	}
	hi, lo := bits.Mul64(ua, ub)
	if neg {
		lo = ^lo + 1
		hi = ^hi
		if lo == 0 {
			hi++
		}
	}
	return int64(hi), lo
}

// add128 returns (hi, lo) + n.
func add128(hi int64, lo uint64, n int64) (int64, uint64) {
	l, carry := bits.Add64(lo, uint64(n), 0)
	h := uint64(hi) + carry
	if n < 0 {
		h += math.MaxUint64 // sign extension of n
	}
	return int64(h), l
}

// decodeInterval reads interval_send's format or interval_out's text in
// IntervalStyle postgres.
func decodeInterval(bin bool, v []byte) (interval, error) {
	if bin {
		if len(v) != 16 {
			return interval{}, errBadValue
		}
		return interval{
			time:  int64(binary.BigEndian.Uint64(v)),
			day:   int32(binary.BigEndian.Uint32(v[8:])),
			month: int32(binary.BigEndian.Uint32(v[12:])),
		}, nil
	}
	return parseIntervalText(v)
}

// parseIntervalText reads the IntervalStyle postgres output: optional
// "N year(s)", "N mon(s)", "N day(s)" parts and an optional signed
// "HH:MM:SS[.ffffff]".
func parseIntervalText(v []byte) (interval, error) {
	var iv interval
	f := bytes.Fields(v)
	if len(f) == 0 {
		return iv, errBadValue
	}
	for i := 0; i < len(f); i++ {
		tok := f[i]
		if bytes.IndexByte(tok, ':') >= 0 {
			if i != len(f)-1 {
				return iv, errBadValue
			}
			neg := false
			switch tok[0] {
			case '-':
				neg, tok = true, tok[1:]
			case '+':
				tok = tok[1:]
			}
			us, rest, ok := parseClock(tok)
			if !ok || len(rest) != 0 {
				return iv, errBadValue
			}
			if neg {
				us = -us
			}
			iv.time = us
			continue
		}
		if i+1 >= len(f) {
			return iv, errBadValue
		}
		n, err := strconv.ParseInt(string(tok), 10, 32)
		if err != nil {
			return iv, errBadValue
		}
		i++
		switch string(f[i]) {
		case "year", "years":
			iv.month += int32(n * 12)
		case "mon", "mons":
			iv.month += int32(n)
		case "day", "days":
			iv.day = int32(n)
		default:
			return iv, errBadValue
		}
	}
	return iv, nil
}

// appendBinary appends interval_send's format.
func (iv interval) appendBinary(dst []byte) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(iv.time))
	dst = binary.BigEndian.AppendUint32(dst, uint32(iv.day))
	return binary.BigEndian.AppendUint32(dst, uint32(iv.month))
}

// appendText appends interval_out's text in IntervalStyle postgres
// (EncodeInterval, INTSTYLE_POSTGRES).
func (iv interval) appendText(dst []byte) []byte {
	year := int64(iv.month / 12)
	mon := int64(iv.month % 12)
	mday := int64(iv.day)
	t := iv.time
	hour := t / 3600000000
	t -= hour * 3600000000
	min := t / 60000000
	t -= min * 60000000
	sec := t / 1000000
	fsec := t - sec*1000000

	isZero, isBefore := true, false
	part := func(value int64, unit string) {
		if value == 0 {
			return
		}
		if !isZero {
			dst = append(dst, ' ')
		}
		if isBefore && value > 0 {
			dst = append(dst, '+')
		}
		dst = strconv.AppendInt(dst, value, 10)
		dst = append(dst, ' ')
		dst = append(dst, unit...)
		if value != 1 {
			dst = append(dst, 's')
		}
		isBefore = value < 0
		isZero = false
	}
	part(year, "year")
	part(mon, "mon")
	part(mday, "day")
	if isZero || hour != 0 || min != 0 || sec != 0 || fsec != 0 {
		minus := hour < 0 || min < 0 || sec < 0 || fsec < 0
		if !isZero {
			dst = append(dst, ' ')
		}
		switch {
		case minus:
			dst = append(dst, '-')
		case isBefore:
			dst = append(dst, '+')
		}
		dst = appendPad2(dst, abs64(hour))
		dst = append(dst, ':')
		dst = appendPad2(dst, abs64(min))
		dst = append(dst, ':')
		dst = appendPad2(dst, abs64(sec))
		if fsec != 0 {
			frac := strconv.AppendInt(nil, 1000000+abs64(fsec), 10)[1:]
			frac = bytes.TrimRight(frac, "0")
			dst = append(dst, '.')
			dst = append(dst, frac...)
		}
	}
	return dst
}

func abs64(n int64) int64 {
	if n < 0 {
		return -n
	}
	return n
}

func appendPad2(dst []byte, n int64) []byte {
	if n < 10 {
		dst = append(dst, '0')
	}
	return strconv.AppendInt(dst, n, 10)
}

// addInterval is interval_pl, failing on overflow as it does.
func addInterval(a, b interval) (interval, error) {
	r := interval{month: a.month + b.month, day: a.day + b.day, time: a.time + b.time}
	if (a.month >= 0) == (b.month >= 0) && (r.month >= 0) != (a.month >= 0) ||
		(a.day >= 0) == (b.day >= 0) && (r.day >= 0) != (a.day >= 0) ||
		(a.time >= 0) == (b.time >= 0) && (r.time >= 0) != (a.time >= 0) {
		return interval{}, errIntervalRange
	}
	return r, nil
}

// tsRound is TSROUND: round to microsecond precision.
func tsRound(j float64) float64 { return math.RoundToEven(j*1e6) / 1e6 }

// divInterval is PostgreSQL 15's interval_div(span, factor), which
// interval_avg uses with the row count.
func divInterval(span interval, factor float64) interval {
	var r interval
	r.month = int32(float64(span.month) / factor)
	r.day = int32(float64(span.day) / factor)
	monthRemainderDays := (float64(span.month)/factor - float64(r.month)) * 30
	monthRemainderDays = tsRound(monthRemainderDays)
	secRemainder := (float64(span.day)/factor - float64(r.day) +
		monthRemainderDays - float64(int32(monthRemainderDays))) * 86400
	secRemainder = tsRound(secRemainder)
	if math.Abs(secRemainder) >= 86400 {
		r.day += int32(secRemainder / 86400)
		secRemainder -= float64(int32(secRemainder/86400)) * 86400
	}
	r.day += int32(monthRemainderDays)
	r.time = int64(math.RoundToEven(float64(span.time)/factor + secRemainder*1e6))
	return r
}
