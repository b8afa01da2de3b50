package main

import (
	"context"
	"errors"
	"sync"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// kinds counts errors or outcomes by kind; safe for concurrent use.
type kinds struct {
	mu sync.Mutex
	m  map[string]int64
}

func newKinds() *kinds { return &kinds{m: map[string]int64{}} }

func (k *kinds) add(kind string, n int64) {
	if n == 0 {
		return
	}
	k.mu.Lock()
	k.m[kind] += n
	k.mu.Unlock()
}

func (k *kinds) snapshot() map[string]int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.m) == 0 {
		return nil
	}
	out := make(map[string]int64, len(k.m))
	for a, b := range k.m {
		out[a] = b
	}
	return out
}

func (k *kinds) total() int64 {
	k.mu.Lock()
	defer k.mu.Unlock()
	var n int64
	for _, v := range k.m {
		n += v
	}
	return n
}

// errKind names an error for the report.
func errKind(err error) string {
	if k := grpcErrKind(err); k != "" {
		return k
	}
	var serr *events.ServiceError
	switch {
	case errors.As(err, &serr):
		return string(serr.Code)
	case errors.Is(err, events.ErrTimeout), errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout), errors.Is(err, jetstream.ErrAsyncPublishTimeout):
		return "timeout"
	case errors.Is(err, events.ErrNoResponders), errors.Is(err, nats.ErrNoResponders):
		return "no_responders"
	case errors.Is(err, events.ErrNoStream):
		return "no_stream"
	case errors.Is(err, nats.ErrConnectionClosed), errors.Is(err, nats.ErrDisconnected), errors.Is(err, nats.ErrConnectionReconnecting):
		return "disconnected"
	case errors.Is(err, context.Canceled):
		return "cancelled"
	}
	return "other"
}
