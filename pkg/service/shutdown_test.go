package service_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/allot/allot/pkg/service"
)

// calls records the order stop functions run in.
type calls struct {
	mu    sync.Mutex
	names []string
}

// fn returns a stop function that records name and returns err.
func (c *calls) fn(name string, err error) func(context.Context) error {
	return func(context.Context) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		c.names = append(c.names, name)
		return err
	}
}

func (c *calls) got() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.names...)
}

func TestStackClose(t *testing.T) {
	boom := errors.New("boom")
	bang := errors.New("bang")
	type push struct {
		name string
		err  error
	}
	tests := []struct {
		name      string
		push      []push
		wantCalls []string
		wantLogs  []string // message and name of each log record
		wantErrs  []error
		wantMsg   string
	}{
		{
			name:      "reverse order",
			push:      []push{{"redis", nil}, {"nats", nil}, {"http", nil}, {"consumer", nil}},
			wantCalls: []string{"consumer", "http", "nats", "redis"},
			wantLogs:  []string{"stopped consumer", "stopped http", "stopped nats", "stopped redis"},
		},
		{
			name:      "errors joined, the rest still run",
			push:      []push{{"redis", bang}, {"nats", nil}, {"consumer", boom}},
			wantCalls: []string{"consumer", "nats", "redis"},
			wantLogs:  []string{"stop failed consumer", "stopped nats", "stop failed redis"},
			wantErrs:  []error{boom, bang},
			wantMsg:   "service: stop consumer: boom\nservice: stop redis: bang",
		},
		{
			name: "empty",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, log := newLogRecorder()
			s := service.NewStack(log)
			var c calls
			for _, p := range tt.push {
				s.Push(p.name, c.fn(p.name, p.err))
			}
			err := s.Close(t.Context())
			if diff := cmp.Diff(tt.wantCalls, c.got()); diff != "" {
				t.Errorf("calls (-want +got):\n%s", diff)
			}
			var logs []string
			for _, r := range rec.all() {
				logs = append(logs, r.Msg+" "+r.Attrs["name"])
				if r.Attrs["duration"] == "" {
					t.Errorf("log %q has no duration", r.Msg)
				}
			}
			if diff := cmp.Diff(tt.wantLogs, logs); diff != "" {
				t.Errorf("logs (-want +got):\n%s", diff)
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Errorf("Close = %v, want it to wrap %v", err, want)
				}
			}
			if tt.wantMsg == "" && err != nil {
				t.Errorf("Close = %v, want nil", err)
			}
			if tt.wantMsg != "" && (err == nil || err.Error() != tt.wantMsg) {
				t.Errorf("Close = %q, want %q", err, tt.wantMsg)
			}
			if err := s.Close(t.Context()); err != nil || len(c.got()) != len(tt.wantCalls) {
				t.Errorf("second Close = %v and ran again; want nil and nothing run", err)
			}
		})
	}
}

func TestStackCloseTimeout(t *testing.T) {
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	var c calls
	var s service.Stack // the zero Stack works
	s.Push("redis", c.fn("redis", nil))
	s.Push("consumer", func(context.Context) error { <-release; return nil }) // ignores ctx
	s.Push("http", c.fn("http", nil))

	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := s.Close(ctx)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Close took %s, want about the 50ms deadline", took)
	}
	if err == nil || !strings.Contains(err.Error(), "service: stop consumer: abandoned at the deadline") {
		t.Errorf("Close = %v, want the consumer abandoned", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Close = %v, want it to wrap context.DeadlineExceeded", err)
	}
	// redis was started after the deadline, with the ended ctx; it runs
	// even though Close did not wait for it.
	deadline := time.Now().Add(5 * time.Second)
	for len(c.got()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if diff := cmp.Diff([]string{"http", "redis"}, c.got()); diff != "" {
		t.Errorf("calls (-want +got):\n%s", diff)
	}
}

func TestStackPassesCtx(t *testing.T) {
	type key struct{}
	ctx := context.WithValue(t.Context(), key{}, "v")
	var got any
	s := service.NewStack(nil)
	s.Push("x", func(ctx context.Context) error { got = ctx.Value(key{}); return nil })
	if err := s.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if got != "v" {
		t.Errorf("stop function saw ctx value %v, want v", got)
	}
}
