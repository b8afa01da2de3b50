package events

import (
	"errors"
	"strings"

	"github.com/nats-io/nats.go"
)

// KeyIDLen is the length of an API key's public id, the part before the
// dot ("<8-character id>.<32-character secret>").
const KeyIDLen = 8

// KeyInboxPrefix is the inbox prefix of a client that connects with the
// API key whose id is keyID. allot's auth service lets a key subscribe to
// its own inbox only (KeyInboxPrefix(id) + ".>"), never to the shared
// _INBOX.>, where another key could read its replies; so such a client
// must make its inboxes under this prefix (KeyOptions does).
func KeyInboxPrefix(keyID string) string { return "_INBOX_" + keyID }

// ErrNotAKey marks a string that is not an API key.
var ErrNotAKey = errors.New("events: not an API key (want <8-character id>.<secret>)")

// KeyOptions returns the nats.go options to connect with an API key: the
// key as the token, and inboxes under the key's own prefix. Pass them to
// nats.Connect. Whitespace around the key is dropped.
func KeyOptions(key string) ([]nats.Option, error) {
	// A key read from a file or a Secret often ends in a newline, which
	// no key holds.
	key = strings.TrimSpace(key)
	id, secret, ok := strings.Cut(key, ".")
	if !ok || len(id) != KeyIDLen || secret == "" || strings.ContainsAny(key, " \t\r\n*>") {
		return nil, ErrNotAKey
	}
	return []nats.Option{nats.Token(key), nats.CustomInboxPrefix(KeyInboxPrefix(id))}, nil
}
