// Package mutex is a lock on a single Redis node, for mutual exclusion
// between replicas of allot (one scheduler, one reaper, one migration at a
// time).
//
// A [Locker] takes locks by name; a [Lock] is one held lock:
//
//	locker, err := mutex.New(redisClient, mutex.Options{Registerer: reg})
//	...
//	err = locker.WithLock(ctx, "migrations", mutex.LockOptions{TTL: 30 * time.Second},
//		func(ctx context.Context) error {
//			return migrate(ctx) // ctx is cancelled if the lock is lost
//		})
//
// Each lock is a Redis key holding a random token of its holder, with an
// expiry set by Redis (SET PX): Redis's clock, not the holder's, decides when
// a lock runs out. Taking, refreshing and releasing are each one Lua script
// that compares the token before it writes, so nobody releases or extends a
// lock they no longer hold; that is reported as [ErrNotHeld].
//
// # Fencing tokens
//
// Every acquire also gets a fencing token ([Lock.FencingToken]) from a counter
// incremented in the same script: for one lock name, each holder's token is
// greater than every earlier holder's.
//
// What they protect against: a holder that stops for longer than its TTL (a
// GC or VM pause, a slow disk, a network partition) and then carries on as if
// it still held the lock, while a newer holder already works. A lock alone
// cannot stop that holder; the resource it writes to can, if it is given the
// token with every write and refuses a token lower than the highest it has
// accepted (a column compared in the UPDATE's WHERE, a conditional write).
//
// What they do not protect against:
//   - A resource that does not check the token: then the stale holder's
//     writes land, and the lock only makes overlaps rare, not impossible.
//     [Lock.Lost] and WithLock's cancelled context narrow the window; they
//     cannot close it, since a pause can fall between the check and the write.
//   - Losing the Redis data. This is a single-node lock: there is no Redlock
//     and no claim of safety across several masters. If the node fails over
//     to a replica that missed the last writes, or restarts without having
//     persisted them, two holders can hold the same lock at once and the
//     counter can go back, repeating tokens. The same happens if the fence
//     key is evicted (run Redis with a maxmemory policy that evicts only keys
//     with an expiry, or none) or deleted by hand.
//   - Comparing tokens of different lock names: each name counts on its own.
//
// # Redis
//
// Keys are built in keys.go: "<prefix>lock:{<name>}" and
// "<prefix>lock:{<name>}:fence", with the default prefix "allot:". The hash
// tag keeps both keys of a lock in one Redis Cluster slot. The fence key never
// expires: one small integer per lock name ever used.
//
// The client only needs the [Scripter] methods, which every go-redis v9
// client has. Each operation is one EVALSHA round trip (EVAL once, if Redis
// does not know the script yet).
//
// # Metrics
//
// With Options.Registerer set, a Locker exports allot_mutex_acquisitions_total
// {result="acquired"|"not_acquired"|"error"}, the histogram
// allot_mutex_wait_seconds (time spent by Acquire calls that found the lock
// held) and allot_mutex_lost_total (locks lost while held). Lock names are not
// labels, so the series stay few whatever names are used.
package mutex
