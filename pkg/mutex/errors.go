package mutex

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinel errors; check them with errors.Is. Errors about one lock come
// wrapped in an [*Error] that names the lock.
var (
	// ErrNotAcquired: the lock is held by someone else and TryAcquire did not
	// wait, or Acquire gave up (MaxWait passed or the context ended; in that
	// last case the error also matches the context's error).
	ErrNotAcquired = errors.New("mutex: not acquired")

	// ErrNotHeld: the caller no longer holds the lock. It expired, was taken
	// over by another holder after expiring, was released already, or its
	// time to live ran out locally without a successful refresh.
	ErrNotHeld = errors.New("mutex: not held")

	// ErrInvalid: a bad argument (nil client, empty or oversized name, TTL
	// under 1 ms, ...). Retrying the same call will not help.
	ErrInvalid = errors.New("mutex: invalid argument")
)

// Error is the error of one operation on one lock. Err is one of the
// sentinels above (possibly wrapped with detail) or the Redis client's error.
type Error struct {
	Op   string // "acquire", "release", "refresh", "ttl" or "hold"
	Name string // the lock name
	Err  error
}

// Error reads like `mutex: release "jobs": not held`.
func (e *Error) Error() string {
	msg := "<nil>"
	if e.Err != nil {
		// The sentinels already carry the package prefix; say it once.
		msg = strings.TrimPrefix(e.Err.Error(), "mutex: ")
	}
	return "mutex: " + e.Op + " " + quoteName(e.Name) + ": " + msg
}

func (e *Error) Unwrap() error { return e.Err }

// quoteName quotes a lock name for a message, cutting names that are too long
// to be valid anyway so that a megabyte of garbage stays out of the logs.
func quoteName(name string) string {
	if len(name) > MaxNameLen {
		return strconv.Quote(name[:32]) + "... (" + strconv.Itoa(len(name)) + " bytes)"
	}
	return strconv.Quote(name)
}
