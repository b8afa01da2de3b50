package ratelimit

import (
	"sync"
	"time"
)

// maxCached bounds the (uid, service) pairs the cache holds; past it,
// expired entries are swept, and if none had expired nothing new is
// cached until some do.
const maxCached = 100_000

// cache remembers (uid, service) pairs known to be over their limit until
// their retry time, so a burst of refused calls does not reach Redis.
// Times are on the local clock, and only differences of them matter
// (time.Now carries a monotonic reading), so the clock's offset from
// Redis's does not. A reset on this replica drops the entry; a reset or a
// raised limit elsewhere is seen when the entry ends (at most one
// interval).
type cache struct {
	mu      sync.Mutex
	max     int
	entries map[cacheKey]cacheEntry
}

type cacheKey struct{ uid, service string }

type cacheEntry struct {
	limit   int64
	retryAt time.Time
	resetAt time.Time
}

func newCache(max int) *cache {
	return &cache{max: max, entries: map[cacheKey]cacheEntry{}}
}

// get returns the cached refusal of (uid, service) at now, if any.
func (c *cache) get(uid, service string, now time.Time) (cacheEntry, bool) {
	k := cacheKey{uid, service}
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k]
	if !ok {
		return e, false
	}
	if !now.Before(e.retryAt) {
		delete(c.entries, k)
		return e, false
	}
	return e, true
}

// put caches a refusal of (uid, service).
func (c *cache) put(uid, service string, e cacheEntry, now time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		for k, old := range c.entries {
			if !now.Before(old.retryAt) {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			return
		}
	}
	c.entries[cacheKey{uid, service}] = e
}

// drop forgets (uid, service).
func (c *cache) drop(uid, service string) {
	c.mu.Lock()
	delete(c.entries, cacheKey{uid, service})
	c.mu.Unlock()
}
