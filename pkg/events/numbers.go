package events

import (
	"bytes"
	"errors"
	"math"
	"strconv"
	"strings"
)

// The number rule. Every number that enters allot (an event's value, an
// authorize amount, a grant or override, a rate-limit cost) is checked
// here, at the edge where it enters, by [CheckNumber]:
//
//   - it is finite and within the field's [Range], never beyond
//     ±[MaxNumber] (1e15);
//   - it has at most [MaxDecimals] (6) digits after the decimal point;
//   - it has at most [MaxDigits] (15) significant digits.
//
// Why: such a number is exactly the decimal it was written as (a float64
// holds 15 significant digits exactly), and the meter adds these numbers
// exactly, as whole units and millionths (see the meter's numbers.lua),
// so a counter or a grant's used is the exact sum of what was applied,
// on Redis and on the dev store alike. 1e15 leaves room: the sum of two
// numbers in range is below 2^53, where float64 still counts in ones.
// What the meter keeps is bounded by the same 1e15: an event that would
// take a counter or a grant past it is refused, changing nothing.
//
// -0 is 0. The rule is judged on the float64 a JSON number parses to, so
// 2^53+1 is judged as 2^53, and 1e400, which no float64 holds, is refused
// with its own text.
const (
	// MaxNumber is the largest magnitude of any number allot takes or
	// keeps.
	MaxNumber = 1e15
	// MaxDecimals is how many digits a number may have after the
	// decimal point.
	MaxDecimals = 6
	// MaxDigits is how many significant digits a number may have.
	MaxDigits = 15
)

// A Range is the part of the number rule one field takes.
type Range struct {
	Min, Max float64
	// Integer refuses fractions.
	Integer bool
}

// The ranges of the contract's number fields.
var (
	// ValueRange is an event's data.value; the metric's style decides
	// the sign (only a gauge may go below 0).
	ValueRange = Range{Min: -MaxNumber, Max: MaxNumber}
	// AmountRange is an authorize amount and a grant (a limit).
	AmountRange = Range{Min: 0, Max: MaxNumber}
	// CostRange is a rate-limit check's cost.
	CostRange = Range{Min: 0, Max: MaxCost, Integer: true}
)

// CheckNumber returns a [ValidationError] naming field, the value and the
// range unless v obeys the number rule within r, e.g.
// "amount: must be a number from 0 to 1e15 (got 1e+20)".
func CheckNumber(field string, v float64, r Range) error {
	if rule := numberRule(v, r); rule != "" {
		return invalid(field, "%s (got %s)", rule, numberText(v))
	}
	return nil
}

// CheckAmount checks an authorize amount or a grant: [CheckNumber] with
// [AmountRange].
func CheckAmount(field string, v float64) error {
	return CheckNumber(field, v, AmountRange)
}

// ParseNumber reads a number written as text (a command-line flag, a
// form field) and checks it by the rule within r, refusing with
// CheckNumber's words; a number no float64 holds (1e400) is refused as
// written. -0 is 0.
func ParseNumber(field, s string, r Range) (float64, error) {
	s = strings.TrimSpace(s)
	v, err := strconv.ParseFloat(s, 64)
	switch {
	case errors.Is(err, strconv.ErrRange): // past float64's range; below it is 0
		return 0, literalError(field, s, r)
	case err != nil:
		return 0, invalid(field, "must be a number (got %s)", quoteShort(s))
	}
	v = positiveZero(v)
	if err := CheckNumber(field, v, r); err != nil {
		return 0, err
	}
	return v, nil
}

// numberRule returns the rule v breaks, or "" when it obeys.
func numberRule(v float64, r Range) string {
	if math.IsNaN(v) || v < r.Min || v > r.Max { // false for NaN, so test it
		return r.text()
	}
	if v == math.Trunc(v) {
		// An integer within ±1e15 has at most 15 significant digits
		// (1e15 itself has one).
		if math.Abs(v) > MaxNumber {
			return r.text()
		}
		return ""
	}
	if r.Integer {
		return r.text()
	}
	digits, decimals := decimalShape(v)
	switch {
	case decimals > MaxDecimals:
		return r.text() + " with at most " + strconv.Itoa(MaxDecimals) + " decimal places"
	case digits > MaxDigits:
		return r.text() + " of at most " + strconv.Itoa(MaxDigits) + " significant digits"
	}
	return ""
}

// text is the range as a rule: "must be a number from 0 to 1e15".
func (r Range) text() string {
	kind := "a number"
	if r.Integer {
		kind = "a whole number"
	}
	return "must be " + kind + " from " + boundText(r.Min) + " to " + boundText(r.Max)
}

// decimalShape returns how many significant digits the shortest decimal
// of v has, and how many of them follow the decimal point.
func decimalShape(v float64) (digits, decimals int) {
	var buf [32]byte
	b := strconv.AppendFloat(buf[:0], math.Abs(v), 'e', -1, 64) // d.ddde±XX
	e := bytes.IndexByte(b, 'e')
	exp, _ := strconv.Atoi(string(b[e+1:]))
	digits = e
	if e > 1 {
		digits-- // the point
	}
	return digits, max(0, digits-1-exp)
}

// numberText writes v as JSON carries it, and NaN and infinities by name.
func numberText(v float64) string {
	switch {
	case math.IsNaN(v):
		return "NaN"
	case math.IsInf(v, 1):
		return "+Inf"
	case math.IsInf(v, -1):
		return "-Inf"
	}
	return string(appendFloat(nil, v))
}

// boundText writes a range's bound: 1e15 rather than 1000000000000000.
func boundText(v float64) string {
	if a := strconv.FormatFloat(math.Abs(v), 'e', -1, 64); math.Abs(v) >= 1e9 && strings.HasPrefix(a, "1e+") {
		if v < 0 {
			return "-1e" + a[3:]
		}
		return "1e" + a[3:]
	}
	return numberText(v)
}

// literalError returns the rule of r as it applies to a JSON number that
// no Go value of its field holds (1e400 anywhere, 1.5 or 1e20 for an
// integer field), for a ValidationError that quotes the literal.
func literalError(field, literal string, r Range) error {
	return invalid(field, "%s (got %s)", r.text(), quoteNumber(literal))
}

// quoteNumber cuts a number's text to a readable length.
func quoteNumber(s string) string {
	const max = 40
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

// checkKept checks a number the meter kept (a grant's used, its limit)
// as it arrives in a notice: finite, from 0 to MaxNumber.
func checkKept(field string, v float64) error {
	if math.IsNaN(v) || v < 0 || v > MaxNumber {
		return invalid(field, "%s (got %s)", AmountRange.text(), numberText(v))
	}
	return nil
}

// thresholdRange is a notice's threshold, a percentage, for a literal
// no float64 holds; Validate says "above 0".
var thresholdRange = Range{Min: 0, Max: 1000}

// positiveZero returns v, with -0 as 0.
func positiveZero(v float64) float64 {
	if v == 0 {
		return 0
	}
	return v
}

// RoundNumber returns v rounded to the nearest number the rule takes:
// at most 6 decimal places and 15 significant digits. It leaves NaN,
// infinities and numbers beyond ±1e15 as they are, for CheckNumber to
// refuse. Apps that compute a value (seconds from a duration, a ratio)
// round it with RoundNumber before publishing.
func RoundNumber(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > MaxNumber || v == math.Trunc(v) {
		return v
	}
	places := MaxDecimals
	if whole := len(strconv.FormatFloat(math.Abs(math.Trunc(v)), 'f', 0, 64)); v != 0 && math.Abs(v) >= 1 {
		places = min(places, MaxDigits-whole)
	}
	r, _ := strconv.ParseFloat(strconv.FormatFloat(v, 'f', max(places, 0), 64), 64)
	return positiveZero(r)
}
