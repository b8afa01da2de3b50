package main

import (
	"errors"
	"strconv"
	"strings"

	"github.com/allot/allot/pkg/events"
)

// numberFlag is a number flag that keeps what was typed. Only text that
// is no number at all is a flag error (exit 2); the number rule is
// checked after the flags parse, naming the field as the endpoint would
// (exit 1), with the number as typed when no float64 holds it (1e400).
type numberFlag struct{ text string }

func newNumberFlag(def string) *numberFlag { return &numberFlag{text: def} }

func (n *numberFlag) String() string { return n.text }

func (n *numberFlag) Set(s string) error {
	if _, err := strconv.ParseFloat(strings.TrimSpace(s), 64); err != nil && !errors.Is(err, strconv.ErrRange) {
		return errors.New("not a number")
	}
	n.text = s
	return nil
}

// value checks the number by the rule within r, as field.
func (n *numberFlag) value(field string, r events.Range) (float64, error) {
	return events.ParseNumber(field, n.text, r)
}
