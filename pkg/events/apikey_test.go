package events_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
)

func TestKeyOptions(t *testing.T) {
	key := "AbCd_123." + strings.Repeat("s", 32)
	opts, err := events.KeyOptions(key)
	if err != nil {
		t.Fatal(err)
	}
	var o nats.Options
	for _, opt := range opts {
		if err := opt(&o); err != nil {
			t.Fatal(err)
		}
	}
	if o.Token != key || o.InboxPrefix != "_INBOX_AbCd_123" || events.KeyInboxPrefix("AbCd_123") != o.InboxPrefix {
		t.Errorf("token %q, inbox prefix %q", o.Token, o.InboxPrefix)
	}
	// As read from a file or a Secret, with a newline.
	opts, err = events.KeyOptions(key + "\n")
	if err != nil {
		t.Fatal(err)
	}
	var o2 nats.Options
	for _, opt := range opts {
		_ = opt(&o2)
	}
	if o2.Token != key {
		t.Errorf("token %q from a key with a newline", o2.Token)
	}
	for _, bad := range []string{"", "nodot", "short.secret", "AbCd_123.", "AbCd_123.has space", "AbCd*123.secret", ".secret"} {
		if _, err := events.KeyOptions(bad); !errors.Is(err, events.ErrNotAKey) {
			t.Errorf("KeyOptions(%q) = %v, want ErrNotAKey", bad, err)
		}
	}
}
