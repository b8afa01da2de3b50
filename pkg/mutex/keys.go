package mutex

// Every Redis key this package touches is built in this file.
//
// A lock named N under the prefix P uses two keys. Both carry the hash tag {N},
// so they hash to one Redis Cluster slot and a single script may touch both:
//
//	P + "lock:{N}"        the lock: the holder's random token, with a PX expiry
//	P + "lock:{N}:fence"  the fencing counter: INCR'd by every acquire; it has
//	                      no expiry, because tokens must keep increasing after
//	                      the lock key itself has come and gone

const fenceSuffix = ":fence"

// lockKeys returns the lock key and the fence key of the lock name under
// prefix. The lock key is a prefix of the fence key, so both come out of one
// string (one allocation on the acquire path).
func lockKeys(prefix, name string) (lock, fence string) {
	fence = prefix + "lock:{" + name + "}" + fenceSuffix
	return fence[:len(fence)-len(fenceSuffix)], fence
}
