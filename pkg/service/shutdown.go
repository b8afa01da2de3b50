package service

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Stack stops the parts of a service in the reverse order of their start:
// push each part as it starts (consumers after the clients they use), and
// Close stops the consumers before closing the clients.
//
// The zero Stack is ready to use and logs nothing.
type Stack struct {
	log *slog.Logger

	mu    sync.Mutex
	steps []step
}

// step is one named stop function.
type step struct {
	name string
	fn   func(context.Context) error
}

// NewStack returns an empty stack that logs each stop to log.
func NewStack(log *slog.Logger) *Stack {
	return &Stack{log: log}
}

// Push adds a stop function, run by Close before every one pushed earlier.
func (s *Stack) Push(name string, fn func(context.Context) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.steps = append(s.steps, step{name, fn})
}

// Close runs every stop function, the last pushed first, and empties the
// stack. Each gets ctx and is logged, "stopped" with its duration or
// "stop failed" with its error; an error does not stop the rest. A function
// still running when ctx ends is abandoned, with an error naming it, and
// Close goes on: the functions after it still start, with the ended ctx,
// so they can release what they hold at once, but are not waited for.
// Close returns the errors joined.
func (s *Stack) Close(ctx context.Context) error {
	s.mu.Lock()
	steps := s.steps
	s.steps = nil
	s.mu.Unlock()

	log := orDiscard(s.log)
	var errs []error
	for i := len(steps) - 1; i >= 0; i-- {
		st := steps[i]
		start := time.Now()
		err := runStep(ctx, st.fn)
		took := time.Since(start)
		if err != nil {
			err = fmt.Errorf("service: stop %s: %w", st.name, err)
			log.Error("stop failed", "name", st.name, "duration", took, "error", err)
			errs = append(errs, err)
			continue
		}
		log.Info("stopped", "name", st.name, "duration", took)
	}
	return errors.Join(errs...)
}

// runStep runs fn and waits for it until ctx ends.
func runStep(ctx context.Context, fn func(context.Context) error) error {
	done := make(chan error, 1)
	go func() { done <- fn(ctx) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done: // finished as the deadline came
			return err
		default:
			return fmt.Errorf("abandoned at the deadline: %w", context.Cause(ctx))
		}
	}
}
