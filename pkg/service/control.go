package service

import (
	"encoding/json"
	"fmt"
	"maps"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// The micro protocol's monitoring, answered by allot itself in micro's
// own types (nats.go/micro), so `nats micro` and any micro client read an
// allot service as they read one built on micro: each verb on its three
// subjects, $SRV.<VERB> (every service), $SRV.<VERB>.<name> (every
// instance of this service) and $SRV.<VERB>.<name>.<id> (this one). Not
// queue groups: every instance answers.

// subscribeControl subscribes the PING, INFO and STATS subjects.
func (e *Endpoints) subscribeControl() error {
	for _, verb := range []micro.Verb{micro.PingVerb, micro.InfoVerb, micro.StatsVerb} {
		answer := e.answerFor(verb)
		for _, ids := range [][2]string{{"", ""}, {e.identity.Name, ""}, {e.identity.Name, e.identity.ID}} {
			subject, err := micro.ControlSubject(verb, ids[0], ids[1])
			if err != nil {
				return err
			}
			sub, err := e.nc.Subscribe(subject, answer)
			if err != nil {
				return fmt.Errorf("subscribe to %s: %w", subject, err)
			}
			e.control = append(e.control, sub)
		}
	}
	return nil
}

// answerFor is the handler of one verb's subjects.
func (e *Endpoints) answerFor(verb micro.Verb) nats.MsgHandler {
	return func(m *nats.Msg) {
		var v any
		switch verb {
		case micro.PingVerb:
			v = micro.Ping{ServiceIdentity: e.identityCopy(), Type: micro.PingResponseType}
		case micro.InfoVerb:
			v = e.Info()
		default:
			v = e.Stats()
		}
		data, err := json.Marshal(v)
		if err == nil {
			err = m.Respond(data)
		}
		if err != nil {
			e.log.Warn("answering the micro protocol", "subject", m.Subject, "err", err)
		}
	}
}

func (e *Endpoints) identityCopy() micro.ServiceIdentity {
	id := e.identity
	id.Metadata = maps.Clone(id.Metadata)
	return id
}

// Info is what $SRV.INFO answers: the service, this instance, and each
// endpoint's subject and queue group.
func (e *Endpoints) Info() micro.Info {
	info := micro.Info{ServiceIdentity: e.identityCopy(), Type: micro.InfoResponseType, Description: e.desc,
		Endpoints: make([]micro.EndpointInfo, 0, len(e.endpoints))}
	for _, p := range e.endpoints {
		var md map[string]string
		if p.batched {
			md = map[string]string{"batched": "true"}
		}
		info.Endpoints = append(info.Endpoints, micro.EndpointInfo{Name: p.name, Subject: p.subject, QueueGroup: p.queueGroup, Metadata: md})
	}
	return info
}

// Stats is what $SRV.STATS answers: per endpoint, the requests answered
// since the start, the errors among them (every error reply, whatever
// goroutine sent it), the last error as "<status>:<description>", the
// time from each request's arrival to its answer, summed and averaged,
// and in data the requests in flight.
func (e *Endpoints) Stats() micro.Stats {
	st := micro.Stats{ServiceIdentity: e.identityCopy(), Type: micro.StatsResponseType, Started: e.started,
		Endpoints: make([]*micro.EndpointStats, 0, len(e.endpoints))}
	for _, p := range e.endpoints {
		st.Endpoints = append(st.Endpoints, p.microStats())
	}
	return st
}
