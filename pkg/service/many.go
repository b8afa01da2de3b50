package service

import (
	"cmp"
	"strings"
	"sync/atomic"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/prometheus/client_golang/prometheus"
)

// Batch messages (events.BatchRequest) carry many requests of one
// batched endpoint in one NATS message. The batch endpoint unpacks them:
// each request becomes a request of the endpoint itself, with the subject
// it would have had alone (<group>.credit.<uid>), and the endpoint's own
// batch function serves them, in their order, as one batch (of at most
// MaxBatch; a longer message is served in consecutive batches): one Redis
// round trip, its requests decided one after the other as the batch
// function decides any batch. Each is counted in the endpoint's stats and
// histogram as one of its requests. Its answer fills its slot of the
// batch's reply, which goes out when the last slot is filled. The batch message itself is a request of the batch endpoint
// (e.g. credit_many), answered 200 with the results, or with an error
// when the message as a whole is not one (not JSON, no requests, too
// many, a bad scope).

// addMany serves ep's batch messages on <group>.<ep.Many>.<scope>,
// unpacking them into p, ep's own endpoint.
func (e *Endpoints) addMany(cfg EndpointsConfig, ep Endpoint, p *endpoint, handlers int, durations *prometheus.HistogramVec) error {
	prefix := ep.Many
	if cfg.Group != "" {
		prefix = cfg.Group + "." + ep.Many
	}
	m := &endpoint{name: ep.Many, subject: prefix + ".*", queueGroup: cfg.Name, nc: e.nc, durations: observersOf(durations, ep.Many)}
	m.queue = make(chan *request, handlers)
	u := unpacker{into: p, serve: ep.Batch, max: cmp.Or(cfg.MaxBatch, DefaultMaxBatch), prefix: prefix, single: strings.TrimSuffix(p.subject, "*")}
	if cfg.ObserveBatch != nil {
		u.observe = func(n int) { cfg.ObserveBatch(ep.Name, n) }
	}
	m.start(handlers, func() {
		for r := range m.queue {
			u.unpack(r)
		}
	})
	e.endpoints = append(e.endpoints, m)
	return e.subscribe(cfg, m, handlers)
}

// unpacker turns batch messages into requests of one endpoint.
type unpacker struct {
	into    *endpoint // whose requests they are
	serve   BatchFunc // into's
	max     int
	observe func(n int)
	prefix  string // of the batch subject: <group>.<many>
	single  string // of a request's subject alone: <group>.<name>.
}

// unpack serves the requests env carries, or answers env with the error
// that makes it no batch. A request whose uid is not one, or lies outside
// the batch's scope, is answered 400 at once; its neighbours go on.
func (u unpacker) unpack(env *request) {
	scope, err := scopeOf(env.msg.Subject, u.prefix)
	var b events.BatchRequest
	if err == nil {
		b, err = events.DecodeBatchRequest(env.msg.Data)
	}
	if err != nil {
		_ = events.RespondError(env, err)
		return
	}
	mr := &manyReply{env: env, results: make([]events.BatchResult, len(b.Requests))}
	mr.left.Store(int64(len(b.Requests)))
	batch := make([]micro.Request, 0, min(len(b.Requests), u.max))
	for i, it := range b.Requests {
		r := &request{msg: &nats.Msg{Subject: u.single + it.UID, Data: it.Body, Header: env.msg.Header},
			ep: u.into, received: env.received, many: mr, slot: i}
		u.into.inFlight.Add(1)
		switch err := events.ValidateToken("uid", it.UID); {
		case err != nil:
			_ = events.RespondError(r, err)
		case !events.InScope(scope, it.UID):
			_ = events.RespondError(r, events.NewServiceError(events.CodeBadRequest, "uid",
				"uid %q is outside this batch's scope %q: a batch on %s.<uid> holds that uid's requests only, one on %s.%s any uid's", it.UID, scope, u.prefix, u.prefix, events.ScopeAll))
		default:
			if batch = append(batch, r); len(batch) == u.max {
				u.serveBatch(batch)
				batch = batch[:0]
			}
		}
	}
	if len(batch) > 0 {
		u.serveBatch(batch)
	}
}

// serveBatch hands requests of a batch message to the endpoint's batch
// function.
func (u unpacker) serveBatch(batch []micro.Request) {
	if u.observe != nil {
		u.observe(len(batch))
	}
	u.serve(batch)
}

// scopeOf returns the scope token of a batch subject <prefix>.<scope>:
// events.ScopeAll or a uid token.
func scopeOf(subject, prefix string) (string, error) {
	scope, ok := strings.CutPrefix(subject, prefix+".")
	if ok && (scope == events.ScopeAll || events.IsToken(scope)) {
		return scope, nil
	}
	return "", events.NewServiceError(events.CodeBadRequest, "scope", "subject %q: a batch subject ends in %s or a uid", subject, events.ScopeAll)
}

// manyReply collects the answers to one batch message's requests and
// sends the batch's reply once every one is in.
type manyReply struct {
	env     *request
	results []events.BatchResult
	left    atomic.Int64
}

// fill records the answer of request i; the last one sends the reply.
// Each slot is filled once (record lets only a request's first answer
// through), and the reply is read only after every fill.
func (m *manyReply) fill(i, status int, body []byte) {
	if status == 0 {
		status = 200
	}
	m.results[i] = events.BatchResult{Status: status, Body: append([]byte(nil), body...)}
	if m.left.Add(-1) > 0 {
		return
	}
	// A reply that cannot be sent is counted by send, as any other.
	_ = m.env.send(&nats.Msg{Data: events.AppendBatchReply(nil, m.results)}, 0, "")
}
