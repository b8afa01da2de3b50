// Package policy turns a role's grant, a tree of composable requirements
// (flask-allows' And, Or and Not, in YAML), into the publish and subscribe
// permissions of a NATS user, so that nats-server enforces the role on
// every message and no allot code runs per message.
//
// A requirement is a predicate over an operation: publishing to a subject,
// subscribing to one, at a time. Leaves name an action and a subject
// pattern in which "{uid}" stands for each uid the key may act for
// (publish: "usage.{uid}"); "request" is publishing a request (its reply
// comes to the key's own inbox, which every role may read); "respond" lets
// a responder answer the requests it receives, as services do; "valid"
// bounds the time. all_of, any_of and not combine them.
//
// Compile is exact or fails: the permissions it returns allow precisely
// the operations the tree allows (a test checks it against Allows, the
// tree's own meaning, on random trees and subjects), or it says which part
// NATS's allow and deny lists cannot express. It never grants more than
// the tree to make a shape fit.
package policy

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Requirement is one node of a grant: exactly one field is set.
type Requirement struct {
	AllOf []Requirement `yaml:"all_of,omitempty" json:"all_of,omitempty"`
	AnyOf []Requirement `yaml:"any_of,omitempty" json:"any_of,omitempty"`
	Not   *Requirement  `yaml:"not,omitempty" json:"not,omitempty"`

	Publish   string  `yaml:"publish,omitempty" json:"publish,omitempty"`
	Subscribe string  `yaml:"subscribe,omitempty" json:"subscribe,omitempty"`
	Request   string  `yaml:"request,omitempty" json:"request,omitempty"`
	Respond   bool    `yaml:"respond,omitempty" json:"respond,omitempty"`
	Valid     *Window `yaml:"valid,omitempty" json:"valid,omitempty"`
}

// Window is a span of time: from From (inclusive) until Until
// (exclusive); a zero end is open.
type Window struct {
	From  time.Time `yaml:"from,omitempty" json:"from,omitempty"`
	Until time.Time `yaml:"until,omitempty" json:"until,omitempty"`
}

// Contains reports whether t is inside w.
func (w Window) Contains(t time.Time) bool {
	return (w.From.IsZero() || !t.Before(w.From)) && (w.Until.IsZero() || t.Before(w.Until))
}

// Kind is what an operation does with its subject.
type Kind uint8

const (
	Pub Kind = iota // publishing, including a request
	Sub             // subscribing
)

func (k Kind) String() string {
	if k == Sub {
		return "subscribe"
	}
	return "publish"
}

// Op is one operation a connection attempts.
type Op struct {
	Kind    Kind
	Subject string // a literal subject
	Time    time.Time
}

// UIDToken stands in a leaf's subject for the uids of the key.
const UIDToken = "{uid}"

// ErrInvalid marks a requirement that is not well formed.
var ErrInvalid = errors.New("policy: invalid requirement")

// Check reports, naming the path to it, the first node of r that is not
// well formed: a node with no field or several, an empty any_of or
// all_of, a bad subject pattern, a window that ends before it starts.
func (r Requirement) Check() error { return r.check("grant") }

func (r Requirement) check(path string) error {
	set := 0
	for _, on := range []bool{r.AllOf != nil, r.AnyOf != nil, r.Not != nil, r.Publish != "", r.Subscribe != "", r.Request != "", r.Respond, r.Valid != nil} {
		if on {
			set++
		}
	}
	if set != 1 {
		return fmt.Errorf("%w: %s: must have exactly one of all_of, any_of, not, publish, subscribe, request, respond, valid (has %d)", ErrInvalid, path, set)
	}
	switch {
	case r.AllOf != nil || r.AnyOf != nil:
		name, kids := "all_of", r.AllOf
		if r.AnyOf != nil {
			name, kids = "any_of", r.AnyOf
		}
		if len(kids) == 0 {
			return fmt.Errorf("%w: %s.%s: empty", ErrInvalid, path, name)
		}
		for i, k := range kids {
			if err := k.check(fmt.Sprintf("%s.%s[%d]", path, name, i)); err != nil {
				return err
			}
		}
	case r.Not != nil:
		return r.Not.check(path + ".not")
	case r.Valid != nil:
		if !r.Valid.From.IsZero() && !r.Valid.Until.IsZero() && !r.Valid.From.Before(r.Valid.Until) {
			return fmt.Errorf("%w: %s.valid: until %s is not after from %s", ErrInvalid, path, r.Valid.Until.Format(time.RFC3339), r.Valid.From.Format(time.RFC3339))
		}
	case r.Respond:
	default:
		kind, subj := r.leaf()
		if err := checkPattern(strings.ReplaceAll(subj, UIDToken, "x")); err != nil {
			return fmt.Errorf("%w: %s.%s: %v", ErrInvalid, path, leafName(r, kind), err)
		}
		for _, tok := range strings.Split(subj, ".") {
			if strings.Contains(tok, UIDToken) && tok != UIDToken {
				return fmt.Errorf("%w: %s.%s: %s must be a whole token (got %q)", ErrInvalid, path, leafName(r, kind), UIDToken, tok)
			}
		}
	}
	return nil
}

// leaf returns the kind and subject of a publish, subscribe or request
// leaf.
func (r Requirement) leaf() (Kind, string) {
	switch {
	case r.Subscribe != "":
		return Sub, r.Subscribe
	case r.Request != "":
		return Pub, r.Request
	}
	return Pub, r.Publish
}

func leafName(r Requirement, k Kind) string {
	if r.Request != "" {
		return "request"
	}
	return k.String()
}

// Allows is the meaning of r: whether it allows op for a key acting for
// uids. It is the reference Compile is held to; nats-server never calls
// it. respond is not an operation on a subject and allows none.
func (r Requirement) Allows(op Op, uids []string) bool {
	switch {
	case r.AllOf != nil:
		for _, k := range r.AllOf {
			if !k.Allows(op, uids) {
				return false
			}
		}
		return true
	case r.AnyOf != nil:
		for _, k := range r.AnyOf {
			if k.Allows(op, uids) {
				return true
			}
		}
		return false
	case r.Not != nil:
		return !r.Not.Allows(op, uids)
	case r.Valid != nil:
		return r.Valid.Contains(op.Time)
	case r.Respond:
		return false
	}
	kind, subj := r.leaf()
	if kind != op.Kind {
		return false
	}
	for _, p := range expand(subj, uids) {
		if matches(p, op.Subject) {
			return true
		}
	}
	return false
}

// expand replaces {uid} in subject by each of uids; a subject without it
// is itself, one with it and no uids matches nothing.
func expand(subject string, uids []string) []string {
	if !strings.Contains(subject, UIDToken) {
		return []string{subject}
	}
	out := make([]string, 0, len(uids))
	for _, u := range uids {
		out = append(out, strings.ReplaceAll(subject, UIDToken, u))
	}
	return out
}
