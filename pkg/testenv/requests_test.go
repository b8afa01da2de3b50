package testenv

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

func TestLoadAndInterleave(t *testing.T) {
	nc, err := nats.Connect(EmbeddedCoreNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	FloorResponder(t, nc, "floor.*", []byte("ok"))
	odd := Load{Clients: 4, Duration: 100 * time.Millisecond, Subject: func(i int) string { return "floor." + strconv.Itoa(i) },
		Check: func(m *nats.Msg) error {
			if string(m.Data) != "ok" {
				return errors.New("not ok")
			}
			return nil
		}}
	apart := odd
	apart.Check = func(*nats.Msg) error { return ErrApart }
	res := Interleave(t, nc, 3, []Phase{{Name: "answers", Load: odd}, {Name: "apart", Load: apart}})
	a := res["answers"]
	if a.Rate <= 0 || a.Latencies.Len() == 0 || a.Latencies.Apart() != 0 {
		t.Errorf("answers: rate %v, %d latencies, %d apart", a.Rate, a.Latencies.Len(), a.Latencies.Apart())
	}
	if q50, q99 := a.Latencies.Quantile(0.5), a.Latencies.Quantile(0.99); q50 <= 0 || q99 < q50 {
		t.Errorf("quantiles p50 %v p99 %v", q50, q99)
	}
	if p := res["apart"]; p.Latencies.Apart() != p.Latencies.Len() || p.Latencies.Len() == 0 {
		t.Errorf("apart: %d of %d counted apart", p.Latencies.Apart(), p.Latencies.Len())
	}
	if Ms(1500*time.Microsecond) != 1.5 {
		t.Errorf("Ms(1.5ms) = %v", Ms(1500*time.Microsecond))
	}
}

// failTB records a Fatal instead of ending the test.
type failTB struct {
	testing.TB
	fatal string
}

func (f *failTB) Fatal(args ...any) { f.fatal = "fatal" }
func (f *failTB) Helper()           {}

func TestLoadFailsOnABadReply(t *testing.T) {
	nc, err := nats.Connect(EmbeddedCoreNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	FloorResponder(t, nc, "floor", []byte("no"))
	tb := &failTB{TB: t}
	Load{Clients: 2, Duration: 50 * time.Millisecond, Subject: func(int) string { return "floor" },
		Check: func(*nats.Msg) error { return errors.New("bad") }}.Run(tb, nc)
	if tb.fatal == "" {
		t.Error("a bad reply did not fail the load")
	}
	tb = &failTB{TB: t}
	Load{Clients: 1, Duration: 50 * time.Millisecond, Subject: func(int) string { return "nobody.here" }}.Run(tb, nc)
	if tb.fatal == "" {
		t.Error("a request nobody answers did not fail the load")
	}
}

func TestFloorBatchResponderAnswersEveryRequest(t *testing.T) {
	nc, err := nats.Connect(EmbeddedCoreNATS(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	FloorBatchResponder(t, nc, "floor.one.*", "floor.many.*", []byte(`{"ok":true}`))
	for _, tc := range []struct{ subject, body, want string }{
		{"floor.one.u", `{}`, `{"ok":true}`},
		{"floor.many.~all", `{"requests":[{"uid":"a"},{"uid":"b","body":{}}]}`,
			`{"replies":[{"status":200,"body":{"ok":true}},{"status":200,"body":{"ok":true}}]}`},
	} {
		m, err := nc.Request(tc.subject, []byte(tc.body), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if string(m.Data) != tc.want {
			t.Errorf("%s %s: got %s, want %s", tc.subject, tc.body, m.Data, tc.want)
		}
	}
}
