package main

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The malformed flood: messages the meter must refuse, published raw.

// malformedMsg returns the i-th malformed message of a flood: a subject on
// usage.* and a body the meter must refuse, of many kinds; onUID says
// whether the subject's token is a uid of the run (its dead letter then
// goes to usage.dead.<uid>).
func (f *faultRun) malformedMsg(i int) (subject string, body []byte, onUID bool) {
	t := f.h.t
	uid := t.uid(i % f.o.UIDs)
	subject, onUID = t.cfg.Subjects.UsageFor(uid), true
	id := fmt.Sprintf("flood-%s-%d", t.runID, i)
	now := time.Now().UTC().Format(time.RFC3339Nano)
	ev := func(fields string) []byte {
		return []byte(`{"specversion":"1.0","id":"` + id + `","source":"flood","type":"allot.usage.v1","subject":"` + uid + `","time":"` + now + `",` + fields + `}`)
	}
	switch i % 16 {
	case 0:
		body = []byte("not json " + strconv.Itoa(i))
	case 1:
		body = nil
	case 2:
		body = []byte(`[1,2,3]`)
	case 3:
		body = ev(`"data":{"metric":"api_calls_total","value":1`) // cut short
		body = body[:len(body)-1]
	case 4:
		body = []byte(`{"specversion":"1.0","source":"flood","type":"allot.usage.v1","subject":"` + uid + `","data":{"metric":"api_calls_total","value":1}}`) // no id
	case 5:
		body = []byte(strings.Replace(string(ev(`"data":{"metric":"api_calls_total","value":1}`)), `"specversion":"1.0"`, `"specversion":"0.3"`, 1))
	case 6:
		body = []byte(strings.Replace(string(ev(`"data":{"metric":"api_calls_total","value":1}`)), "allot.usage.v1", "allot.usage.v9", 1))
	case 7:
		body = ev(`"data":{"metric":"lt_flood_unknown","value":1}`)
	case 8:
		body = ev(`"data":{"metric":"api_calls_total","value":"lots"}`)
	case 9:
		body = ev(`"data":{"metric":"api_calls_total","value":-5}`)
	case 10:
		body = ev(`"data":{"metric":"api_calls_total","value":1}`)
		subject = t.cfg.Subjects.UsageFor(t.uid((i + 1) % f.o.UIDs)) // the body's subject is another uid
		if f.o.UIDs == 1 {
			subject = t.cfg.Subjects.UsageFor(t.uidPrefix() + "other")
		}
	case 11:
		body = ev(`"data":{"metric":"api_calls_total","value":1,"labels":{"colour":"red"}}`)
	case 12:
		subject, onUID = t.cfg.Subjects.Usage+".bad+token", false
		body = ev(`"data":{"metric":"api_calls_total","value":1}`)
	case 13:
		if i%1024 == 13 { // oversized, now and then
			body = ev(`"data":{"metric":"api_calls_total","value":1,"labels":{"resource":"` + strings.Repeat("x", events.DefaultMaxEventBytes) + `"}}`)
		} else {
			body = []byte{0xff, 0xfe, 0x00, 0x01, byte(i), byte(i >> 8)}
		}
	case 14:
		body = ev(`"data":{"metric":"api_calls_total","value":1e400}`)
	case 15:
		body = []byte(strings.Replace(string(ev(`"data":{"metric":"api_calls_total","value":1}`)), `"time":"`+now+`"`, `"time":"yesterday"`, 1))
	}
	return subject, body, onUID
}

// publishMalformed publishes n malformed messages raw (nats.go's
// JetStream publish, no client library, no Nats-Msg-Id) as fast as the
// stream takes them. It returns how many the stream acked, and of those
// how many are on a subject of a run uid.
func (f *faultRun) publishMalformed(ctx context.Context, n int) (int64, int64, error) {
	var mu sync.Mutex
	var acked, onUIDs, failed int64
	uidOf := map[string]bool{}
	js, err := jetstream.New(f.h.t.conns[0],
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncTimeout(10*time.Second),
		jetstream.WithPublishAsyncAckHandler(func(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
			mu.Lock()
			acked++
			if uidOf[m.Header.Get("Lt-Flood")] {
				onUIDs++
			}
			mu.Unlock()
		}),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) {
			mu.Lock()
			failed++
			mu.Unlock()
		}),
	)
	if err != nil {
		return 0, 0, err
	}
	for i := 0; i < n && ctx.Err() == nil; i++ {
		subject, body, onUID := f.malformedMsg(i)
		key := strconv.Itoa(i)
		mu.Lock()
		uidOf[key] = onUID
		mu.Unlock()
		// A header of the harness's own only, to tell its acks apart.
		msg := &nats.Msg{Subject: subject, Data: body, Header: nats.Header{"Lt-Flood": []string{key}}}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				i--
				continue
			}
			mu.Lock()
			failed++
			mu.Unlock()
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	mu.Lock()
	defer mu.Unlock()
	if failed > 0 {
		f.note("%d malformed messages were not acked by the stream (fate unknown)", failed)
		f.h.ledger.badFailed.Add(failed)
	}
	return acked, onUIDs, nil
}
