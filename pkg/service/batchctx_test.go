package service

import (
	"testing"
	"time"

	"github.com/nats-io/nats.go/micro"
)

// TestBatchContextEndsByTheFirstArrival: a batch's context ends budget
// after its earliest request arrived, so one that waited behind a stuck
// batch gets its answer within its own budget; a request of another kind
// counts as arriving now.
func TestBatchContextEndsByTheFirstArrival(t *testing.T) {
	now := time.Now()
	reqs := []micro.Request{
		&request{received: now.Add(-300 * time.Millisecond)},
		&request{received: now.Add(-time.Second)},
		NewDetached(nil, "s", "r", nil, nil),
	}
	ctx, cancel := BatchContext(reqs, 1500*time.Millisecond)
	defer cancel()
	dl, ok := ctx.Deadline()
	if want := now.Add(500 * time.Millisecond); !ok || dl.Sub(want).Abs() > 50*time.Millisecond {
		t.Errorf("deadline %v, want about %v", dl, want)
	}
	ctx, cancel = BatchContext([]micro.Request{&request{received: now.Add(-2 * time.Second)}}, time.Second)
	defer cancel()
	if ctx.Err() == nil {
		t.Error("a batch whose first request waited past its budget must have its context ended already")
	}
	ctx, cancel = BatchContext([]micro.Request{NewDetached(nil, "s", "r", nil, nil)}, time.Second)
	defer cancel()
	if dl, _ := ctx.Deadline(); time.Until(dl) < 900*time.Millisecond {
		t.Errorf("a detached request's deadline %v is not a budget from now", dl)
	}
}
