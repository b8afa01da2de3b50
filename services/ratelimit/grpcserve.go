package ratelimit

import (
	"context"
	"errors"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/services/ratelimit/internal/store"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rlv3 "github.com/envoyproxy/go-control-plane/envoy/service/ratelimit/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// The headers of the descriptor closest to its limit that answers carry
// with ratelimit.grpc.response_headers, for Envoy to forward.
const (
	HeaderLimit     = "x-ratelimit-limit"
	HeaderRemaining = "x-ratelimit-remaining"
	HeaderReset     = "x-ratelimit-reset"
)

// plan is what one request descriptor asks: its rule (nil: none
// applies) and, once prepared, its check.
type plan struct {
	rule    *envoyRule
	entries []envoyEntry
	result  string // limited, unmatched[_denied|_shadow_denied], unlimited, replaced
	p       pending
	op      int // its index in the request's ops, when limited
}

// ShouldRateLimit implements envoy.service.ratelimit.v3.RateLimitService:
// each descriptor finds its limit in the request's domain and spends
// its hits_addend (or the request's; 0 is 1) on that limit's window, all
// of the request's descriptors in one batch. A descriptor with no limit
// is OK without a status limit, as envoyproxy/ratelimit answers, unless
// its domain denies unmatched descriptors: then it is OVER_LIMIT, still
// without a status limit.
func (f *grpcFront) ShouldRateLimit(ctx context.Context, req *rlv3.RateLimitRequest) (*rlv3.RateLimitResponse, error) {
	domain := req.GetDomain()
	dom, known := f.domains[domain]
	label := domain
	if !known {
		label = "(unknown)"
	}
	descs := req.GetDescriptors()
	switch {
	case domain == "":
		return nil, f.statusError(label, codes.InvalidArgument, "domain is required")
	case len(descs) == 0:
		return nil, f.statusError(label, codes.InvalidArgument, "descriptors: at least one is required")
	case len(descs) > f.cfg.MaxDescriptors:
		return nil, f.statusError(label, codes.ResourceExhausted, "descriptors: %d, more than ratelimit.grpc.max_descriptors (%d)", len(descs), f.cfg.MaxDescriptors)
	case !known:
		return nil, f.statusError(label, codes.NotFound, "unknown domain %s", quoteShort(domain))
	case int64(req.GetHitsAddend()) > f.cfg.MaxHitsAddend:
		return nil, f.statusError(label, codes.InvalidArgument, "hits_addend: %d, more than %d", req.GetHitsAddend(), f.cfg.MaxHitsAddend)
	}
	plans, ops, err := f.plan(dom, req)
	if err != nil {
		return nil, f.statusError(label, status.Code(err), "%s", status.Convert(err).Message())
	}
	var ds []store.Decision
	var errs []error
	if len(ops) > 0 {
		if ds, errs, err = f.batches.check(ctx, ops); err != nil {
			code := status.FromContextError(err).Code()
			return nil, f.statusError(label, code, "%v", err)
		}
	}
	resp := &rlv3.RateLimitResponse{OverallCode: rlv3.RateLimitResponse_OK, Statuses: make([]*rlv3.RateLimitResponse_DescriptorStatus, len(plans))}
	for i, pl := range plans {
		f.metrics.descriptors.WithLabelValues(label, pl.result).Inc()
		st := &rlv3.RateLimitResponse_DescriptorStatus{Code: rlv3.RateLimitResponse_OK}
		resp.Statuses[i] = st
		switch pl.result {
		case "unlimited":
			st.LimitRemaining = math.MaxUint32
			continue
		case "unmatched_denied":
			st.Code = rlv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlv3.RateLimitResponse_OVER_LIMIT
			continue
		case "limited":
		default:
			continue
		}
		var reply events.CheckReply
		if pl.op < 0 { // refused from the cache
			reply, _ = f.l.fromCache(pl.p)
		} else if reply, err = f.l.decided(pl.p, ds[pl.op], errs[pl.op]); err != nil {
			code := codes.Internal
			var se *events.ServiceError
			if errors.As(err, &se) && se.Code == events.CodeUnavailable {
				code = codes.Unavailable
			}
			return nil, f.statusError(label, code, "descriptors[%d]: %v", i, err)
		}
		if !reply.Allowed {
			st.Code = rlv3.RateLimitResponse_OVER_LIMIT
			resp.OverallCode = rlv3.RateLimitResponse_OVER_LIMIT
		}
		st.CurrentLimit = &rlv3.RateLimitResponse_RateLimit{Name: pl.rule.name, RequestsPerUnit: clampUint32(reply.Limit), Unit: unitOf(pl.p.lim.Interval)}
		st.LimitRemaining = clampUint32(reply.Remaining)
		st.DurationUntilReset = durationpb.New(time.Duration(reply.ResetAfterMs) * time.Millisecond)
	}
	if f.cfg.ResponseHeaders {
		resp.ResponseHeadersToAdd = limitHeaders(resp.Statuses)
	}
	f.metrics.requests.WithLabelValues(label, resp.OverallCode.String()).Inc()
	return resp, nil
}

// plan checks the request's descriptors and finds their rules in dom,
// applying replaces and dom's deny_unmatched, and returns the checks to
// make; an error is an InvalidArgument or FailedPrecondition status.
func (f *grpcFront) plan(dom envoyDomain, req *rlv3.RateLimitRequest) ([]plan, []store.CheckOp, error) {
	descs := req.GetDescriptors()
	plans := make([]plan, len(descs))
	replacing := map[string]bool{}
	// unmatched is the result of a descriptor no limit matches: a
	// denial, which ratelimit.shadow only counts, when dom denies them.
	unmatched := "unmatched"
	switch {
	case dom.denyUnmatched && f.l.cfg.RateLimit.Shadow:
		unmatched = "unmatched_shadow_denied"
	case dom.denyUnmatched:
		unmatched = "unmatched_denied"
	}
	for i, d := range descs {
		es := d.GetEntries()
		if len(es) == 0 {
			return nil, nil, status.Errorf(codes.InvalidArgument, "descriptors[%d]: at least one entry is required", i)
		}
		entries := make([]envoyEntry, len(es))
		for j, e := range es {
			if e.GetKey() == "" || len(e.GetKey()) > maxEntryKey || len(e.GetValue()) > maxEntryValue {
				return nil, nil, status.Errorf(codes.InvalidArgument, "descriptors[%d].entries[%d]: key must be 1 to %d bytes and value at most %d", i, j, maxEntryKey, maxEntryValue)
			}
			entries[j] = envoyEntry{key: e.GetKey(), value: e.GetValue()}
		}
		rule := dom.root.match(entries)
		if lim := d.GetLimit(); lim != nil {
			// Envoy's own limit override: it replaces the configured one.
			unit := lim.GetUnit().String()
			interval, ok := envoyUnits[strings.ToLower(unit)]
			if !ok {
				return nil, nil, status.Errorf(codes.InvalidArgument, "descriptors[%d].limit.unit: %s is not supported (second, minute, hour, day or week)", i, unit)
			}
			path := "override"
			if rule != nil {
				path = rule.path
			}
			rule = &envoyRule{path: path, label: "(envoy:" + req.GetDomain() + ")", unit: unitOf(interval), rpu: lim.GetRequestsPerUnit(), interval: interval}
		}
		plans[i] = plan{rule: rule, entries: entries, result: unmatched, op: -1}
		if rule != nil {
			for _, r := range rule.replaces {
				replacing[r] = true
			}
		}
	}
	ops := make([]store.CheckOp, 0, len(plans))
	for i := range plans {
		pl := &plans[i]
		r := pl.rule
		switch {
		case r == nil:
			continue
		case r.name != "" && replacing[r.name]:
			pl.result = "replaced"
			continue
		case r.unlimited:
			pl.result = "unlimited"
			continue
		}
		cost := int64(req.GetHitsAddend())
		if h := descs[i].GetHitsAddend(); h != nil {
			if h.GetValue() > uint64(f.cfg.MaxHitsAddend) {
				return nil, nil, status.Errorf(codes.InvalidArgument, "descriptors[%d].hits_addend: %d, more than %d", i, h.GetValue(), f.cfg.MaxHitsAddend)
			}
			cost = int64(h.GetValue())
		}
		if cost == 0 {
			cost = 1 // Envoy sends 0 for one hit
		}
		p, err := f.pending(req.GetDomain(), pl, cost)
		if err != nil {
			return nil, nil, status.Errorf(status.Code(err), "descriptors[%d]: %s", i, status.Convert(err).Message())
		}
		pl.p, pl.result = p, "limited"
		if _, ok := f.l.fromCache(p); ok {
			continue // counted; answered from the cache again when replying
		}
		pl.op = len(ops)
		if !r.uid {
			pl.p.lim.Descriptor = descriptorID(req.GetDomain(), pl.entries)
		}
		ops = append(ops, store.CheckOp{UID: pl.p.uid, Limit: pl.p.lim, Cost: cost})
	}
	return plans, ops, nil
}

// pending is the check of a limited descriptor: a uid rule's is the
// uid's allot check (ratelimit.check.<uid>'s own), any other's is its
// descriptor's window with the configured limit.
func (f *grpcFront) pending(domain string, pl *plan, cost int64) (pending, error) {
	r := pl.rule
	if r.uid {
		uid := pl.entries[len(pl.entries)-1].value
		if !events.IsToken(uid) {
			return pending{}, status.Errorf(codes.InvalidArgument, "uid: must be 1 to %d characters of A-Z a-z 0-9 _ - (got %s)", events.MaxTokenLen, quoteShort(uid))
		}
		rl, lim, err := f.l.limitOf(r.service)
		if err != nil {
			return pending{}, status.Errorf(codes.FailedPrecondition, "%v", err)
		}
		rl.Shadow = rl.Shadow || r.shadow
		return pending{uid: uid, service: r.service, rl: rl, lim: lim, cost: cost, label: serviceLabel(r.service)}, nil
	}
	s := f.l.cfg.RateLimit
	rl := Service{Interval: r.interval, Mode: ModeFixed, Shadow: r.shadow || s.Shadow, FailOpen: s.FailOpen}
	lim := store.Limit{Interval: r.interval, Mode: ModeFixed, Configured: int64(r.rpu)}
	return pending{service: r.path, rl: rl, lim: lim, cost: cost, label: r.label}, nil
}

// descriptorID is the Redis name of a descriptor's windows in domain.
func descriptorID(domain string, entries []envoyEntry) string {
	parts := make([]string, 0, 2*len(entries))
	for _, e := range entries {
		parts = append(parts, e.key, e.value)
	}
	return keys.DescriptorID(domain, parts...)
}

// limitHeaders are the x-ratelimit-* headers of the status closest to
// its limit: one over the limit first, else the least remaining.
func limitHeaders(sts []*rlv3.RateLimitResponse_DescriptorStatus) []*corev3.HeaderValue {
	var min *rlv3.RateLimitResponse_DescriptorStatus
	for _, st := range sts {
		if st.CurrentLimit == nil {
			continue
		}
		if min == nil || st.Code == rlv3.RateLimitResponse_OVER_LIMIT && min.Code != rlv3.RateLimitResponse_OVER_LIMIT ||
			st.Code == min.Code && st.LimitRemaining < min.LimitRemaining {
			min = st
		}
	}
	if min == nil {
		return nil
	}
	reset := (min.DurationUntilReset.AsDuration() + time.Second - 1) / time.Second
	return []*corev3.HeaderValue{
		{Key: HeaderLimit, Value: strconv.FormatUint(uint64(min.CurrentLimit.RequestsPerUnit), 10)},
		{Key: HeaderRemaining, Value: strconv.FormatUint(uint64(min.LimitRemaining), 10)},
		{Key: HeaderReset, Value: strconv.FormatInt(int64(reset), 10)},
	}
}

// unitOf is the Envoy unit of a window, UNKNOWN for a window that is
// none (a uid's limit of 300s).
func unitOf(d time.Duration) rlv3.RateLimitResponse_RateLimit_Unit {
	for name, u := range envoyUnits {
		if u == d {
			return rlv3.RateLimitResponse_RateLimit_Unit(rlv3.RateLimitResponse_RateLimit_Unit_value[strings.ToUpper(name)])
		}
	}
	return rlv3.RateLimitResponse_RateLimit_UNKNOWN
}

func clampUint32(n int64) uint32 {
	switch {
	case n < 0:
		return 0
	case n > math.MaxUint32:
		return math.MaxUint32
	}
	return uint32(n)
}

// quoteShort quotes s for an error, cut to 64 bytes.
func quoteShort(s string) string {
	if len(s) > 64 {
		return strconv.Quote(s[:64]) + "..."
	}
	return strconv.Quote(s)
}
