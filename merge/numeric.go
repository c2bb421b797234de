package merge

import (
	"encoding/binary"
	"errors"
	"math/big"
	"strconv"
)

// This file is PostgreSQL's numeric type as far as merging needs it:
// exact decimals with a display scale, NaN and the infinities (PostgreSQL
// 14 and later), in text and binary wire form, compared, added and divided
// the way numeric_cmp, numeric_add and numeric_div do.

// decSpecial says whether a decimal is finite or one of numeric's special
// values.
type decSpecial uint8

const (
	decFinite decSpecial = iota
	decNaN
	decPInf
	decNInf
)

// decimal is a numeric value: v × 10^-scale, where scale is the display
// scale (dscale) PostgreSQL prints. Values are never modified once built.
type decimal struct {
	special decSpecial
	v       big.Int
	scale   int32
}

// Binary numeric sign words.
const (
	numericPos  = 0x0000
	numericNeg  = 0x4000
	numericNaN  = 0xC000
	numericPInf = 0xD000
	numericNInf = 0xF000
)

var errNumericSyntax = errors.New("invalid numeric value")

var pow10Cache [64]*big.Int

func init() {
	p := big.NewInt(1)
	for i := range pow10Cache {
		pow10Cache[i] = new(big.Int).Set(p)
		p.Mul(p, big.NewInt(10))
	}
}

// pow10 returns 10^n; the result must not be modified.
func pow10(n int32) *big.Int {
	if n >= 0 && int(n) < len(pow10Cache) {
		return pow10Cache[n]
	}
	return new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(n)), nil)
}

// parseDecimal parses numeric text output ("-12.340", "NaN", "Infinity",
// "-Infinity"); it also accepts an exponent as numeric_in does.
func parseDecimal(s []byte) (*decimal, error) {
	d := &decimal{}
	switch string(s) {
	case "NaN":
		d.special = decNaN
		return d, nil
	case "Infinity", "+Infinity":
		d.special = decPInf
		return d, nil
	case "-Infinity":
		d.special = decNInf
		return d, nil
	}
	i := 0
	neg := false
	if i < len(s) && (s[i] == '-' || s[i] == '+') {
		neg = s[i] == '-'
		i++
	}
	digits := make([]byte, 0, len(s))
	scale := int64(0)
	seenDigit, seenPoint := false, false
	for ; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			digits = append(digits, c)
			seenDigit = true
			if seenPoint {
				scale++
			}
		case c == '.' && !seenPoint:
			seenPoint = true
		default:
			goto rest
		}
	}
rest:
	if !seenDigit {
		return nil, errNumericSyntax
	}
	if i < len(s) {
		if s[i] != 'e' && s[i] != 'E' {
			return nil, errNumericSyntax
		}
		e, err := strconv.ParseInt(string(s[i+1:]), 10, 32)
		if err != nil {
			return nil, errNumericSyntax
		}
		scale -= e
	}
	if _, ok := d.v.SetString(string(digits), 10); !ok {
		return nil, errNumericSyntax
	}
	if scale < 0 {
		d.v.Mul(&d.v, pow10(int32(-scale)))
		scale = 0
	}
	if scale > 1<<20 {
		return nil, errNumericSyntax
	}
	d.scale = int32(scale)
	if neg {
		d.v.Neg(&d.v)
	}
	return d, nil
}

// decodeNumericBinary decodes numeric_send's format: ndigits, weight, sign,
// dscale, then ndigits base-10000 digits.
func decodeNumericBinary(b []byte) (*decimal, error) {
	if len(b) < 8 {
		return nil, errNumericSyntax
	}
	nd := int(binary.BigEndian.Uint16(b))
	weight := int(int16(binary.BigEndian.Uint16(b[2:])))
	sign := binary.BigEndian.Uint16(b[4:])
	dscale := int32(binary.BigEndian.Uint16(b[6:]))
	if len(b) != 8+2*nd {
		return nil, errNumericSyntax
	}
	d := &decimal{}
	switch sign {
	case numericNaN:
		d.special = decNaN
		return d, nil
	case numericPInf:
		d.special = decPInf
		return d, nil
	case numericNInf:
		d.special = decNInf
		return d, nil
	case numericPos, numericNeg:
	default:
		return nil, errNumericSyntax
	}
	// The digits are d[0..nd) with d[i] worth 10000^(weight-i); read them
	// as an integer worth 10^(4*(weight-nd+1)) per unit.
	var acc big.Int
	var tmp big.Int
	base := big.NewInt(10000)
	for i := 0; i < nd; i++ {
		acc.Mul(&acc, base)
		acc.Add(&acc, tmp.SetInt64(int64(binary.BigEndian.Uint16(b[8+2*i:]))))
	}
	exp := int32(4 * (weight - nd + 1)) // acc × 10^exp
	switch {
	case exp+dscale >= 0:
		acc.Mul(&acc, pow10(exp+dscale))
		d.scale = dscale
	default:
		// More fraction digits than the display scale: keep them all (never
		// produced by PostgreSQL, which rounds to dscale).
		d.scale = -exp
		var q, r big.Int
		q.QuoRem(&acc, pow10(-exp-dscale), &r)
		if r.Sign() == 0 {
			acc.Set(&q)
			d.scale = dscale
		}
	}
	d.v.Set(&acc)
	if sign == numericNeg {
		d.v.Neg(&d.v)
	}
	return d, nil
}

// appendText appends numeric_out's text for d.
func (d *decimal) appendText(dst []byte) []byte {
	switch d.special {
	case decNaN:
		return append(dst, "NaN"...)
	case decPInf:
		return append(dst, "Infinity"...)
	case decNInf:
		return append(dst, "-Infinity"...)
	}
	var abs big.Int
	abs.Abs(&d.v)
	s := abs.Text(10)
	if d.v.Sign() < 0 {
		dst = append(dst, '-')
	}
	sc := int(d.scale)
	if sc == 0 {
		return append(dst, s...)
	}
	if len(s) <= sc {
		dst = append(dst, '0', '.')
		for i := len(s); i < sc; i++ {
			dst = append(dst, '0')
		}
		return append(dst, s...)
	}
	dst = append(dst, s[:len(s)-sc]...)
	dst = append(dst, '.')
	return append(dst, s[len(s)-sc:]...)
}

// groups returns |d| in base 10000 with leading and trailing zero digits
// stripped, and the weight of the first digit, as make_result leaves a
// numeric. Zero has no digits and weight 0.
func (d *decimal) groups() (digits []uint16, weight int) {
	var abs big.Int
	abs.Abs(&d.v)
	if abs.Sign() == 0 {
		return nil, 0
	}
	s := abs.Text(10)
	sc := int(d.scale)
	var intPart, frac string
	if len(s) > sc {
		intPart, frac = s[:len(s)-sc], s[len(s)-sc:]
	} else {
		intPart = ""
		frac = zeros(sc-len(s)) + s
	}
	if pad := (4 - len(intPart)%4) % 4; pad > 0 {
		intPart = zeros(pad) + intPart
	}
	if pad := (4 - len(frac)%4) % 4; pad > 0 {
		frac += zeros(pad)
	}
	all := intPart + frac
	weight = len(intPart)/4 - 1
	for i := 0; i < len(all); i += 4 {
		n, _ := strconv.Atoi(all[i : i+4])
		digits = append(digits, uint16(n))
	}
	for len(digits) > 0 && digits[0] == 0 {
		digits = digits[1:]
		weight--
	}
	for len(digits) > 0 && digits[len(digits)-1] == 0 {
		digits = digits[:len(digits)-1]
	}
	if len(digits) == 0 {
		weight = 0
	}
	return digits, weight
}

func zeros(n int) string {
	b := make([]byte, n)
	for i := range b {
		b[i] = '0'
	}
	return string(b)
}

// appendBinary appends numeric_send's format for d.
func (d *decimal) appendBinary(dst []byte) []byte {
	var sign uint16
	switch d.special {
	case decNaN:
		sign = numericNaN
	case decPInf:
		sign = numericPInf
	case decNInf:
		sign = numericNInf
	}
	if d.special != decFinite {
		// numeric_send reads the special value's header as a short
		// numeric's, so its display-scale bits come out as 0 (NaN) or
		// 32 (the infinities).
		dst = binary.BigEndian.AppendUint16(dst, 0)
		dst = binary.BigEndian.AppendUint16(dst, 0)
		dst = binary.BigEndian.AppendUint16(dst, sign)
		return binary.BigEndian.AppendUint16(dst, (sign&0x1F80)>>7)
	}
	digits, weight := d.groups()
	if d.v.Sign() < 0 {
		sign = numericNeg
	}
	dst = binary.BigEndian.AppendUint16(dst, uint16(len(digits)))
	dst = binary.BigEndian.AppendUint16(dst, uint16(int16(weight)))
	dst = binary.BigEndian.AppendUint16(dst, sign)
	dst = binary.BigEndian.AppendUint16(dst, uint16(d.scale))
	for _, g := range digits {
		dst = binary.BigEndian.AppendUint16(dst, g)
	}
	return dst
}

// rank orders the special values as numeric_cmp does: -Infinity, finite
// values, Infinity, NaN.
func (d *decimal) rank() int {
	switch d.special {
	case decNInf:
		return 0
	case decPInf:
		return 2
	case decNaN:
		return 3
	}
	return 1
}

// cmpDecimal compares by value, ignoring the display scale; NaN equals NaN
// and is above everything, as in numeric_cmp.
func cmpDecimal(a, b *decimal) int {
	ra, rb := a.rank(), b.rank()
	if ra != rb || ra != 1 {
		return cmpInt(ra, rb)
	}
	if a.scale == b.scale {
		return a.v.Cmp(&b.v)
	}
	var x, y big.Int
	switch {
	case a.scale < b.scale:
		x.Mul(&a.v, pow10(b.scale-a.scale))
		return x.Cmp(&b.v)
	default:
		y.Mul(&b.v, pow10(a.scale-b.scale))
		return a.v.Cmp(&y)
	}
}

// addDecimal returns a+b as numeric_add does: the scale is the larger
// one; NaN wins, and Infinity plus -Infinity is NaN.
func addDecimal(a, b *decimal) *decimal {
	if a.special != decFinite || b.special != decFinite {
		switch {
		case a.special == decNaN || b.special == decNaN:
			return &decimal{special: decNaN}
		case a.special != decFinite && b.special != decFinite && a.special != b.special:
			return &decimal{special: decNaN}
		case a.special != decFinite:
			return &decimal{special: a.special}
		default:
			return &decimal{special: b.special}
		}
	}
	r := &decimal{scale: max(a.scale, b.scale)}
	var x, y big.Int
	x.Mul(&a.v, pow10(r.scale-a.scale))
	y.Mul(&b.v, pow10(r.scale-b.scale))
	r.v.Add(&x, &y)
	return r
}

// decimalFromInt returns n with scale 0.
func decimalFromInt(n *big.Int) *decimal {
	d := &decimal{}
	d.v.Set(n)
	return d
}

// Numeric scale limits and the significant digits a division keeps
// (numeric.c).
const (
	numericMinSigDigits    = 16
	numericMaxDisplayScale = 1000
	decDigits              = 4
)

// divScale is select_div_scale: the result scale numeric_div uses for
// a / b.
func divScale(a, b *decimal) int32 {
	da, wa := a.groups()
	db, wb := b.groups()
	var fa, fb uint16
	if len(da) > 0 {
		fa = da[0]
	} else {
		wa = 0
	}
	if len(db) > 0 {
		fb = db[0]
	} else {
		wb = 0
	}
	qweight := wa - wb
	if fa <= fb {
		qweight--
	}
	rscale := int32(numericMinSigDigits - qweight*decDigits)
	rscale = max(rscale, a.scale, b.scale, 0)
	return min(rscale, numericMaxDisplayScale)
}

// divDecimal returns a / n for a positive count n as numeric_div does:
// rounded half away from zero at select_div_scale's scale. It is how
// numeric_avg and int8_avg finish.
func divDecimal(a *decimal, n int64) *decimal {
	switch a.special {
	case decNaN, decPInf, decNInf:
		return &decimal{special: a.special}
	}
	b := decimalFromInt(big.NewInt(n))
	r := &decimal{scale: divScale(a, b)}
	// a.v × 10^-a.scale / n, scaled by 10^r.scale.
	var num, den, q, rem big.Int
	num.Abs(&a.v)
	num.Mul(&num, pow10(r.scale))
	den.Mul(big.NewInt(n), pow10(a.scale))
	q.QuoRem(&num, &den, &rem)
	rem.Lsh(&rem, 1)
	if rem.Cmp(&den) >= 0 {
		q.Add(&q, big.NewInt(1))
	}
	if a.v.Sign() < 0 {
		q.Neg(&q)
	}
	r.v.Set(&q)
	return r
}

func cmpInt[T int | int64 | uint64 | int32 | float64](a, b T) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
