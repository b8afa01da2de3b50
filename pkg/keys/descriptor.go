package keys

import "strings"

// DescriptorTag is the hash tag of the windows of one Envoy rate-limit
// descriptor that is not a uid's (the rate limiter's gRPC front): "d."
// and its DescriptorID. A uid is a token, which holds no '.', and an
// instance's tag starts "i.", so no descriptor shares a uid's or an
// instance's tag. Each descriptor's keys share its tag, so its window
// script runs on Redis Cluster as a uid's does.
func DescriptorTag(id string) string { return "d." + id }

// RateLimitDescriptor returns the two window HASHes (even and odd window
// indexes, as RateLimit) of descriptor id, a DescriptorID:
//
//	allot:{d.<id>}:rld:0, :1   HASH  w window index, n count admitted
func (k Keys) RateLimitDescriptor(id string) (even, odd string) {
	tag := DescriptorTag(id)
	return k.tagged(tag, "rld", "0"), k.tagged(tag, "rld", "1")
}

// RateLimitDescriptorOverrides is the HASH that would hold overrides of
// descriptor id's limit, read where a uid's grants HASH is read (the
// window script reads one); nothing writes it yet, so it never exists
// and the configured limit applies.
//
//	allot:{d.<id>}:rldo        HASH  (reserved)
func (k Keys) RateLimitDescriptorOverrides(id string) string {
	return k.tagged(DescriptorTag(id), "rldo")
}

// DescriptorID names an Envoy descriptor of domain by its entries, given
// as key, value, key, value ...: the domain and each key and value
// escaped (EscapeDescriptorPart), the domain first, then "," before each
// key and "=" between a key and its value. Escaped parts hold neither
// separator, so two different descriptors never share an id, and the id
// holds no '{', '}' or ':', so it sits inside a hash tag unchanged.
// An odd count of parts takes the last as a key with an empty value.
func DescriptorID(domain string, entries ...string) string {
	var b strings.Builder
	b.Grow(len(domain) + 2*len(entries) + 8)
	escapeTo(&b, domain)
	for i := 0; i < len(entries); i += 2 {
		b.WriteByte(',')
		escapeTo(&b, entries[i])
		b.WriteByte('=')
		if i+1 < len(entries) {
			escapeTo(&b, entries[i+1])
		}
	}
	return b.String()
}

// ParseDescriptorID is DescriptorID's inverse: the domain and the
// entries as key, value pairs. ok is false for a string DescriptorID
// does not produce.
func ParseDescriptorID(id string) (domain string, entries []string, ok bool) {
	parts := strings.Split(id, ",")
	if domain, ok = unescape(parts[0]); !ok {
		return "", nil, false
	}
	for _, p := range parts[1:] {
		k, v, found := strings.Cut(p, "=")
		if !found {
			return "", nil, false
		}
		ku, ok1 := unescape(k)
		vu, ok2 := unescape(v)
		if !ok1 || !ok2 {
			return "", nil, false
		}
		entries = append(entries, ku, vu)
	}
	return domain, entries, true
}

// EscapeDescriptorPart escapes one part of a DescriptorID: A-Z a-z 0-9
// '_' '-' '.' stay, every other byte becomes %XX (upper-case hex), '%'
// included, so the escaping is reversible.
func EscapeDescriptorPart(s string) string {
	var b strings.Builder
	escapeTo(&b, s)
	return b.String()
}

const hexDigits = "0123456789ABCDEF"

func keepByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.'
}

func escapeTo(b *strings.Builder, s string) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if keepByte(c) {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hexDigits[c>>4])
		b.WriteByte(hexDigits[c&15])
	}
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

// unescape reverses escapeTo, refusing what it does not produce (a kept
// byte escaped, lower-case hex, a byte that must be escaped), so every
// id has one spelling.
func unescape(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '%' {
			if !keepByte(c) {
				return "", false
			}
			b.WriteByte(c)
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		hi, ok1 := unhex(s[i+1])
		lo, ok2 := unhex(s[i+2])
		if !ok1 || !ok2 || keepByte(hi<<4|lo) {
			return "", false
		}
		b.WriteByte(hi<<4 | lo)
		i += 2
	}
	return b.String(), true
}
