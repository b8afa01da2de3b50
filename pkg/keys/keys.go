// Package keys builds every Redis key the allot services use, in one
// place. Every key of one uid carries the hash tag {<uid>}, so the
// multi-key Lua scripts of one uid run on Redis Cluster; global and
// per-instance state carries its own tag, and the dedup record of an
// event always shares the tag of the state the event changes.
//
// Layout, with the default prefix "allot:":
//
//	allot:{u-42}:grants              HASH  metric -> the uid's grant override
//	allot:{u-42}:g:<metric>          HASH  grant state: u used, s start ms, e end ms (0: indefinite),
//	                                       n thresholds notified, p notices not yet published
//	allot:{u-42}:c:<metric>          HASH  counter or gauge of the uid: label set -> value
//	allot:{u-42}:e:<event id>        STRING dedup record of an applied event or authorize id
//	allot:{i.<source>}:c:<metric>    HASH  counter or gauge of one publishing instance
//	allot:{i.<source>}:e:<event id>  STRING its dedup records
//	allot:{global}:c:<metric>        HASH  global counter or gauge
//	allot:{global}:e:<event id>      STRING its dedup records
//	allot:index:instances            SET   sources seen with instance-scoped metrics (for /metrics)
//	allot:meter:epoch                HASH  the meter's epoch marker: seq, the highest USAGE sequence applied;
//	                                       missing while the stream has events means Redis lost the state;
//	                                       held_since (ms), when a rebuild found the stream without its oldest events
//	allot:{s.<n>}:meter:epoch        HASH  on a Redis Cluster, one more marker per hash slot (s.<n> a tag of that
//	                                       slot, SlotTags): seq, the highest sequence applied in the slot
//	allot:{u-42}:rl:<service>:0      HASH  rate-limit window of (uid, service) for even window indexes:
//	allot:{u-42}:rl:<service>:1      HASH  ... and for odd ones; w window index, n count admitted
//	allot:{u-42}:rlu:0, :1           HASH  the same for the uid's own limit (requests naming no service)
//	allot:{u-42}:rle:<service>:<id>  STRING dedup record of a usage event counted as a hit of a service
//	allot:ratelimit:epoch            HASH  the rate limiter's epoch marker: seq, the last USAGE sequence its
//	                                       hits were rebuilt up to (0: none); missing while the stream has
//	                                       events means Redis lost the hit windows
//	allot:{s.<n>}:ratelimit:epoch    HASH  on a Redis Cluster, one more marker per hash slot
//	allot:{d.<descriptor id>}:rld:0, :1  HASH  the same for an Envoy descriptor's limit (gRPC front;
//	                                       DescriptorID escapes the domain and entries, so ids never collide)
//	allot:{d.<descriptor id>}:rldo   HASH  reserved for a descriptor's overrides (never written yet)
//	allot:{registry}:inst:<name>:<id> STRING one registered instance: its ciphertext, expiring (PX) after registry.ttl
//	allot:{registry}:expiry          ZSET  <name>:<id> -> when that instance expires (ms, Redis clock), for the reaper
//	allot:{registry}:ids             HASH  instance id -> the service name that holds it (a duplicate id is refused)
//	allot:{registry}:last            HASH  <name>:<id> -> the instance's current ciphertext, kept until it is reaped,
//	                                       so a change is seen by comparing and an expiry can say what expired
//	allot:{registry}:created         HASH  <name>:<id> -> when the instance first registered (ms), until it is reaped
//
//	allot:{u-42}:addr                STRING the uid's confirmed email address (set when a token verifies)
//	allot:{u-42}:tok:<nonce>         STRING a used confirmation token, kept until it would have expired
//	allot:{u-42}:sent:<task id>      STRING an email the notifier sent, kept for notifier.retention
//
//	allot:{auth}:key:<key id>        HASH  one API key of the redis auth backend: record (the immutable
//	                                       part, JSON, times in ms), revoked ms, last_used ms
//	allot:{auth}:adj:<key id>        HASH  the key's overrides and additions: "allow:<pattern>" or
//	                                       "deny:<pattern>" -> JSON (times in ms)
//	allot:{auth}:keys                SET   every key id, for listing
//
// The notifier's jobs live in asynq's own keys (asynq:{<queue>}:...),
// which take no prefix: deployments sharing a Redis use distinct queue
// names.
//
// Every registry key shares the tag {registry}, so one script registers or
// reaps an instance across all of them on Redis Cluster.
//
// Every auth key shares the tag {auth}: one script creates a key across
// its record and the ids SET, and one pipeline lists them all, on Redis
// Cluster too. Key ids are 8 characters of A-Z a-z 0-9 - _.
//
// A uid's rate-limit overrides live in its grants HASH: field "ratelimit"
// (the uid's own limit, and the default of services without a configured
// limit) and "ratelimit_<service>" (RateLimitField), so meter.grants sets
// them and every replica sees a change at once.
package keys

import (
	"strconv"
	"strings"
)

// Keys builds keys under one prefix. The zero value uses no prefix.
type Keys struct {
	prefix string
}

// New returns a key builder for prefix, e.g. "allot:".
func New(prefix string) Keys { return Keys{prefix: prefix} }

// Prefix returns the prefix.
func (k Keys) Prefix() string { return k.prefix }

// UserTag is the hash tag of a uid's keys.
func UserTag(uid string) string { return uid }

// InstanceTag is the hash tag of one publishing instance's keys.
func InstanceTag(source string) string { return "i." + source }

// GlobalTag is the hash tag of global state.
const GlobalTag = "global"

func (k Keys) tagged(tag string, parts ...string) string {
	var b strings.Builder
	n := len(k.prefix) + len(tag) + 2
	for _, p := range parts {
		n += len(p) + 1
	}
	b.Grow(n)
	b.WriteString(k.prefix)
	b.WriteByte('{')
	b.WriteString(tag)
	b.WriteByte('}')
	for _, p := range parts {
		b.WriteByte(':')
		b.WriteString(p)
	}
	return b.String()
}

// Grants is the HASH of uid's grant overrides, metric -> limit.
func (k Keys) Grants(uid string) string { return k.tagged(UserTag(uid), "grants") }

// Grant is the HASH holding uid's state of one grant.
func (k Keys) Grant(uid, metric string) string { return k.tagged(UserTag(uid), "g", metric) }

// Values is the HASH of a counter's or gauge's values under tag, label
// set -> value.
func (k Keys) Values(tag, metric string) string { return k.tagged(tag, "c", metric) }

// Dedup is the record that event or request id was applied to state
// under tag (the meter's records before dedup SETs; the rate limiter's).
func (k Keys) Dedup(tag, id string) string { return k.tagged(tag, "e", id) }

// DedupTag is the hash tag of the meter's dedup SETs on a single Redis,
// where every uid's records share one SET per time bucket.
const DedupTag = "dedup"

// DedupSet is the SET of the ids of events and requests applied to state
// under tag whose time falls in bucket (the time in ms divided by the
// bucket width, the meter's dedup TTL).
func (k Keys) DedupSet(tag string, bucket int64) string {
	return k.tagged(tag, "ids", strconv.FormatInt(bucket, 10))
}

// DedupSeqs is the ZSET of the stream sequences the meter applied to state
// under tag, as runs "first-last" scored by last (the meter's stream
// dedup; keys.DedupTag on a single Redis).
func (k Keys) DedupSeqs(tag string) string { return k.tagged(tag, "seqs") }

// DedupRecord returns the SET and the member that record id applied to
// state under tag in bucket. On a single Redis (perTag false) every tag
// shares the SET of DedupTag and the member names the tag; on a Cluster
// each tag has its own SET, in its state's slot.
func (k Keys) DedupRecord(tag, id string, bucket int64, perTag bool) (set, member string) {
	if perTag {
		return k.DedupSet(tag, bucket), id
	}
	return k.DedupSet(DedupTag, bucket), tag + " " + id
}

// RateLimit returns the two window HASHes of uid's limit for service,
// for even and odd window indexes; service "" is the uid's own limit.
func (k Keys) RateLimit(uid, service string) (even, odd string) {
	if service == "" {
		return k.tagged(UserTag(uid), "rlu", "0"), k.tagged(UserTag(uid), "rlu", "1")
	}
	return k.tagged(UserTag(uid), "rl", service, "0"), k.tagged(UserTag(uid), "rl", service, "1")
}

// RateLimitDedup is the record that usage event id was counted as a hit
// of uid's service; apart from the meter's record of the same event.
func (k Keys) RateLimitDedup(uid, service, id string) string {
	return k.tagged(UserTag(uid), "rle", service, id)
}

// RateLimitDedupPattern matches every record of a usage event counted
// as a hit, of every uid and service, for SCAN.
func (k Keys) RateLimitDedupPattern() string { return k.prefix + "{*}:rle:*" }

// RegistryTag is the hash tag of every registry key.
const RegistryTag = "registry"

// RegistryMember is how the registry names one instance in its sorted
// set and hashes: "<name>:<id>" (both tokens, so the first ':' splits).
func RegistryMember(name, id string) string { return name + ":" + id }

// ParseRegistryMember splits a RegistryMember.
func ParseRegistryMember(member string) (name, id string, ok bool) {
	return strings.Cut(member, ":")
}

// RegistryEntry is the STRING holding one registered instance's
// ciphertext, with the registration's TTL.
func (k Keys) RegistryEntry(name, id string) string { return k.tagged(RegistryTag, "inst", name, id) }

// RegistryExpiry is the ZSET of registered instances (RegistryMember)
// scored by their expiry in ms.
func (k Keys) RegistryExpiry() string { return k.tagged(RegistryTag, "expiry") }

// RegistryIDs is the HASH instance id -> service name.
func (k Keys) RegistryIDs() string { return k.tagged(RegistryTag, "ids") }

// RegistryLast is the HASH RegistryMember -> the instance's current
// ciphertext, kept until the reaper removes the instance.
func (k Keys) RegistryLast() string { return k.tagged(RegistryTag, "last") }

// RegistryCreated is the HASH RegistryMember -> when the instance first
// registered (ms, Redis clock), kept until the reaper removes it.
func (k Keys) RegistryCreated() string { return k.tagged(RegistryTag, "created") }

// RegistrySeq is the HASH service name -> the sequence number of its
// last change (appeared, changed, deregistered, expired), bumped by the
// same script that makes the change, so a find and the change events
// agree on it. A name's field is never removed: its sequence only grows.
func (k Keys) RegistrySeq() string { return k.tagged(RegistryTag, "seq") }

// AuthTag is the hash tag of every key of the auth service's API keys.
const AuthTag = "auth"

// AuthKey is the HASH holding one API key's record.
func (k Keys) AuthKey(id string) string { return k.tagged(AuthTag, "key", id) }

// AuthAdjustments is the HASH of one API key's overrides and additions.
func (k Keys) AuthAdjustments(id string) string { return k.tagged(AuthTag, "adj", id) }

// AuthKeys is the SET of every API key id.
func (k Keys) AuthKeys() string { return k.tagged(AuthTag, "keys") }

// RateLimitField is the field of uid's grants HASH (Grants) that
// overrides its rate limit for service: "ratelimit_<service>", or
// "ratelimit" for the uid's own limit (service "").
func RateLimitField(service string) string {
	if service == "" {
		return "ratelimit"
	}
	return "ratelimit_" + service
}

// ConfirmedAddress is the STRING holding uid's confirmed email address,
// the one its usage notices go to.
func (k Keys) ConfirmedAddress(uid string) string { return k.tagged(UserTag(uid), "addr") }

// UsedToken is the STRING marking one of uid's confirmation tokens used.
func (k Keys) UsedToken(uid, nonce string) string { return k.tagged(UserTag(uid), "tok", nonce) }

// SentEmail is the STRING marking the email of one notifier task sent.
func (k Keys) SentEmail(uid, taskID string) string { return k.tagged(UserTag(uid), "sent", taskID) }

// Instances is the SET of sources that reported instance-scoped metrics.
func (k Keys) Instances() string { return k.prefix + "index:instances" }

// MeterEpoch is the HASH marking that Redis holds the meter's state: seq,
// the highest usage stream sequence applied.
func (k Keys) MeterEpoch() string { return k.prefix + "meter:epoch" }

// MeterReplicas is the ZSET of the running meters of a partitioned
// usage stream, each scored by its last heartbeat in ms of Redis TIME:
// how many share the partitions.
func (k Keys) MeterReplicas() string { return k.prefix + "meter:replicas" }

// RateLimitEpoch is the HASH marking that Redis holds the rate limiter's
// windows of hits from usage events: seq, the last usage stream sequence
// a rebuild replayed (0 when none did).
func (k Keys) RateLimitEpoch() string { return k.prefix + "ratelimit:epoch" }

// GrantPattern matches every uid's state of one grant, for SCAN.
func (k Keys) GrantPattern(metric string) string { return k.prefix + "{*}:g:" + metric }

// TagOf returns the hash tag of a key: the uid for a uid's keys.
func (k Keys) TagOf(key string) (string, bool) {
	rest, ok := strings.CutPrefix(key, k.prefix+"{")
	if !ok {
		return "", false
	}
	uid, _, ok := strings.Cut(rest, "}")
	return uid, ok
}

// LabelSet encodes sorted label pairs as one hash field: name=value
// pairs joined by U+001F, which validated label values cannot contain.
// names must be sorted.
func LabelSet(names []string, labels map[string]string) string {
	if len(names) == 0 {
		return ""
	}
	var b strings.Builder
	for i, n := range names {
		if i > 0 {
			b.WriteByte(0x1f)
		}
		b.WriteString(n)
		b.WriteByte('=')
		b.WriteString(labels[n])
	}
	return b.String()
}

// ParseLabelSet decodes a field made by LabelSet.
func ParseLabelSet(field string) map[string]string {
	if field == "" {
		return nil
	}
	out := map[string]string{}
	for _, pair := range strings.Split(field, "\x1f") {
		n, v, _ := strings.Cut(pair, "=")
		out[n] = v
	}
	return out
}
