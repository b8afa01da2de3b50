package events

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"
)

// edgeNumbers are the numbers a user can type that sit on or past an
// edge of the rule, with what CheckNumber says of each under
// ValueRange, AmountRange and CostRange ("" accepts).
var edgeNumbers = []struct {
	name          string
	v             float64
	value, amount string
	cost          string
}{
	{"NaN", math.NaN(), "must be a number from -1e15 to 1e15 (got NaN)", "must be a number from 0 to 1e15 (got NaN)", "must be a whole number from 0 to 1000000 (got NaN)"},
	{"+Inf", math.Inf(1), "must be a number from -1e15 to 1e15 (got +Inf)", "must be a number from 0 to 1e15 (got +Inf)", "must be a whole number from 0 to 1000000 (got +Inf)"},
	{"-Inf", math.Inf(-1), "must be a number from -1e15 to 1e15 (got -Inf)", "must be a number from 0 to 1e15 (got -Inf)", "must be a whole number from 0 to 1000000 (got -Inf)"},
	{"-0", math.Copysign(0, -1), "", "", ""},
	{"0", 0, "", "", ""},
	{"1e-300", 1e-300, "must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-300)", "must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-300)", "must be a whole number from 0 to 1000000 (got 1e-300)"},
	{"5e-324", 5e-324, "must be a number from -1e15 to 1e15 with at most 6 decimal places (got 5e-324)", "must be a number from 0 to 1e15 with at most 6 decimal places (got 5e-324)", "must be a whole number from 0 to 1000000 (got 5e-324)"},
	{"1e-7", 1e-7, "must be a number from -1e15 to 1e15 with at most 6 decimal places (got 1e-7)", "must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-7)", "must be a whole number from 0 to 1000000 (got 1e-7)"},
	{"1e-6", 1e-6, "", "", "must be a whole number from 0 to 1000000 (got 0.000001)"},
	{"0.1", 0.1, "", "", "must be a whole number from 0 to 1000000 (got 0.1)"},
	{"-2.5", -2.5, "", "must be a number from 0 to 1e15 (got -2.5)", "must be a whole number from 0 to 1000000 (got -2.5)"},
	{"1e6", 1e6, "", "", ""},
	{"1e6+1", 1e6 + 1, "", "", "must be a whole number from 0 to 1000000 (got 1000001)"},
	{"15 digits", 123456789.123456, "", "", "must be a whole number from 0 to 1000000 (got 123456789.123456)"},
	{"16 digits", 1234567890.123456, "must be a number from -1e15 to 1e15 of at most 15 significant digits (got 1234567890.123456)", "must be a number from 0 to 1e15 of at most 15 significant digits (got 1234567890.123456)", "must be a whole number from 0 to 1000000 (got 1234567890.123456)"},
	{"1e15-1", 1e15 - 1, "", "", "must be a whole number from 0 to 1000000 (got 999999999999999)"},
	{"1e15", 1e15, "", "", "must be a whole number from 0 to 1000000 (got 1000000000000000)"},
	{"-1e15", -1e15, "", "must be a number from 0 to 1e15 (got -1000000000000000)", "must be a whole number from 0 to 1000000 (got -1000000000000000)"},
	{"1e15+1", 1e15 + 1, "must be a number from -1e15 to 1e15 (got 1000000000000001)", "must be a number from 0 to 1e15 (got 1000000000000001)", "must be a whole number from 0 to 1000000 (got 1000000000000001)"},
	{"1e15+0.5", 1e15 + 0.5, "must be a number from -1e15 to 1e15 (got 1000000000000000.5)", "must be a number from 0 to 1e15 (got 1000000000000000.5)", "must be a whole number from 0 to 1000000 (got 1000000000000000.5)"},
	{"2^53", 1 << 53, "must be a number from -1e15 to 1e15 (got 9007199254740992)", "must be a number from 0 to 1e15 (got 9007199254740992)", "must be a whole number from 0 to 1000000 (got 9007199254740992)"},
	{"2^53+1", 1<<53 + 1, "must be a number from -1e15 to 1e15 (got 9007199254740992)", "must be a number from 0 to 1e15 (got 9007199254740992)", "must be a whole number from 0 to 1000000 (got 9007199254740992)"},
	{"1e20+1", 1e20 + 1, "must be a number from -1e15 to 1e15 (got 100000000000000000000)", "must be a number from 0 to 1e15 (got 100000000000000000000)", "must be a whole number from 0 to 1000000 (got 100000000000000000000)"},
	{"1e308", 1e308, "must be a number from -1e15 to 1e15 (got 1e+308)", "must be a number from 0 to 1e15 (got 1e+308)", "must be a whole number from 0 to 1000000 (got 1e+308)"},
	{"-1e308", -1e308, "must be a number from -1e15 to 1e15 (got -1e+308)", "must be a number from 0 to 1e15 (got -1e+308)", "must be a whole number from 0 to 1000000 (got -1e+308)"},
}

func TestCheckNumberEdges(t *testing.T) {
	for _, tc := range edgeNumbers {
		t.Run(tc.name, func(t *testing.T) {
			for _, c := range []struct {
				r     Range
				field string
				want  string
			}{
				{ValueRange, "data.value", tc.value},
				{AmountRange, "amount", tc.amount},
				{CostRange, "cost", tc.cost},
			} {
				err := CheckNumber(c.field, tc.v, c.r)
				if c.want == "" {
					if err != nil {
						t.Errorf("%s: refused: %v", c.field, err)
					}
					checkExactDecimal(t, tc.v)
					continue
				}
				var v *ValidationError
				if !errors.As(err, &v) || !errors.Is(err, ErrInvalid) || v.Field != c.field || v.Rule != c.want {
					t.Errorf("%s: got %v, want %q", c.field, err, c.field+": "+c.want)
				}
			}
		})
	}
}

// checkExactDecimal fails t unless v is a number the rule takes whose
// shortest decimal is exactly what the meter's Lua adds: digits, an
// optional point and at most 6 more digits, at most 15 significant
// digits, and it parses back to v.
func checkExactDecimal(t *testing.T, v float64) {
	t.Helper()
	s := strconv.FormatFloat(math.Abs(v), 'f', -1, 64)
	whole, frac, _ := strings.Cut(s, ".")
	sig := strings.TrimLeft(whole+frac, "0")
	if frac == "" {
		sig = strings.TrimRight(sig, "0")
	}
	if math.Abs(v) > MaxNumber || len(frac) > MaxDecimals || len(sig) > MaxDigits || strings.ContainsAny(s, "e+-") {
		t.Fatalf("%v is taken but its decimal %q is not exact", v, s)
	}
	if back, err := strconv.ParseFloat(s, 64); err != nil || back != math.Abs(v) {
		t.Fatalf("%q parses back to %v, not %v", s, back, v)
	}
}

func TestRoundNumber(t *testing.T) {
	for _, tc := range []struct{ in, want float64 }{
		{0.1234567, 0.123457},
		{1.2345678901234567, 1.234568},
		{1234567890.1234567, 1234567890.12346},
		{123456789012345.67, 123456789012346},
		{-0.0000004, 0},
		{2.5, 2.5},
		{1e15, 1e15},
	} {
		got := RoundNumber(tc.in)
		if got != tc.want || math.Signbit(got) != math.Signbit(tc.want) {
			t.Errorf("RoundNumber(%v) = %v, want %v", tc.in, got, tc.want)
		}
		if err := CheckNumber("v", got, ValueRange); err != nil {
			t.Errorf("RoundNumber(%v) = %v, which the rule refuses: %v", tc.in, got, err)
		}
	}
	for _, v := range []float64{math.NaN(), math.Inf(1), 1e20} {
		if got := RoundNumber(v); !(got == v || math.IsNaN(v) && math.IsNaN(got)) {
			t.Errorf("RoundNumber(%v) = %v, want it unchanged for CheckNumber to refuse", v, got)
		}
	}
}

// FuzzCheckNumber holds CheckNumber to a second reading of the rule, on
// the plain decimal instead of the exponent form, and RoundNumber to
// always produce what CheckNumber takes.
func FuzzCheckNumber(f *testing.F) {
	for _, tc := range edgeNumbers {
		f.Add(math.Float64bits(tc.v))
	}
	f.Fuzz(func(t *testing.T, bits uint64) {
		v := math.Float64frombits(bits)
		err := CheckNumber("v", v, ValueRange)
		if (err == nil) != obeysByDecimal(v) {
			t.Fatalf("CheckNumber(%v) = %v, the decimal reading disagrees", v, err)
		}
		if err == nil {
			checkExactDecimal(t, v)
		}
		if r := RoundNumber(v); !math.IsNaN(v) && !math.IsInf(v, 0) && math.Abs(v) <= MaxNumber {
			if err := CheckNumber("v", r, ValueRange); err != nil {
				t.Fatalf("RoundNumber(%v) = %v: %v", v, r, err)
			}
			if math.Abs(r-v) > 5.000001e-7*max(1, math.Abs(v)/1e8) { // half a unit of the last place kept
				t.Fatalf("RoundNumber(%v) = %v moved too far", v, r)
			}
		}
	})
}

// obeysByDecimal is the rule read on strconv's plain decimal of v.
func obeysByDecimal(v float64) bool {
	if math.IsNaN(v) || math.IsInf(v, 0) || math.Abs(v) > MaxNumber {
		return false
	}
	whole, frac, _ := strings.Cut(strconv.FormatFloat(math.Abs(v), 'f', -1, 64), ".")
	sig := strings.TrimLeft(whole+frac, "0")
	if frac == "" {
		sig = strings.TrimRight(sig, "0")
	}
	return len(frac) <= MaxDecimals && len(sig) <= MaxDigits
}

// FuzzDecodeRequest: any body decodes into the requests that carry
// numbers, or fails with a ValidationError; whatever decodes passes
// Validate, and its numbers obey the rule.
func FuzzDecodeRequest(f *testing.F) {
	for _, s := range []string{
		`{"id":"a","metric":"m","amount":1}`, `{"id":"a","metric":"m","amount":1e400}`, `{"id":"a","metric":"m","amount":-0}`,
		`{"id":"a","metric":"m","amount":1e15}`, `{"id":"a","metric":"m","amount":1000000000000001}`, `{"id":"a","metric":"m","amount":0.0000001}`,
		`{"set":{"m":5,"n":0.5}}`, `{"set":{"m":1e400}}`, `{"set":{"m":9007199254740993}}`, `{"unset":["m"]}`,
		`{"service":"s","cost":0}`, `{"service":"s","cost":1e308}`, `{"cost":1.5}`, `{"cost":-1}`, `{"cost":1000000}`,
		``, `{`, `[]`, `{"amount":"1"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(v Validator, numbers func() []float64) {
			err := DecodeRequest(body, v)
			if err != nil {
				var ve *ValidationError
				if !errors.As(err, &ve) {
					t.Fatalf("DecodeRequest(%q) error %v is %T, not a *ValidationError", body, err, err)
				}
				return
			}
			if err := v.Validate(); err != nil {
				t.Fatalf("DecodeRequest(%q) accepted what Validate refuses: %v", body, err)
			}
			for _, n := range numbers() {
				checkExactDecimal(t, n)
			}
		}
		var a AuthorizeRequest
		check(&a, func() []float64 { return []float64{a.Amount} })
		var g GrantsRequest
		check(&g, func() []float64 {
			var out []float64
			for _, v := range g.Set {
				out = append(out, v)
			}
			return out
		})
		var c CheckRequest
		check(&c, func() []float64 {
			if n := c.CostOrDefault(); n < 0 || n > MaxCost {
				t.Fatalf("cost %d accepted", n)
			}
			return nil
		})
	})
}

func TestParseNumber(t *testing.T) {
	for _, tc := range []struct {
		text string
		r    Range
		want float64
		err  string
	}{
		{"1", AmountRange, 1, ""},
		{" 2.5 ", AmountRange, 2.5, ""},
		{"-0", AmountRange, 0, ""},
		{"1e-400", AmountRange, 0, ""},
		{"1e6", CostRange, 1e6, ""},
		{"1e15", ValueRange, 1e15, ""},
		{"1e400", AmountRange, 0, "amount: must be a number from 0 to 1e15 (got 1e400)"},
		{"-1e400", ValueRange, 0, "amount: must be a number from -1e15 to 1e15 (got -1e400)"},
		{"1e16", AmountRange, 0, "amount: must be a number from 0 to 1e15 (got 10000000000000000)"},
		{"1.5", CostRange, 0, "amount: must be a whole number from 0 to 1000000 (got 1.5)"},
		{"NaN", AmountRange, 0, "amount: must be a number from 0 to 1e15 (got NaN)"},
		{"0.1234567", AmountRange, 0, "amount: must be a number from 0 to 1e15 with at most 6 decimal places (got 0.1234567)"},
		{"lots", AmountRange, 0, `amount: must be a number (got "lots")`},
	} {
		v, err := ParseNumber("amount", tc.text, tc.r)
		if tc.err == "" {
			if err != nil || v != tc.want || math.Signbit(v) {
				t.Errorf("ParseNumber(%q) = %v, %v; want %v", tc.text, v, err, tc.want)
			}
			continue
		}
		if err == nil || err.Error() != tc.err || !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseNumber(%q) = %v, %v; want %q", tc.text, v, err, tc.err)
		}
	}
}
