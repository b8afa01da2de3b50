package meter

import (
	"slices"
	"strings"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
)

// grantNames are the grants a uid may be given its own limit of: the
// configured grants (which include every grant metric and "ratelimit",
// the uid's own rate limit) and "ratelimit_<service>" for each
// rate-limited service, the field the rate limiter reads
// (keys.RateLimitField).
type grantNames struct {
	known  map[string]bool
	sorted []string
}

func newGrantNames(cfg Config) grantNames {
	g := grantNames{known: map[string]bool{keys.RateLimitField(""): true}}
	for name := range cfg.Usage.Grants {
		g.known[name] = true
	}
	for _, name := range cfg.RateLimited {
		g.known[keys.RateLimitField(name)] = true
	}
	for name := range g.known {
		g.sorted = append(g.sorted, name)
	}
	slices.Sort(g.sorted)
	return g
}

// check refuses a request naming a grant that is not declared, with a
// 400 that lists the declared ones, so a typo never becomes a limit
// nobody reads. A name to unset that is not declared is still accepted
// when the uid holds an override of that name (held reports it): an
// override left by an earlier configuration can be dropped.
func (g grantNames) check(req events.GrantsRequest, held func() (map[string]float64, error)) error {
	var unknown []string
	for name := range req.Set {
		if !g.known[name] {
			unknown = append(unknown, name)
		}
	}
	slices.Sort(unknown)
	if len(unknown) > 0 {
		return g.refuse("set", unknown)
	}
	for _, name := range req.Unset {
		if !g.known[name] {
			unknown = append(unknown, name)
		}
	}
	if len(unknown) == 0 {
		return nil
	}
	overrides, err := held()
	if err != nil {
		return err
	}
	unknown = slices.DeleteFunc(unknown, func(name string) bool { _, ok := overrides[name]; return ok })
	if len(unknown) > 0 {
		return g.refuse("unset", unknown)
	}
	return nil
}

func (g grantNames) refuse(field string, unknown []string) error {
	quoted := make([]string, len(unknown))
	for i, name := range unknown {
		quoted[i] = `"` + name + `"`
	}
	what := "unknown grant " + quoted[0]
	if len(unknown) > 1 {
		what = "unknown grants " + strings.Join(quoted, ", ")
	}
	return events.NewServiceError(events.CodeBadRequest, field, "%s; the grants are %s", what, strings.Join(g.sorted, ", "))
}
