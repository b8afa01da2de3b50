package auth

import (
	"context"
	"errors"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/services/auth/internal/apikey"
	"github.com/allot/allot/services/auth/internal/policy"
	"github.com/nats-io/nats.go/micro"
)

// maxAdjustTTL bounds an override or addition: they are for a while.
const maxAdjustTTL = 30 * 24 * time.Hour

// ChangedSubject is where a change to a key is announced, so that the
// replica that hears it disconnects the key's connections.
func ChangedSubject(id string) string { return "auth.changed." + id }

func (s *Service) keyEndpoints() []service.Endpoint {
	return []service.Endpoint{
		{Name: "create", Subject: "create", Handler: s.handleCreate},
		{Name: "list", Subject: "list", Handler: s.handleList},
		{Name: "revoke", Subject: "revoke", Handler: s.handleRevoke},
		{Name: "override", Subject: "override", Handler: s.handleAdjust(false)},
		{Name: "add", Subject: "add", Handler: s.handleAdjust(true)},
	}
}

func (s *Service) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 5*time.Second)
}

func (s *Service) handleCreate(req micro.Request) {
	var r events.KeyCreateRequest
	if err := events.DecodeRequest(req.Data(), &r); err != nil {
		s.replier.Reply(req, "create", nil, err)
		return
	}
	role, ok := s.cfg.Roles[r.Role]
	if !ok {
		s.replier.Reply(req, "create", nil, events.NewServiceError(events.CodeNotFound, "role", "no role %q (roles: %s)", r.Role, roleNames(s.cfg.Roles)))
		return
	}
	ttl := s.cfg.KeyTTL
	if r.TTL != "" {
		ttl, _ = time.ParseDuration(r.TTL) // validated
	}
	if s.cfg.MaxKeyTTL > 0 && ttl > s.cfg.MaxKeyTTL {
		s.replier.Reply(req, "create", nil, events.NewServiceError(events.CodeBadRequest, "ttl", "at most auth.max_key_ttl (%s), got %s", s.cfg.MaxKeyTTL, ttl))
		return
	}
	if _, err := policy.Compile(role.Grant, r.UIDs); err != nil {
		s.replier.Reply(req, "create", nil, events.NewServiceError(events.CodeBadRequest, "uids", "role %s with these uids: %v", r.Role, err))
		return
	}
	k, err := apikey.New()
	if err != nil {
		s.replier.Reply(req, "create", nil, err)
		return
	}
	now := s.now()
	rec := Record{ID: k.ID, Hash: k.Hash(), Role: r.Role, UIDs: r.UIDs, Note: r.Note, Created: now, Expires: now.Add(ttl)}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.backend.Create(ctx, rec); err != nil {
		s.replier.Reply(req, "create", nil, err)
		return
	}
	s.log.Info("key created", "key", rec.ID, "role", rec.Role, "uids", rec.UIDs, "expires", rec.Expires)
	s.replier.Reply(req, "create", events.KeyCreated{Key: k.String(), KeyInfo: info(rec)}, nil)
}

func (s *Service) handleList(req micro.Request) {
	var r events.KeyListRequest
	if err := events.DecodeRequest(req.Data(), &r); err != nil {
		s.replier.Reply(req, "list", nil, err)
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	recs, err := s.backend.List(ctx)
	if err != nil {
		s.replier.Reply(req, "list", nil, err)
		return
	}
	out := events.KeyList{Keys: make([]events.KeyInfo, 0, len(recs))}
	for _, rec := range recs {
		out.Keys = append(out.Keys, info(rec))
	}
	s.replier.Reply(req, "list", out, nil)
}

func (s *Service) handleRevoke(req micro.Request) {
	var r events.KeyRevokeRequest
	if err := events.DecodeRequest(req.Data(), &r); err != nil {
		s.replier.Reply(req, "revoke", nil, err)
		return
	}
	ctx, cancel := s.ctx()
	defer cancel()
	if err := s.backend.Revoke(ctx, r.ID, s.now()); err != nil {
		s.replier.Reply(req, "revoke", nil, err)
		return
	}
	s.changed(r.ID)
	s.log.Info("key revoked", "key", r.ID)
	s.replyKey(ctx, req, "revoke", r.ID)
}

func (s *Service) handleAdjust(add bool) micro.HandlerFunc {
	endpoint := "override"
	if add {
		endpoint = "add"
	}
	return func(req micro.Request) {
		var r events.KeyAdjustRequest
		if err := events.DecodeRequest(req.Data(), &r); err != nil {
			s.replier.Reply(req, endpoint, nil, err)
			return
		}
		if add != (r.Allow != "") {
			field, want := "deny", "deny (an override takes a subject away)"
			if add {
				field, want = "allow", "allow (an addition grants a subject)"
			}
			s.replier.Reply(req, endpoint, nil, events.NewServiceError(events.CodeBadRequest, field, "%s takes %s", endpoint, want))
			return
		}
		ttl, _ := time.ParseDuration(r.TTL) // validated
		if ttl > maxAdjustTTL {
			s.replier.Reply(req, endpoint, nil, events.NewServiceError(events.CodeBadRequest, "ttl", "at most %s: an override or addition is for a while", maxAdjustTTL))
			return
		}
		ctx, cancel := s.ctx()
		defer cancel()
		rec, err := s.backend.Get(ctx, r.ID)
		if err != nil {
			s.replier.Reply(req, endpoint, nil, err)
			return
		}
		now := s.now()
		a := Adjustment{Allow: r.Allow, Deny: r.Deny, Created: now, Expires: now.Add(ttl)}
		// It must compile with what is already in force, or the key
		// could no longer connect at all.
		rec.Adjustments = append(rec.Active(now), a)
		if role, ok := s.cfg.Roles[rec.Role]; ok {
			if _, err := grantOf(rec, role, now); err != nil {
				s.replier.Reply(req, endpoint, nil, events.NewServiceError(events.CodeBadRequest, "", "key %s (role %s): %v", rec.ID, rec.Role, err))
				return
			}
		}
		if err := s.backend.Adjust(ctx, r.ID, a); err != nil {
			s.replier.Reply(req, endpoint, nil, err)
			return
		}
		s.changed(r.ID)
		s.log.Info("key adjusted", "key", r.ID, "allow", r.Allow, "deny", r.Deny, "until", a.Expires)
		s.replyKey(ctx, req, endpoint, r.ID)
	}
}

func (s *Service) replyKey(ctx context.Context, req micro.Request, endpoint, id string) {
	rec, err := s.backend.Get(ctx, id)
	if err != nil {
		s.replier.Reply(req, endpoint, nil, err)
		return
	}
	s.replier.Reply(req, endpoint, events.KeyDone{OK: true, Key: info(rec)}, nil)
}

// classify maps the backend's errors to replies.
func classify(err error) *events.ServiceError {
	switch {
	case errors.Is(err, ErrNotFound):
		return events.NewServiceError(events.CodeNotFound, "id", "%v", err)
	case errors.Is(err, ErrExists):
		return events.NewServiceError(events.CodeConflict, "id", "%v", err)
	case errors.Is(err, ErrUnavailable):
		return events.NewServiceError(events.CodeUnavailable, "", "%v", err)
	case errors.Is(err, ErrBadRecord):
		return events.NewServiceError(events.CodeBadRequest, "", "%v", err)
	case errors.Is(err, ErrReadOnly):
		return events.NewServiceError(events.CodeConflict, "", "%v: change the keys file instead", err)
	}
	return nil
}

func info(r Record) events.KeyInfo {
	out := events.KeyInfo{ID: r.ID, Role: r.Role, UIDs: r.UIDs, Note: r.Note, Created: r.Created, Expires: r.Expires, Revoked: r.Revoked, LastUsed: r.LastUsed}
	for _, a := range r.Adjustments {
		out.Adjustments = append(out.Adjustments, events.KeyAdjustment{Allow: a.Allow, Deny: a.Deny, Expires: a.Expires})
	}
	return out
}
