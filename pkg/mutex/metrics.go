package mutex

import (
	"errors"
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Values of the result label of allot_mutex_acquisitions_total.
const (
	resultAcquired    = "acquired"     // the lock was taken
	resultNotAcquired = "not_acquired" // held by someone else: TryAcquire failed, or Acquire gave up
	resultError       = "error"        // Redis could not be asked (network, server error)
)

// metrics are the series of one Locker. A nil *metrics records nothing, which
// is what a Locker without a Registerer has.
//
// Every series is a Vec, even the ones without labels: Register then fails
// with AlreadyRegisteredError only for a collector of the very same concrete
// type, so two Lockers on one registry share the series, while a foreign
// collector that took one of the names is reported as an error.
type metrics struct {
	acquired, notAcquired, failed prometheus.Counter
	wait                          prometheus.Observer
	lost                          prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	if reg == nil {
		return nil, nil
	}
	var registered []prometheus.Collector
	fail := func(err error) (*metrics, error) {
		// Leave the registry as it was: no half set of series.
		for _, c := range registered {
			reg.Unregister(c)
		}
		return nil, fmt.Errorf("mutex: register metrics: %w", err)
	}

	acquisitions, ok, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "allot_mutex_acquisitions_total",
		Help: "Attempts to take a lock (Acquire or TryAcquire calls that reached Redis), by result: acquired, not_acquired, error.",
	}, []string{"result"}))
	if err != nil {
		return fail(err)
	}
	if ok {
		registered = append(registered, acquisitions)
	}
	wait, ok, err := register(reg, prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "allot_mutex_wait_seconds",
		Help: "Time Acquire spent waiting for a lock that was held when it asked, until it got the lock or gave up.",
		// 1 ms to about a minute, x4 per bucket.
		Buckets: prometheus.ExponentialBuckets(0.001, 4, 9),
	}, nil))
	if err != nil {
		return fail(err)
	}
	if ok {
		registered = append(registered, wait)
	}
	lost, _, err := register(reg, prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "allot_mutex_lost_total",
		Help: "Locks lost while held: a refresh or release found another token or none, or the time to live ran out without a successful refresh.",
	}, nil))
	if err != nil {
		return fail(err)
	}

	return &metrics{
		acquired:    acquisitions.WithLabelValues(resultAcquired),
		notAcquired: acquisitions.WithLabelValues(resultNotAcquired),
		failed:      acquisitions.WithLabelValues(resultError),
		wait:        wait.WithLabelValues(),
		lost:        lost.WithLabelValues(),
	}, nil
}

// register registers c, or returns the collector of the same type that is
// already registered under the same description. ok reports whether c itself
// was registered (so that it can be unregistered again).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) (_ C, ok bool, _ error) {
	err := reg.Register(c)
	if err == nil {
		return c, true, nil
	}
	if are, isAre := errors.AsType[prometheus.AlreadyRegisteredError](err); isAre {
		if existing, sameType := are.ExistingCollector.(C); sameType {
			return existing, false, nil
		}
	}
	return c, false, err
}

func (m *metrics) result(result string) {
	if m == nil {
		return
	}
	switch result {
	case resultAcquired:
		m.acquired.Inc()
	case resultNotAcquired:
		m.notAcquired.Inc()
	default:
		m.failed.Inc()
	}
}

// waited records the time an Acquire spent on a lock that was held when it
// first asked.
func (m *metrics) waited(d time.Duration) {
	if m == nil {
		return
	}
	m.wait.Observe(d.Seconds())
}

func (m *metrics) lostOne() {
	if m == nil {
		return
	}
	m.lost.Inc()
}
