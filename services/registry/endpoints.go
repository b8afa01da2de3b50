package registry

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/keys"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/registry/internal/crypt"
	"github.com/allot/allot/services/registry/internal/store"
	"github.com/nats-io/nats.go/micro"
)

func (r *Registry) requestContext() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), r.cfg.NATS.RequestTimeout)
}

// reply answers req, counting the outcome: a bad request is a 400 naming
// the field, an id held by another name a 409, Redis trouble a 503.
func (r *Registry) reply(req micro.Request, endpoint string, data []byte, err error) {
	service.Replier{Requests: r.metrics.requests, Log: r.log, Classify: func(err error) *events.ServiceError {
		switch {
		case errors.Is(err, store.ErrConflict):
			return events.NewServiceError(events.CodeConflict, "id", "%s", strings.TrimPrefix(err.Error(), "store: "))
		case errors.Is(err, store.ErrRedis):
			return events.NewServiceError(events.CodeUnavailable, "", "redis unavailable: %v", err)
		}
		return nil
	}}.ReplyBytes(req, endpoint, data, err)
}

func (r *Registry) handleRegister(req micro.Request) {
	var body events.RegisterRequest
	if err := events.DecodeRequest(req.Data(), &body); err != nil {
		r.reply(req, "register", nil, err)
		return
	}
	ctx, cancel := r.requestContext()
	defer cancel()
	inst, reg, err := r.register(ctx, body)
	if err != nil {
		r.reply(req, "register", nil, err)
		return
	}
	switch reg.Change {
	case store.Appeared:
		r.publish(events.ChangeAppeared, inst.Name, inst.ID, reg.Seq, &inst)
	case store.Changed:
		r.publish(events.ChangeChanged, inst.Name, inst.ID, reg.Seq, &inst)
	}
	data, err := json.Marshal(events.RegisterReply{OK: true, TTLS: int(r.cfg.Registry.TTL / time.Second)})
	r.reply(req, "register", data, err)
}

func (r *Registry) handleDeregister(req micro.Request) {
	var body events.DeregisterRequest
	if err := events.DecodeRequest(req.Data(), &body); err != nil {
		r.reply(req, "deregister", nil, err)
		return
	}
	ctx, cancel := r.requestContext()
	defer cancel()
	seq, err := r.store.Deregister(ctx, body.Name, body.ID)
	if err != nil {
		r.reply(req, "deregister", nil, err)
		return
	}
	if seq != 0 {
		r.log.Info("deregistered", "name", body.Name, "id", body.ID)
		// Announced at once, so watches drop it now rather than at the
		// reaper's next pass.
		r.publish(events.ChangeDeregistered, body.Name, body.ID, seq, nil)
	}
	data, err := json.Marshal(events.OKReply{OK: true})
	r.reply(req, "deregister", data, err)
}

// register seals and stores one validated registration.
func (r *Registry) register(ctx context.Context, body events.RegisterRequest) (events.Instance, store.Registration, error) {
	inst := events.Instance{Name: body.Name, ID: body.ID, Endpoints: body.Endpoints, IPv4: body.IPv4,
		Port: body.Port, PublicURL: body.PublicURL}
	if inst.Endpoints == nil {
		inst.Endpoints = []string{} // null and [] must seal alike
	}
	pt, err := json.Marshal(inst)
	if err != nil {
		return inst, store.Registration{}, fmt.Errorf("registry: encode instance: %w", err)
	}
	member := keys.RegistryMember(inst.Name, inst.ID)
	reg, err := r.store.Register(ctx, inst.Name, inst.ID, r.sealer.Seal(pt, []byte(member)), r.cfg.Registry.TTL)
	if err != nil {
		if errors.Is(err, store.ErrConflict) {
			r.metrics.registrations.WithLabelValues("conflict").Inc()
		}
		return inst, reg, err
	}
	r.metrics.registrations.WithLabelValues([...]string{"renewed", "appeared", "changed"}[reg.Change]).Inc()
	// Kept beside the entry, not sealed in it: a heartbeat must seal to
	// the same bytes.
	inst.Created = reg.Created.UTC()
	return inst, reg, nil
}

func (r *Registry) handleFind(req micro.Request) {
	var name string
	if req.Subject() != r.cfg.Subjects.Find("") {
		var err error
		if name, err = events.ParseToken(req.Subject(), r.cfg.Subjects.Find("")); err != nil {
			var v *events.ValidationError
			if errors.As(err, &v) {
				v.Field = "name"
			}
			r.reply(req, "find", nil, err)
			return
		}
	}
	var body events.FindRequest
	if err := events.DecodeRequest(req.Data(), &body); err != nil {
		r.reply(req, "find", nil, err)
		return
	}
	ctx, cancel := r.requestContext()
	defer cancel()
	rep, err := r.findReply(ctx, name)
	if err != nil {
		r.reply(req, "find", nil, err)
		return
	}
	// A client that accepts gzip gets it, unless the reply is too small
	// to gain from it; Content-Encoding says which it got.
	if events.AcceptsGzip(req.Headers()) {
		if gz := r.gzipped(rep); gz != nil {
			r.metrics.requests.WithLabelValues("find", "ok").Inc()
			// A map of its own per reply: micro.WithHeaders hands it to the
			// message, which anything on the way may add to.
			_ = req.Respond(gz, micro.WithHeaders(micro.Headers{events.HeaderContentEncoding: {events.EncodingGzip}}))
			return
		}
	}
	r.reply(req, "find", rep.plain, nil)
}

// findReply returns the encoded FindReply for name ("" for all), from
// the cache when it is fresh.
func (r *Registry) findReply(ctx context.Context, name string) (*encodedReply, error) {
	if rep, ok := r.cache.reply(name, r.clock(), r.cfg.Registry.FindCache); ok {
		r.metrics.finds.WithLabelValues("hit").Inc()
		return rep, nil
	}
	r.metrics.finds.WithLabelValues("miss").Inc()
	insts, seqs, gen, err := r.live(ctx)
	if err != nil {
		return nil, err
	}
	find := BuildFindReply(insts, name)
	if name != "" {
		find.Seq = seqs[name]
	}
	data, err := json.Marshal(find)
	if err != nil {
		return nil, fmt.Errorf("registry: encode find reply: %w", err)
	}
	return r.cache.putReply(gen, name, &encodedReply{plain: data}), nil
}

// gzipped returns rep gzipped, compressing it on the first call only
// (concurrent first calls wait for that one), or nil when it is to be
// sent plain.
func (r *Registry) gzipped(rep *encodedReply) []byte {
	rep.gzOnce.Do(func() {
		if len(rep.plain) < gzipMin {
			return
		}
		gz, err := gzipBytes(rep.plain)
		if err != nil {
			// Cannot happen with a valid level and a buffer; the reply
			// goes out plain, which every client reads.
			r.log.Error("gzip find reply", "err", err)
			return
		}
		r.metrics.compressions.Inc()
		if len(gz) < len(rep.plain) {
			rep.gz = gz
		}
	})
	return rep.gz
}

// live returns every live instance, sorted by name and id, and each
// name's sequence at that state, from the cache when it is fresh, else
// from Redis; concurrent misses share one read.
func (r *Registry) live(ctx context.Context) ([]events.Instance, map[string]uint64, uint64, error) {
	r.cache.load.Lock()
	defer r.cache.load.Unlock()
	if insts, seqs, gen, ok := r.cache.instances(r.clock(), r.cfg.Registry.FindCache); ok {
		return insts, seqs, gen, nil
	}
	gen := r.cache.generation()
	snap, err := r.store.Live(ctx)
	if err != nil {
		return nil, nil, 0, err
	}
	entries := snap.Entries
	// Sealing is deterministic: an entry whose member and ciphertext are
	// those of the last read holds the same instance, already opened.
	insts := make([]events.Instance, 0, len(entries))
	opened := make(map[string]events.Instance, len(entries))
	for _, e := range entries {
		id := keys.RegistryMember(e.Name, e.ID) + "\x00" + string(e.Ciphertext)
		inst, ok := r.cache.opened[id]
		if !ok {
			var err error
			if inst, err = r.open(e, "find"); err != nil {
				continue
			}
		}
		opened[id] = inst
		inst.Created = e.Created.UTC()
		insts = append(insts, inst)
	}
	r.cache.opened = opened
	sort.Slice(insts, func(i, j int) bool {
		if insts[i].Name != insts[j].Name {
			return insts[i].Name < insts[j].Name
		}
		return insts[i].ID < insts[j].ID
	})
	r.metrics.instances.Set(float64(len(insts)))
	r.cache.putInstances(gen, insts, snap.Seqs, r.clock())
	return insts, snap.Seqs, gen, nil
}

// open decrypts and decodes one entry, counting one that does not open.
func (r *Registry) open(e store.Entry, where string) (events.Instance, error) {
	var inst events.Instance
	pt, err := r.sealer.Open(e.Ciphertext, []byte(keys.RegistryMember(e.Name, e.ID)))
	if err == nil {
		err = json.Unmarshal(pt, &inst)
		if err == nil && (inst.Name != e.Name || inst.ID != e.ID) {
			err = fmt.Errorf("registry: entry %s:%s holds %s:%s", e.Name, e.ID, inst.Name, inst.ID)
		}
	}
	if err != nil {
		reason := "corrupt"
		if errors.Is(err, crypt.ErrUnknownKey) {
			reason = "unknown_key"
		}
		r.metrics.undecryptable.WithLabelValues(where, reason).Inc()
		r.log.Debug("skipping a registry entry", "name", e.Name, "id", e.ID, "reason", reason)
		return inst, err
	}
	return inst, nil
}

// BuildFindReply lists the instances of name ("" for every one) and maps
// each endpoint (top-level resource) of an instance with a public URL to
// that URL. A resource served at several different URLs goes to
// Conflicts with its sorted URLs instead of URLMap.
// It is events.BuildFindReply, which a client's watch uses on its own
// copy of the instances.
func BuildFindReply(insts []events.Instance, name string) events.FindReply {
	return events.BuildFindReply(insts, name)
}

// cache holds the decrypted instances and encoded find replies between
// reads of Redis, for find_cache on the local clock; invalidate drops
// them (a change event arrived).
type cache struct {
	load   sync.Mutex                 // one read of Redis at a time
	opened map[string]events.Instance // under load: member NUL ciphertext -> instance, from the last read

	mu      sync.Mutex
	gen     uint64
	at      time.Time
	valid   bool
	insts   []events.Instance
	seqs    map[string]uint64 // each name's sequence at insts
	replies map[string]*encodedReply
}

// encodedReply is one encoded find reply. Its gzipped form is made once,
// by the first request that accepts gzip, and kept beside it: the cache
// drops both together.
type encodedReply struct {
	plain  []byte
	gzOnce sync.Once
	gz     []byte // nil: sent plain (too small, or gzip saved nothing)
}

func (c *cache) invalidate() {
	c.mu.Lock()
	c.gen++
	c.valid = false
	c.insts, c.seqs, c.replies = nil, nil, nil
	c.mu.Unlock()
}

func (c *cache) generation() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.gen
}

func (c *cache) fresh(now time.Time, ttl time.Duration) bool {
	return c.valid && ttl > 0 && now.Sub(c.at) < ttl
}

func (c *cache) instances(now time.Time, ttl time.Duration) ([]events.Instance, map[string]uint64, uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.insts, c.seqs, c.gen, c.fresh(now, ttl)
}

func (c *cache) reply(name string, now time.Time, ttl time.Duration) (*encodedReply, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.fresh(now, ttl) {
		return nil, false
	}
	rep, ok := c.replies[name]
	return rep, ok
}

// putInstances keeps insts unless a change arrived since gen was read.
func (c *cache) putInstances(gen uint64, insts []events.Instance, seqs map[string]uint64, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if gen != c.gen {
		return
	}
	c.insts, c.seqs, c.at, c.valid, c.replies = insts, seqs, now, true, map[string]*encodedReply{}
}

// putReply keeps the reply for name, built from the instances of
// generation gen, unless a change arrived since, and returns the one
// kept (another miss's, if it was first).
func (c *cache) putReply(gen uint64, name string, rep *encodedReply) *encodedReply {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.valid || c.gen != gen {
		return rep
	}
	// Concurrent misses share the first one's entry, so its gzipped form
	// is made once.
	if kept, ok := c.replies[name]; ok {
		return kept
	}
	if len(c.replies) < 4096 {
		c.replies[name] = rep
	}
	return rep
}

// handleRefresh reaps expired instances now and rebuilds the find cache
// (the URL map) from Redis. The notifier's periodic task asks for it, so
// expiries are announced even while no registry replica holds the
// reaper's lock long enough to reap, and the map is never older than the
// task's interval.
func (r *Registry) handleRefresh(req micro.Request) {
	var body events.RefreshRequest
	if err := events.DecodeRequest(req.Data(), &body); err != nil {
		r.reply(req, "refresh", nil, err)
		return
	}
	ctx, cancel := r.requestContext()
	defer cancel()
	reply, err := r.Refresh(ctx)
	if err != nil {
		r.reply(req, "refresh", nil, err)
		return
	}
	data, err := json.Marshal(reply)
	r.reply(req, "refresh", data, err)
}

// Refresh reaps what has expired, drops the find cache and reads the live
// instances again.
func (r *Registry) Refresh(ctx context.Context) (events.RefreshReply, error) {
	reaped, err := r.ReapOnce(ctx)
	if err != nil {
		return events.RefreshReply{}, err
	}
	r.cache.invalidate()
	insts, _, _, err := r.live(ctx)
	if err != nil {
		return events.RefreshReply{}, err
	}
	find := BuildFindReply(insts, "")
	return events.RefreshReply{Reaped: reaped, Instances: len(insts), Resources: len(find.URLMap), Conflicts: len(find.Conflicts)}, nil
}
