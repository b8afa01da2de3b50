package policy

import (
	"errors"
	"fmt"
	"slices"
	"time"
)

// Lists are NATS's allow and deny lists for one kind of operation: a
// subject is allowed when it matches an allow entry and no deny entry.
type Lists struct {
	Allow []string
	Deny  []string
}

// Permissions are what Compile makes of a grant: the lists nats-server
// enforces, whether the key may answer requests it receives, and the
// window in which it may connect at all.
type Permissions struct {
	Pub, Sub Lists
	Respond  bool
	Window   Window
}

// Allows says what nats-server decides for op under p (a literal subject;
// the window bounds the connection, so the time too).
func (p Permissions) Allows(op Op) bool {
	if !p.Window.Contains(op.Time) {
		return false
	}
	l := p.Pub
	if op.Kind == Sub {
		l = p.Sub
	}
	if len(l.Allow) == 0 && len(l.Deny) == 0 {
		return true // NATS's meaning of no lists; Compile never returns it
	}
	if len(l.Allow) > 0 && !slices.ContainsFunc(l.Allow, func(a string) bool { return matches(a, op.Subject) }) {
		return false
	}
	return !slices.ContainsFunc(l.Deny, func(d string) bool { return matches(d, op.Subject) })
}

// ErrInexpressible marks a grant that NATS's lists cannot state exactly.
var ErrInexpressible = errors.New("policy: not expressible as NATS permissions")

// maxBranches bounds the disjunctive form of a grant; a grant past it is
// refused rather than compiled slowly on every connect.
const maxBranches = 1024

// Compile returns the permissions of grant for a key acting for uids (each
// a uid token or "*"): exactly the operations grant.Allows allows, or
// ErrInexpressible saying which part cannot be stated.
//
// How: {uid} leaves become one leaf per uid; nots are pushed down to the
// leaves; "respond" and "valid" are taken from the top (they bound the
// whole connection, and may stand nowhere else); the rest is put in
// disjunctive form, branches of (subject patterns all met, none of some
// others). Each branch's patterns intersect into one, its allow entry;
// the patterns it must not meet become deny entries, narrowed to its
// allow entry. NATS denies a subject in every branch at once, so a deny
// entry that would take from another branch what that branch allows is
// refused (ErrInexpressible), never silently kept.
func Compile(grant Requirement, uids []string) (Permissions, error) {
	return CompileAdjusted(grant, uids, Adjustments{})
}

// Adjustments change one key's grant for a while: Deny takes subjects away
// (publishing and subscribing: an override), Allow adds subjects to
// publish to, requests included (an addition; never subscribing, which
// would let a key read requests meant for a service).
type Adjustments struct {
	Deny, Allow []string
}

// CompileAdjusted is Compile of grant less adj.Deny, plus adj.Allow; the
// top's respond and valid stay as they are.
func CompileAdjusted(grant Requirement, uids []string, adj Adjustments) (Permissions, error) {
	if err := grant.Check(); err != nil {
		return Permissions{}, err
	}
	for _, s := range slices.Concat(adj.Deny, adj.Allow) {
		if err := checkPattern(s); err != nil {
			return Permissions{}, fmt.Errorf("%w: adjustment: %v", ErrInvalid, err)
		}
	}
	var p Permissions
	rest, err := p.takeTop(grant)
	if err != nil {
		return Permissions{}, err
	}
	if len(adj.Deny) > 0 && rest != nil {
		all := []Requirement{*rest}
		for _, d := range adj.Deny {
			all = append(all, Requirement{Not: &Requirement{Publish: d}}, Requirement{Not: &Requirement{Subscribe: d}})
		}
		rest = &Requirement{AllOf: all}
	}
	if len(adj.Allow) > 0 {
		var any []Requirement
		if rest != nil {
			any = append(any, *rest)
		}
		for _, a := range adj.Allow {
			any = append(any, Requirement{Publish: a})
		}
		rest = &Requirement{AnyOf: any}
	}
	var branches []branch
	if rest != nil {
		n, err := lower(*rest, uids, false)
		if err != nil {
			return Permissions{}, err
		}
		if branches, err = dnf(n); err != nil {
			return Permissions{}, err
		}
	}
	for _, k := range []Kind{Pub, Sub} {
		l, err := listsFor(k, branches)
		if err != nil {
			return Permissions{}, err
		}
		if k == Pub {
			p.Pub = l
		} else {
			p.Sub = l
		}
	}
	return p, nil
}

// takeTop moves "respond" (a member of the top any_of, or the whole
// grant) and "valid" (a member of the top all_of, or the whole grant)
// into p, and returns what is left to compile (nil: nothing).
func (p *Permissions) takeTop(g Requirement) (*Requirement, error) {
	switch {
	case g.Respond:
		p.Respond = true
		return nil, nil
	case g.Valid != nil:
		p.Window = *g.Valid
		return everything(), nil
	case g.AnyOf != nil:
		var kids []Requirement
		for _, k := range g.AnyOf {
			if k.Respond {
				p.Respond = true
				continue
			}
			kids = append(kids, k)
		}
		if len(kids) == 0 {
			return nil, nil
		}
		return &Requirement{AnyOf: kids}, nil
	case g.AllOf != nil:
		var kids []Requirement
		for _, k := range g.AllOf {
			if k.Valid != nil {
				p.Window = meet(p.Window, *k.Valid)
				continue
			}
			kids = append(kids, k)
		}
		if len(kids) == 0 {
			return everything(), nil // windows alone: any operation, within them
		}
		return &Requirement{AllOf: kids}, nil
	}
	return &g, nil
}

// everything is the grant of every operation.
func everything() *Requirement {
	return &Requirement{AnyOf: []Requirement{{Publish: ">"}, {Subscribe: ">"}}}
}

// meet is the intersection of two windows.
func meet(a, b Window) Window {
	if b.From.After(a.From) {
		a.From = b.From
	}
	if !b.Until.IsZero() && (a.Until.IsZero() || b.Until.Before(a.Until)) {
		a.Until = b.Until
	}
	return a
}

// node is a grant in negation normal form, uids bound.
type node struct {
	and, or []node
	lit     *literal
	never   bool // matches no operation (a {uid} leaf of a key with no uids)
}

type literal struct {
	kind    Kind
	pattern string
	negated bool
}

// lower binds uids and pushes negation (neg) down to the literals.
func lower(r Requirement, uids []string, neg bool) (node, error) {
	switch {
	case r.AllOf != nil || r.AnyOf != nil:
		kids := r.AllOf
		isAnd := r.AllOf != nil
		if r.AnyOf != nil {
			kids = r.AnyOf
		}
		out := make([]node, 0, len(kids))
		for _, k := range kids {
			n, err := lower(k, uids, neg)
			if err != nil {
				return node{}, err
			}
			out = append(out, n)
		}
		if isAnd != neg { // De Morgan: not(all_of) is any_of of nots
			return node{and: out}, nil
		}
		return node{or: out}, nil
	case r.Not != nil:
		return lower(*r.Not, uids, !neg)
	case r.Respond:
		return node{}, fmt.Errorf("%w: respond must be the grant or a member of its top any_of (it lets a responder answer, it is not a subject)", ErrInexpressible)
	case r.Valid != nil:
		return node{}, fmt.Errorf("%w: valid must be the grant or a member of its top all_of: a time window bounds the whole connection", ErrInexpressible)
	}
	kind, subj := r.leaf()
	pats := expand(subj, uids)
	if len(pats) == 0 {
		// No uid: the leaf matches nothing, and its negation everything.
		if neg {
			return node{or: []node{{lit: &literal{kind: Pub, pattern: ">"}}, {lit: &literal{kind: Sub, pattern: ">"}}}}, nil
		}
		return node{never: true}, nil
	}
	out := make([]node, 0, len(pats))
	for _, p := range pats {
		if err := checkPattern(p); err != nil {
			return node{}, fmt.Errorf("%w: uid %v: %v", ErrInvalid, uids, err)
		}
		out = append(out, node{lit: &literal{kind: kind, pattern: p, negated: neg}})
	}
	if len(out) == 1 {
		return out[0], nil
	}
	if neg { // not(leaf for any uid) = not for each uid
		return node{and: out}, nil
	}
	return node{or: out}, nil
}

// branch is one conjunction of the disjunctive form.
type branch struct {
	pos, neg []literal
}

// dnf puts n in disjunctive form: a branch per way to satisfy it.
func dnf(n node) ([]branch, error) {
	switch {
	case n.never:
		return nil, nil
	case n.lit != nil:
		if n.lit.negated {
			return []branch{{neg: []literal{*n.lit}}}, nil
		}
		return []branch{{pos: []literal{*n.lit}}}, nil
	case n.or != nil:
		var out []branch
		for _, k := range n.or {
			bs, err := dnf(k)
			if err != nil {
				return nil, err
			}
			out = append(out, bs...)
			if len(out) > maxBranches {
				return nil, fmt.Errorf("%w: the grant has over %d alternatives once expanded; simplify it", ErrInexpressible, maxBranches)
			}
		}
		return out, nil
	}
	out := []branch{{}}
	for _, k := range n.and {
		bs, err := dnf(k)
		if err != nil {
			return nil, err
		}
		var next []branch
		for _, a := range out {
			for _, b := range bs {
				next = append(next, branch{pos: append(slices.Clone(a.pos), b.pos...), neg: append(slices.Clone(a.neg), b.neg...)})
			}
		}
		if len(next) > maxBranches {
			return nil, fmt.Errorf("%w: the grant has over %d alternatives once expanded; simplify it", ErrInexpressible, maxBranches)
		}
		out = next
	}
	return out, nil
}

// allowed is one branch reduced to an operation kind: the subjects of
// pattern, less those of denied (each inside pattern).
type allowed struct {
	pattern string
	denied  []string
}

// listsFor returns the lists of kind k that allow exactly what branches
// allow for it.
func listsFor(k Kind, branches []branch) (Lists, error) {
	var parts []allowed
	for _, b := range branches {
		a, ok := reduce(k, b)
		if ok {
			parts = append(parts, a)
		}
	}
	parts = dropSubsumed(parts)
	// NATS denies a subject whichever allow entry it matched: a deny entry
	// must not take what another part allows.
	for i, a := range parts {
		for _, d := range a.denied {
			for j, other := range parts {
				if i == j {
					continue
				}
				x, ok := intersect(d, other.pattern)
				if !ok || slices.ContainsFunc(other.denied, func(e string) bool { return contains(e, x) }) {
					continue
				}
				return Lists{}, fmt.Errorf("%w: %s: one alternative denies %q, which would also deny %q that another alternative allows (NATS applies a deny to every allow); deny it there too, or split the role", ErrInexpressible, k, d, x)
			}
		}
	}
	var l Lists
	for _, a := range parts {
		l.Allow = appendNew(l.Allow, a.pattern)
		for _, d := range a.denied {
			l.Deny = appendNew(l.Deny, d)
		}
	}
	if len(l.Allow) == 0 {
		// No lists at all would mean everything: deny everything instead.
		return Lists{Deny: []string{">"}}, nil
	}
	return l, nil
}

// dropSubsumed removes the parts whose subjects another part allows
// too (of two equal parts, the later): they add nothing, and their deny
// entries would only be in the way.
func dropSubsumed(parts []allowed) []allowed {
	var out []allowed
	for i, a := range parts {
		subsumed := false
		for j, o := range parts {
			if i != j && within(a, o) && (!within(o, a) || j < i) {
				subsumed = true
				break
			}
		}
		if !subsumed {
			out = append(out, a)
		}
	}
	return out
}

// within reports whether every subject a allows, o allows too: a's
// pattern is inside o's, and each of o's denials that reaches into a's
// pattern is denied by a as well.
func within(a, o allowed) bool {
	if !contains(o.pattern, a.pattern) {
		return false
	}
	for _, od := range o.denied {
		x, ok := intersect(od, a.pattern)
		if ok && !slices.ContainsFunc(a.denied, func(d string) bool { return contains(d, x) }) {
			return false
		}
	}
	return true
}

// reduce is what branch b allows of kind k, or false for nothing.
func reduce(k Kind, b branch) (allowed, bool) {
	pattern := ">"
	for _, l := range b.pos {
		if l.kind != k {
			return allowed{}, false // an operation has one kind
		}
		var ok bool
		if pattern, ok = intersect(pattern, l.pattern); !ok {
			return allowed{}, false
		}
	}
	a := allowed{pattern: pattern}
	for _, l := range b.neg {
		if l.kind != k {
			continue // not publishing X says nothing of subscribing
		}
		d, ok := intersect(l.pattern, pattern)
		if !ok {
			continue
		}
		if d == pattern {
			return allowed{}, false // it denies all it allows
		}
		a.denied = appendNew(a.denied, d)
	}
	return a, true
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// Expires is when permissions for a key stop holding: the earliest of
// the window's end and the given times (zero ones are ignored); zero if
// none ends.
func (p Permissions) Expires(others ...time.Time) time.Time {
	end := p.Window.Until
	for _, t := range others {
		if !t.IsZero() && (end.IsZero() || t.Before(end)) {
			end = t
		}
	}
	return end
}
