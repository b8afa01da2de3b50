package keys

import "strconv"

// Slots is the number of hash slots of a Redis Cluster.
const Slots = 16384

// Slot returns the hash slot of every key tagged {tag}: the CRC16 (XMODEM)
// of the tag, modulo Slots, as Redis Cluster computes it.
func Slot(tag string) int {
	var crc uint16
	for i := 0; i < len(tag); i++ {
		crc ^= uint16(tag[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % Slots
}

// SlotTags returns, for each hash slot, a tag whose keys live in that
// slot: keys one per slot, such as the epoch markers of a Redis Cluster,
// are named with them. A tag is "s." and a base-36 number, the first such
// number that hashes to the slot; no uid, instance or other tag allot
// writes has that form but a uid chosen to match one, and the keys named
// with them have kinds of their own. It computes about 160,000 CRC16s (a
// few milliseconds): call it once and keep the result.
func SlotTags() []string {
	tags := make([]string, Slots)
	for n, left := uint64(0), Slots; left > 0; n++ {
		tag := "s." + strconv.FormatUint(n, 36)
		if s := Slot(tag); tags[s] == "" {
			tags[s] = tag
			left--
		}
	}
	return tags
}

// MeterEpochSlots are the meter's epoch markers of a Redis Cluster, one
// per hash slot (index), each a HASH like MeterEpoch: every apply of
// events under a tag of that slot checks and raises its slot's, so a
// master that comes back empty (or a replica promoted without its
// writes) is seen by the slots it serves. Compute once, as SlotTags.
func (k Keys) MeterEpochSlots() []string { return k.slotted("meter", "epoch") }

// RateLimitEpochSlots are the rate limiter's epoch markers of a Redis
// Cluster, one per hash slot, beside RateLimitEpoch.
func (k Keys) RateLimitEpochSlots() []string { return k.slotted("ratelimit", "epoch") }

func (k Keys) slotted(parts ...string) []string {
	out := SlotTags()
	for i, tag := range out {
		out[i] = k.tagged(tag, parts...)
	}
	return out
}
