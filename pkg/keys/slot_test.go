package keys

import (
	"strings"
	"testing"
)

// The slots Redis Cluster gives these keys (CLUSTER KEYSLOT), and the
// CRC16 check value of the XMODEM variant, "123456789" -> 0x31C3.
func TestSlot(t *testing.T) {
	for _, c := range []struct {
		tag  string
		want int
	}{
		{"", 0},
		{"foo", 12182},
		{"bar", 5061},
		{"user1000", 3443},
		{"123456789", 0x31C3},
	} {
		if got := Slot(c.tag); got != c.want {
			t.Errorf("Slot(%q) = %d, want %d", c.tag, got, c.want)
		}
	}
}

func TestSlotTags(t *testing.T) {
	tags := SlotTags()
	if len(tags) != Slots {
		t.Fatalf("%d tags, want %d", len(tags), Slots)
	}
	seen := map[string]bool{}
	for slot, tag := range tags {
		if Slot(tag) != slot {
			t.Fatalf("SlotTags()[%d] = %q hashes to slot %d", slot, tag, Slot(tag))
		}
		if !strings.HasPrefix(tag, "s.") || seen[tag] {
			t.Fatalf("SlotTags()[%d] = %q: not an s. tag, or twice", slot, tag)
		}
		seen[tag] = true
	}
	keys := New("allot:").MeterEpochSlots()
	if keys[0] != "allot:{"+tags[0]+"}:meter:epoch" {
		t.Errorf("MeterEpochSlots()[0] = %q", keys[0])
	}
	if tag, ok := New("allot:").TagOf(New("allot:").RateLimitEpochSlots()[9]); !ok || Slot(tag) != 9 {
		t.Errorf("RateLimitEpochSlots()[9] has tag %q, slot %d", tag, Slot(tag))
	}
}

func BenchmarkSlotTags(b *testing.B) {
	for b.Loop() {
		SlotTags()
	}
}
