package policy

import (
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var now = time.Now()

func pub(s string) Op { return Op{Kind: Pub, Subject: s, Time: now} }
func sub(s string) Op { return Op{Kind: Sub, Subject: s, Time: now} }

func TestCompileShapes(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grant Requirement
		uids  []string
		want  Permissions
	}{
		{"one uid", Requirement{Publish: "usage.{uid}"}, []string{"u-1"},
			Permissions{Pub: Lists{Allow: []string{"usage.u-1"}}, Sub: Lists{Deny: []string{">"}}}},
		{"any uid", Requirement{AnyOf: []Requirement{{Publish: "usage.{uid}"}, {Request: "meter.credit.{uid}"}}}, []string{"*"},
			Permissions{Pub: Lists{Allow: []string{"usage.*", "meter.credit.*"}}, Sub: Lists{Deny: []string{">"}}}},
		{"no uid: the {uid} leaf allows nothing", Requirement{AnyOf: []Requirement{{Publish: "usage.{uid}"}, {Subscribe: "registry.changed.*"}}}, nil,
			Permissions{Pub: Lists{Deny: []string{">"}}, Sub: Lists{Allow: []string{"registry.changed.*"}}}},
		{"everything but", Requirement{AllOf: []Requirement{{Publish: ">"}, {Not: &Requirement{Publish: "auth.>"}}}}, nil,
			Permissions{Pub: Lists{Allow: []string{">"}, Deny: []string{"auth.>"}}, Sub: Lists{Deny: []string{">"}}}},
		{"not alone covers both kinds", Requirement{Not: &Requirement{Publish: "auth.>"}}, nil,
			Permissions{Pub: Lists{Allow: []string{">"}, Deny: []string{"auth.>"}}, Sub: Lists{Allow: []string{">"}}}},
		{"all_of intersects", Requirement{AllOf: []Requirement{{Publish: "meter.*.u-1"}, {Publish: "meter.credit.*"}}}, nil,
			Permissions{Pub: Lists{Allow: []string{"meter.credit.u-1"}}, Sub: Lists{Deny: []string{">"}}}},
		{"respond and a window", Requirement{AllOf: []Requirement{
			{Valid: &Window{Until: now.Add(time.Hour)}},
			{AnyOf: []Requirement{{Subscribe: "meter.>"}}},
		}}, nil,
			Permissions{Pub: Lists{Deny: []string{">"}}, Sub: Lists{Allow: []string{"meter.>"}}, Window: Window{Until: now.Add(time.Hour)}}},
		{"respond", Requirement{AnyOf: []Requirement{{Respond: true}, {Subscribe: "meter.>"}}}, nil,
			Permissions{Pub: Lists{Deny: []string{">"}}, Sub: Lists{Allow: []string{"meter.>"}}, Respond: true}},
		{"a subsumed alternative adds nothing", Requirement{AnyOf: []Requirement{
			{Publish: "a.>"},
			{AllOf: []Requirement{{Publish: "a.b.>"}, {Not: &Requirement{Publish: "a.b.c"}}}},
		}}, nil, Permissions{Pub: Lists{Allow: []string{"a.>"}}, Sub: Lists{Deny: []string{">"}}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Compile(tc.grant, tc.uids)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCompileRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		grant Requirement
		want  error
	}{
		{"empty node", Requirement{}, ErrInvalid},
		{"two fields", Requirement{Publish: "a", Subscribe: "b"}, ErrInvalid},
		{"empty any_of", Requirement{AnyOf: []Requirement{}}, ErrInvalid},
		{"bad subject", Requirement{Publish: "a..b"}, ErrInvalid},
		{"partial wildcard", Requirement{Publish: "a.b*"}, ErrInvalid},
		{"uid inside a token", Requirement{Publish: "usage.x{uid}"}, ErrInvalid},
		{"window backwards", Requirement{Valid: &Window{From: now, Until: now.Add(-time.Second)}}, ErrInvalid},
		{"nested bad node", Requirement{AnyOf: []Requirement{{Publish: "a"}, {Not: &Requirement{}}}}, ErrInvalid},
		{"window inside any_of", Requirement{AnyOf: []Requirement{{Publish: "a"}, {Valid: &Window{Until: now}}}}, ErrInexpressible},
		{"negated window", Requirement{AllOf: []Requirement{{Publish: "a"}, {Not: &Requirement{Valid: &Window{Until: now}}}}}, ErrInexpressible},
		{"respond inside all_of", Requirement{AllOf: []Requirement{{Respond: true}, {Publish: "a"}}}, ErrInexpressible},
		// a.> but not a.b.>, or a.b.c: NATS would deny a.b.c with a.b.>.
		{"a deny that reaches another alternative", Requirement{AnyOf: []Requirement{
			{AllOf: []Requirement{{Publish: "a.>"}, {Not: &Requirement{Publish: "a.b.>"}}}},
			{Publish: "a.b.c"},
		}}, ErrInexpressible},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Compile(tc.grant, []string{"u-1"})
			if !errors.Is(err, tc.want) {
				t.Errorf("Compile = %v, want %v", err, tc.want)
			}
		})
	}
	// A grant that expands past maxBranches is refused, not compiled slowly.
	var wide []Requirement
	for range 12 {
		wide = append(wide, Requirement{AnyOf: []Requirement{{Publish: "a"}, {Publish: "b"}}})
	}
	if _, err := Compile(Requirement{AllOf: wide}, nil); !errors.Is(err, ErrInexpressible) {
		t.Errorf("2^12 alternatives: %v, want ErrInexpressible", err)
	}
}

// Compile is exact: on random grants, what the compiled lists allow is
// what the grant allows, for every random operation; or it refuses.
func TestCompileMatchesAllowsOnRandomGrants(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 5))
	compiled := 0
	for range 3000 {
		g := randGrant(rng, 3)
		uids := randUIDs(rng)
		if checkExact(t, g, uids, rng) {
			compiled++
		}
	}
	// The check means little if nearly everything is refused.
	if compiled < 2000 {
		t.Errorf("only %d of 3000 random grants compiled", compiled)
	}
}

func checkExact(t *testing.T, g Requirement, uids []string, rng *rand.Rand) bool {
	t.Helper()
	p, err := Compile(g, uids)
	if err != nil {
		if !errors.Is(err, ErrInexpressible) && !errors.Is(err, ErrInvalid) {
			t.Fatalf("Compile(%s) = %v: not one of the package's errors", show(g), err)
		}
		return false
	}
	for range 60 {
		op := Op{Kind: Kind(rng.IntN(2)), Subject: randLiteral(rng), Time: now}
		if rng.IntN(4) == 0 {
			op.Subject = strings.ReplaceAll(op.Subject, "a", "u-1")
		}
		if want, got := g.Allows(op, uids), p.Allows(op); want != got {
			t.Fatalf("grant %s for uids %v: %s %s: the grant says %v, the lists %+v say %v", show(g), uids, op.Kind, op.Subject, want, p, got)
		}
	}
	return true
}

func randUIDs(rng *rand.Rand) []string {
	switch rng.IntN(4) {
	case 0:
		return nil
	case 1:
		return []string{"*"}
	case 2:
		return []string{"u-1"}
	}
	return []string{"u-1", "b"}
}

func randGrant(rng *rand.Rand, depth int) Requirement {
	if depth == 0 || rng.IntN(3) == 0 {
		subj := randPattern(rng)
		if rng.IntN(4) == 0 {
			toks := strings.Split(subj, ".")
			toks[rng.IntN(len(toks))] = UIDToken
			if toks[len(toks)-1] != ">" && strings.Contains(subj, ">") {
				toks[len(toks)-1] = ">"
			}
			subj = strings.Join(toks, ".")
			if checkPattern(strings.ReplaceAll(subj, UIDToken, "x")) != nil {
				subj = "x." + UIDToken
			}
		}
		switch rng.IntN(3) {
		case 0:
			return Requirement{Publish: subj}
		case 1:
			return Requirement{Subscribe: subj}
		}
		return Requirement{Request: subj}
	}
	kids := make([]Requirement, 1+rng.IntN(3))
	for i := range kids {
		kids[i] = randGrant(rng, depth-1)
	}
	switch rng.IntN(3) {
	case 0:
		return Requirement{AllOf: kids}
	case 1:
		return Requirement{AnyOf: kids}
	}
	return Requirement{Not: &kids[0]}
}

func show(r Requirement) string {
	switch {
	case r.AllOf != nil || r.AnyOf != nil:
		name, kids := "all_of", r.AllOf
		if r.AnyOf != nil {
			name, kids = "any_of", r.AnyOf
		}
		parts := make([]string, len(kids))
		for i, k := range kids {
			parts[i] = show(k)
		}
		return name + "(" + strings.Join(parts, ", ") + ")"
	case r.Not != nil:
		return "not(" + show(*r.Not) + ")"
	case r.Respond:
		return "respond"
	case r.Valid != nil:
		return "valid"
	}
	k, s := r.leaf()
	return k.String() + " " + s
}

// FuzzCompile drives the same check from the fuzzer's bytes: every grant
// it builds either compiles exactly or is refused with the package's
// errors, never a panic or a wider permission.
func FuzzCompile(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(99), uint64(7))
	f.Fuzz(func(t *testing.T, a, b uint64) {
		rng := rand.New(rand.NewPCG(a, b))
		checkExact(t, randGrant(rng, 4), randUIDs(rng), rng)
	})
}

func TestPermissionsAllowsIsNATS(t *testing.T) {
	p := Permissions{Pub: Lists{Allow: []string{"a.>"}, Deny: []string{"a.b"}}, Sub: Lists{Deny: []string{">"}}, Window: Window{Until: now.Add(time.Minute)}}
	for op, want := range map[Op]bool{
		pub("a.c"): true, pub("a.b"): false, pub("b"): false, sub("a.c"): false,
		{Kind: Pub, Subject: "a.c", Time: now.Add(time.Hour)}: false,
	} {
		if got := p.Allows(op); got != want {
			t.Errorf("%s %s at %s: %v, want %v", op.Kind, op.Subject, op.Time, got, want)
		}
	}
	if !slices.Equal(p.Pub.Allow, []string{"a.>"}) {
		t.Fatal("Allows changed p")
	}
}

// An override takes a subject away from a grant (publishing and
// subscribing), an addition adds one to publish to; respond and the
// window at the top stay; the result is still exact.
func TestCompileAdjusted(t *testing.T) {
	role := Requirement{AllOf: []Requirement{
		{Valid: &Window{Until: now.Add(time.Hour)}},
		{AnyOf: []Requirement{{Request: "meter.credit.{uid}"}, {Request: "ratelimit.reset.{uid}"}, {Subscribe: "registry.changed.*"}}},
	}}
	adj := Adjustments{Deny: []string{"ratelimit.reset.*"}, Allow: []string{"meter.grants.u-7"}}
	p, err := CompileAdjusted(role, []string{"*"}, adj)
	if err != nil {
		t.Fatal(err)
	}
	for op, want := range map[Op]bool{
		pub("meter.credit.u-1"):     true,
		pub("ratelimit.reset.u-1"):  false,
		pub("meter.grants.u-7"):     true,
		pub("meter.grants.u-8"):     false,
		sub("meter.grants.u-7"):     false, // an addition never lets a key read requests
		sub("registry.changed.web"): true,
	} {
		if got := p.Allows(op); got != want {
			t.Errorf("%s %s: %v, want %v (lists %+v)", op.Kind, op.Subject, got, want, p)
		}
	}
	if !p.Window.Until.Equal(now.Add(time.Hour)) {
		t.Errorf("window %+v lost", p.Window)
	}
	if _, err := CompileAdjusted(role, nil, Adjustments{Deny: []string{"a..b"}}); !errors.Is(err, ErrInvalid) {
		t.Errorf("a bad adjustment subject: %v", err)
	}
	// The adjusted grant means what the tree of it means, on random grants.
	rng := rand.New(rand.NewPCG(9, 9))
	for range 500 {
		g := randGrant(rng, 3)
		uids := randUIDs(rng)
		a := Adjustments{Deny: []string{randPattern(rng)}, Allow: []string{randPattern(rng)}}
		adjusted := Requirement{AnyOf: []Requirement{
			{AllOf: []Requirement{g, {Not: &Requirement{Publish: a.Deny[0]}}, {Not: &Requirement{Subscribe: a.Deny[0]}}}},
			{Publish: a.Allow[0]},
		}}
		p, err := CompileAdjusted(g, uids, a)
		if err != nil {
			continue
		}
		for range 40 {
			op := Op{Kind: Kind(rng.IntN(2)), Subject: randLiteral(rng), Time: now}
			if want, got := adjusted.Allows(op, uids), p.Allows(op); want != got {
				t.Fatalf("%s adjusted by %+v: %s %s: tree %v, lists %v", show(g), a, op.Kind, op.Subject, want, got)
			}
		}
	}
}
