package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/testenv"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
)

// A stand-in for the meter, the rate limiter and the registry: a real
// micro service on the embedded server that decodes each request as the
// services will and answers from fixed data. Special inputs make it
// fail: uid (or registry name) "down" answers 503, uid "slow" answers
// late, an unknown metric or service answers 404, an authorize amount
// over 10 is refused with a 429, a check costing more than 5 is denied.

var fakeResetsAt = time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)

// fakeCall is one request the fake services received.
type fakeCall struct {
	subject string
	body    string
}

type fakeServices struct {
	mu    sync.Mutex
	calls []fakeCall
}

func (f *fakeServices) record(r micro.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, fakeCall{r.Subject(), string(r.Data())})
}

// received returns the requests received so far.
func (f *fakeServices) received() []fakeCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeCall(nil), f.calls...)
}

// last returns the body of the newest request on subject, or "" when none
// arrived.
func (f *fakeServices) last(subject string) string {
	calls := f.received()
	for i := len(calls) - 1; i >= 0; i-- {
		if calls[i].subject == subject {
			return calls[i].body
		}
	}
	return ""
}

var fakeCredits = map[string]events.Credit{
	"photo_daily_total": {Metric: "photo_daily_total", Limit: 200, Used: 3, Remaining: 197, Period: "day", ResetsAt: fakeResetsAt},
	"storage_bytes":     {Metric: "storage_bytes", Limit: 5e9, Used: 5.5e9, Remaining: 0, Overage: 5e8, Period: "forever"},
}

var fakeFind = events.FindReply{
	Instances: []events.Instance{
		{Name: "media", ID: "m2", Endpoints: []string{"photo", "video"}, IPv4: "10.0.0.2", Port: 8080, PublicURL: "https://media.example"},
		{Name: "accounts", ID: "a1", Endpoints: []string{"user"}, IPv4: "10.0.0.9", Port: 80},
		{Name: "media", ID: "m1", Endpoints: []string{"photo", "video"}, IPv4: "10.0.0.1", Port: 8080, PublicURL: "https://media.example"},
	},
	URLMap: map[string]string{"video": "https://media.example", "photo": "https://media.example", "user": "http://10.0.0.9:80"},
}

// startFakeServices serves the stand-in endpoints on the default subjects.
func startFakeServices(t *testing.T, natsURL string) *fakeServices {
	t.Helper()
	nc, err := nats.Connect(natsURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	svc, err := micro.AddService(nc, micro.Config{Name: "fake_allot", Version: "0.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = svc.Stop() })

	f := &fakeServices{}
	s := events.DefaultSubjects()
	unknownService := func(name string) error {
		return events.NewServiceError(events.CodeNotFound, "service", "unknown service %q", name)
	}
	table := []struct {
		subject, prefix string // prefix: the subject before the uid or name
		h               fakeHandler
	}{
		{s.Credit("*"), s.Meter + ".credit", decoded(func(uid string, credit events.CreditRequest) (any, error) {
			if credit.Metric == "" {
				reply := events.CreditsReply{UID: uid}
				for _, c := range fakeCredits {
					c.UID = uid
					reply.Credits = append(reply.Credits, c)
				}
				return reply, nil
			}
			c, ok := fakeCredits[credit.Metric]
			if !ok {
				return nil, events.NewServiceError(events.CodeNotFound, "metric", "unknown metric %q", credit.Metric)
			}
			c.UID = uid
			return c, nil
		})},
		{s.Authorize("*"), s.Meter + ".authorize", decoded(func(uid string, authorize events.AuthorizeRequest) (any, error) {
			if _, ok := fakeCredits[authorize.Metric]; !ok {
				return nil, events.NewServiceError(events.CodeNotFound, "metric", "unknown metric %q", authorize.Metric)
			}
			if authorize.Amount > 10 {
				return overLimit{events.NewServiceError(events.CodeOverLimit, "amount", "over the limit of %s", authorize.Metric),
					events.AuthorizeReply{Allowed: false, Remaining: 2, ResetsAt: fakeResetsAt}}, nil
			}
			return events.AuthorizeReply{Allowed: true, Remaining: 10 - authorize.Amount, ResetsAt: fakeResetsAt}, nil
		})},
		{s.Grants("*"), s.Meter + ".grants", decoded(func(uid string, grants events.GrantsRequest) (any, error) {
			g := map[string]float64{"photo_daily_total": 200, "email_daily_total": 50}
			for m, v := range grants.Set {
				g[m] = v
			}
			for _, m := range grants.Unset {
				delete(g, m)
			}
			return events.GrantsReply{UID: uid, Grants: g}, nil
		})},
		{s.Check("*"), s.RateLimit + ".check", decoded(func(uid string, check events.CheckRequest) (any, error) {
			if check.Service == "nope" {
				return nil, unknownService(check.Service)
			}
			cost := check.CostOrDefault()
			if cost > 5 {
				return events.CheckReply{Allowed: false, Limit: 5, Remaining: 5, ResetAfterMs: 42000, RetryAfterMs: 1500}, nil
			}
			return events.CheckReply{Allowed: true, Limit: 5, Remaining: 5 - cost, ResetAfterMs: 42000}, nil
		})},
		{s.Reset("*"), s.RateLimit + ".reset", decoded(func(uid string, reset events.ResetRequest) (any, error) {
			if reset.Service == "nope" {
				return nil, unknownService(reset.Service)
			}
			return events.OKReply{OK: true}, nil
		})},
		{s.Find(""), "", decoded(func(string, events.FindRequest) (any, error) { return fakeFind, nil })},
		{s.Find("*"), s.Registry + ".find", decoded(func(name string, _ events.FindRequest) (any, error) {
			reply := events.FindReply{Instances: []events.Instance{}, URLMap: map[string]string{}}
			for _, in := range fakeFind.Instances {
				if in.Name == name {
					reply.Instances = append(reply.Instances, in)
				}
			}
			if len(reply.Instances) > 0 {
				reply.URLMap = map[string]string{"photo": "https://media.example", "video": "https://media.example"}
			}
			return reply, nil
		})},
	}
	for i, e := range table {
		h := func(r micro.Request) {
			f.record(r)
			var uid string
			if e.prefix != "" {
				uid, _ = events.ParseToken(r.Subject(), e.prefix)
			}
			reply, err := e.h(uid, r)
			if refusal, ok := reply.(overLimit); ok {
				body, _ := json.Marshal(struct {
					events.ErrorBody
					events.AuthorizeReply
				}{events.ErrorBody{Error: events.ErrorDetail{Code: refusal.err.Code, Message: refusal.err.Message, Field: refusal.err.Field}}, refusal.decision})
				_ = r.Error(refusal.err.StatusText(), refusal.err.Message, body)
				return
			}
			if err != nil {
				_ = events.RespondError(r, err)
				return
			}
			_ = events.Respond(r, reply)
		}
		name := "ep" + string(rune('a'+i))
		if err := svc.AddEndpoint(name, micro.HandlerFunc(h), micro.WithEndpointSubject(e.subject)); err != nil {
			t.Fatal(err)
		}
	}
	// The CLI connects separately: make sure the server has every
	// subscription before a test sends its first request.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return f
}

// fakeHandler answers one request of uid (or registry name): a reply, an
// error, or an overLimit refusal.
type fakeHandler func(uid string, r micro.Request) (any, error)

// decoded wraps h with the strict decoding every service does, and with
// the special uids "down" (503) and "slow" (answers after a second).
func decoded[T any, PT interface {
	*T
	events.Validator
}](h func(uid string, req T) (any, error)) fakeHandler {
	return func(uid string, r micro.Request) (any, error) {
		var req T
		if err := events.DecodeRequest(r.Data(), PT(&req)); err != nil {
			return nil, err
		}
		switch uid {
		case "down":
			return nil, events.NewServiceError(events.CodeUnavailable, "", "redis: connection refused")
		case "slow":
			time.Sleep(time.Second)
		}
		return h(uid, req)
	}
}

// overLimit is an authorize refusal: a 429 whose body also carries the
// decision.
type overLimit struct {
	err      *events.ServiceError
	decision events.AuthorizeReply
}

// startCoreNATS starts an embedded nats-server without JetStream, which
// request/reply does not need and which starts faster.
func startCoreNATS(t *testing.T) string {
	t.Helper()
	return testenv.EmbeddedCoreNATS(t)
}

// endpointEnv starts NATS and the stand-in services.
func endpointEnv(t *testing.T) (map[string]string, *fakeServices) {
	t.Helper()
	url := startCoreNATS(t)
	return map[string]string{"NATS_URL": url}, startFakeServices(t, url)
}

// isOneLine reports whether s is exactly one line.
func isOneLine(s string) bool {
	return s != "" && !strings.Contains(strings.TrimSuffix(s, "\n"), "\n")
}

func TestEndpointCommands(t *testing.T) {
	env, fake := endpointEnv(t)
	for _, tc := range []struct {
		name   string
		args   []string
		code   int
		stdout string // exact when it has more than one line, else a part
		stderr string // a part of the one line
		sent   string // the request body the service got, when set
	}{
		{
			name: "credit all",
			args: []string{"credit", "-uid", "u-1"},
			stdout: "" +
				"METRIC             USED        LIMIT       REMAINING  OVERAGE    PERIOD   RESETS_AT\n" +
				"photo_daily_total  3           200         197        0          day      2026-11-23T00:00:00Z\n" +
				"storage_bytes      5500000000  5000000000  0          500000000  forever  -\n",
			sent: `{}`,
		},
		{
			name: "credit one",
			args: []string{"credit", "-uid", "u-1", "-metric", "photo_daily_total"},
			stdout: "" +
				"METRIC             USED  LIMIT  REMAINING  OVERAGE  PERIOD  RESETS_AT\n" +
				"photo_daily_total  3     200    197        0        day     2026-11-23T00:00:00Z\n",
			sent: `{"metric":"photo_daily_total"}`,
		},
		{name: "credit unknown metric", args: []string{"credit", "-uid", "u-1", "-metric", "x"}, code: 1,
			stderr: `allot credit: meter answered 404 not_found: unknown metric "x" (field metric)`},
		{name: "credit backend down", args: []string{"credit", "-uid", "down"}, code: 1,
			stderr: "allot credit: meter answered 503 unavailable: redis: connection refused; its backend is down, retry later"},

		{name: "authorize", args: []string{"authorize", "-uid", "u-1", "-metric", "photo_daily_total", "-amount", "2.5", "-id", "req-1"},
			stdout: "allowed: remaining 7.5, resets at 2026-11-23T00:00:00Z\n", sent: `{"id":"req-1","metric":"photo_daily_total","amount":2.5}`},
		{name: "authorize refused", args: []string{"authorize", "-uid", "u-1", "-metric", "photo_daily_total", "-amount", "11"}, code: 1,
			stderr: "allot authorize: refused: remaining 2, resets at 2026-11-23T00:00:00Z"},
		{name: "authorize unknown metric", args: []string{"authorize", "-uid", "u-1", "-metric", "x"}, code: 1,
			stderr: `allot authorize: meter answered 404 not_found: unknown metric "x" (field metric)`},
		{name: "authorize backend down", args: []string{"authorize", "-uid", "down", "-metric", "photo_daily_total"}, code: 1,
			stderr: "meter answered 503 unavailable"},

		{name: "grants read", args: []string{"grants", "-uid", "u-1"},
			stdout: "METRIC             LIMIT\nemail_daily_total  50\nphoto_daily_total  200\n", sent: `{}`},
		{name: "grants set and unset", args: []string{"grants", "-uid", "u-1", "-set", "albums=20", "-set", "photo_daily_total=1e3", "-unset", "email_daily_total"},
			stdout: "METRIC             LIMIT\nalbums             20\nphoto_daily_total  1000\n",
			sent:   `{"set":{"albums":20,"photo_daily_total":1000},"unset":["email_daily_total"]}`},
		{name: "grants backend down", args: []string{"grants", "-uid", "down"}, code: 1, stderr: "meter answered 503 unavailable"},

		{name: "check", args: []string{"check", "-uid", "u-1", "-service", "upload", "-cost", "2"},
			stdout: "allowed: 3 of 5 left, window resets in 42s\n", sent: `{"service":"upload","cost":2}`},
		{name: "check peek", args: []string{"check", "-uid", "u-1", "-cost", "0"},
			stdout: "allowed: 5 of 5 left, window resets in 42s\n", sent: `{"cost":0}`},
		{name: "check cost written as 2.0", args: []string{"check", "-uid", "u-1", "-service", "upload", "-cost", "2.0"},
			stdout: "allowed: 3 of 5 left, window resets in 42s\n", sent: `{"service":"upload","cost":2}`},
		{name: "check denied", args: []string{"check", "-uid", "u-1", "-service", "upload", "-cost", "6"}, code: 1,
			stderr: "allot check: denied: retry in 1.5s"},
		{name: "check unknown service", args: []string{"check", "-uid", "u-1", "-service", "nope"}, code: 1,
			stderr: `allot check: rate limiter answered 404 not_found: unknown service "nope" (field service)`},
		{name: "check backend down", args: []string{"check", "-uid", "down"}, code: 1, stderr: "rate limiter answered 503 unavailable"},

		{name: "ratelimit reset", args: []string{"ratelimit", "reset", "-uid", "u-1", "-service", "upload"},
			stdout: "reset: u-1 has the full limit of service upload again\n", sent: `{"service":"upload"}`},
		{name: "ratelimit reset own grant", args: []string{"ratelimit", "reset", "-uid", "u-1"},
			stdout: "reset: u-1 has the full limit of the ratelimit grant again\n", sent: `{}`},
		{name: "ratelimit reset unknown service", args: []string{"ratelimit", "reset", "-uid", "u-1", "-service", "nope"}, code: 1,
			stderr: `allot ratelimit: rate limiter answered 404 not_found: unknown service "nope"`},
		{name: "ratelimit reset backend down", args: []string{"ratelimit", "reset", "-uid", "down"}, code: 1, stderr: "rate limiter answered 503 unavailable"},

		{
			name: "registry all",
			args: []string{"registry"},
			stdout: "" +
				"NAME      ID  ADDRESS        PUBLIC_URL             ENDPOINTS\n" +
				"accounts  a1  10.0.0.9:80    -                      user\n" +
				"media     m1  10.0.0.1:8080  https://media.example  photo,video\n" +
				"media     m2  10.0.0.2:8080  https://media.example  photo,video\n" +
				"\n" +
				"RESOURCE  URL\n" +
				"photo     https://media.example\n" +
				"user      http://10.0.0.9:80\n" +
				"video     https://media.example\n",
		},
		{name: "registry one, flags after the name", args: []string{"registry", "media", "-timeout", "3s"},
			stdout: "media  m1  10.0.0.1:8080  https://media.example  photo,video\n"},
		{name: "registry none", args: []string{"registry", "nobody"}, stdout: "no instances of nobody are registered\n"},
		{name: "registry backend down", args: []string{"registry", "down"}, code: 1, stderr: "allot registry: registry answered 503 unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, env, "", tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", r.code, tc.code, r.stdout, r.stderr)
			}
			if strings.Count(tc.stdout, "\n") > 1 && r.stdout != tc.stdout {
				t.Errorf("stdout:\n%s\nwant:\n%s", r.stdout, tc.stdout)
			} else if !strings.Contains(r.stdout, tc.stdout) {
				t.Errorf("stdout = %q, want it to contain %q", r.stdout, tc.stdout)
			}
			if tc.code == 0 && r.stderr != "" {
				t.Errorf("stderr = %q, want nothing", r.stderr)
			}
			if tc.code != 0 && (!isOneLine(r.stderr) || !strings.Contains(r.stderr, tc.stderr)) {
				t.Errorf("stderr = %q, want one line containing %q", r.stderr, tc.stderr)
			}
			if tc.code != 0 && r.stdout != "" {
				t.Errorf("stdout = %q, want nothing on failure", r.stdout)
			}
			if tc.sent != "" {
				subject := map[string]string{
					"credit": "meter.credit.u-1", "authorize": "meter.authorize.u-1", "grants": "meter.grants.u-1",
					"check": "ratelimit.check.u-1", "ratelimit": "ratelimit.reset.u-1",
				}[tc.args[0]]
				if got := fake.last(subject); got != tc.sent {
					t.Errorf("the service got %s on %s, want %s", got, subject, tc.sent)
				}
			}
		})
	}
}

// An authorize without -id sends a new id every time, so two runs count
// twice; with -id the same id is sent again.
func TestAuthorizeID(t *testing.T) {
	env, fake := endpointEnv(t)
	var ids []string
	for range 2 {
		if r := runCLI(t, env, "", "authorize", "-uid", "u-1", "-metric", "photo_daily_total"); r.code != 0 {
			t.Fatal(r)
		}
		var req events.AuthorizeRequest
		if err := events.DecodeRequest([]byte(fake.last("meter.authorize.u-1")), &req); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, req.ID)
	}
	if ids[0] == ids[1] {
		t.Errorf("two authorize runs without -id sent the same id %s", ids[0])
	}
}

func TestEndpointJSON(t *testing.T) {
	env, _ := endpointEnv(t)
	for _, tc := range []struct {
		args []string
		code int
		into any // a pointer to the reply type
		want any
	}{
		{[]string{"credit", "-uid", "u-1", "-metric", "photo_daily_total"}, 0, &events.Credit{},
			&events.Credit{UID: "u-1", Metric: "photo_daily_total", Limit: 200, Used: 3, Remaining: 197, Period: "day", ResetsAt: fakeResetsAt}},
		{[]string{"authorize", "-uid", "u-1", "-metric", "photo_daily_total"}, 0, &events.AuthorizeReply{},
			&events.AuthorizeReply{Allowed: true, Remaining: 9, ResetsAt: fakeResetsAt}},
		{[]string{"authorize", "-uid", "u-1", "-metric", "photo_daily_total", "-amount", "20"}, 1, &events.AuthorizeReply{},
			&events.AuthorizeReply{Allowed: false, Remaining: 2, ResetsAt: fakeResetsAt}},
		{[]string{"grants", "-uid", "u-1", "-set", "albums=20"}, 0, &events.GrantsReply{},
			&events.GrantsReply{UID: "u-1", Grants: map[string]float64{"photo_daily_total": 200, "email_daily_total": 50, "albums": 20}}},
		{[]string{"check", "-uid", "u-1", "-cost", "0"}, 0, &events.CheckReply{},
			&events.CheckReply{Allowed: true, Limit: 5, Remaining: 5, ResetAfterMs: 42000}},
		{[]string{"check", "-uid", "u-1", "-cost", "9"}, 1, &events.CheckReply{},
			&events.CheckReply{Allowed: false, Limit: 5, Remaining: 5, ResetAfterMs: 42000, RetryAfterMs: 1500}},
		{[]string{"ratelimit", "reset", "-uid", "u-1"}, 0, &events.OKReply{}, &events.OKReply{OK: true}},
		{[]string{"registry", "media"}, 0, &events.FindReply{}, &events.FindReply{
			Instances: []events.Instance{fakeFind.Instances[0], fakeFind.Instances[2]},
			URLMap:    map[string]string{"photo": "https://media.example", "video": "https://media.example"},
		}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			r := runCLI(t, env, "", append(tc.args, "-json")...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d: %+v", r.code, tc.code, r)
			}
			dec := json.NewDecoder(strings.NewReader(r.stdout))
			dec.DisallowUnknownFields()
			if err := dec.Decode(tc.into); err != nil {
				t.Fatalf("stdout is not the reply as JSON: %v\n%s", err, r.stdout)
			}
			if !reflect.DeepEqual(tc.into, tc.want) {
				t.Errorf("-json printed %+v, want %+v", tc.into, tc.want)
			}
		})
	}

	// All credits decode into the list reply.
	r := runCLI(t, env, "", "credit", "-uid", "u-1", "-json")
	var all events.CreditsReply
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || r.code != 0 || all.UID != "u-1" || len(all.Credits) != 2 {
		t.Errorf("credit -json: %+v, %v, %+v", all, err, r)
	}
}

// A NATS where no allot answers (another NATS on the port, say): the
// error names the subject, the URL and where the URL came from.
func TestEndpointNoResponder(t *testing.T) {
	url := startCoreNATS(t)
	env := map[string]string{"NATS_URL": url}
	at := " at NATS " + url + " (from NATS_URL): is allot dev running there? allot dev prints the URL to use: export NATS_URL=<it>, or pass -nats"
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"credit", "-uid", "u-1"}, "allot credit: no meter is answering on meter.credit.u-1" + at},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m"}, "allot authorize: no meter is answering on meter.authorize.u-1" + at},
		{[]string{"grants", "-uid", "u-1"}, "allot grants: no meter is answering on meter.grants.u-1" + at},
		{[]string{"check", "-uid", "u-1"}, "allot check: no rate limiter is answering on ratelimit.check.u-1" + at},
		{[]string{"ratelimit", "reset", "-uid", "u-1"}, "allot ratelimit: no rate limiter is answering on ratelimit.reset.u-1" + at},
		{[]string{"registry"}, "allot registry: no registry is answering on registry.find" + at},
		{[]string{"registry", "media"}, "allot registry: no registry is answering on registry.find.media" + at},
		{[]string{"credit", "-uid", "u-1", "-nats", url}, "allot credit: no meter is answering on meter.credit.u-1 at NATS " + url + " (from -nats)"},
	} {
		r := runCLI(t, env, "", tc.args...)
		if r.code != 1 || !isOneLine(r.stderr) || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("allot %v: exit %d, stderr %q; want exit 1 and one line %q", tc.args, r.code, r.stderr, tc.want)
		}
	}

	// The subjects come from the configuration.
	cfg := filepath.Join(t.TempDir(), "allot.yaml")
	if err := os.WriteFile(cfg, []byte("subjects:\n  meter: acct\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, env, "", "credit", "-uid", "u-1", "-config", cfg)
	if r.code != 1 || !strings.Contains(r.stderr, "no meter is answering on acct.credit.u-1") {
		t.Errorf("credit with subjects.meter acct: %+v", r)
	}
}

func TestEndpointTimeout(t *testing.T) {
	env, _ := endpointEnv(t)
	r := runCLI(t, env, "", "credit", "-uid", "slow", "-timeout", "200ms")
	want := "allot credit: no reply from the meter on meter.credit.slow at NATS " + env["NATS_URL"] + " (from NATS_URL) within 200ms"
	if r.code != 1 || !isOneLine(r.stderr) || !strings.Contains(r.stderr, want) {
		t.Errorf("slow meter: %+v; want exit 1 and %q", r, want)
	}
}

// Bad input is refused before anything is sent: flag syntax with exit 2
// and a pointer to -h, a broken rule with exit 1 naming the field.
func TestEndpointRefusedBeforeTheWire(t *testing.T) {
	env, fake := endpointEnv(t)
	long := strings.Repeat("a", 129)
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"credit"}, 2, "allot credit: -uid is required"},
		{[]string{"credit", "-uid", "u.1"}, 1, `allot credit: uid: must be 1 to 128 characters of A-Z a-z 0-9 _ - (got "u.1")`},
		{[]string{"credit", "-uid", "u-1", "-metric", "a b"}, 1, "allot credit: metric: must be 1 to 128"},
		{[]string{"credit", "-uid", "u-1", "-bogus"}, 2, "allot credit: flag provided but not defined: -bogus"},
		{[]string{"credit", "-uid", "u-1", "extra"}, 2, `allot credit: unexpected argument "extra"`},

		{[]string{"authorize", "-uid", "u-1"}, 2, "allot authorize: -metric is required"},
		{[]string{"authorize", "-uid", long, "-metric", "m"}, 1, "allot authorize: uid: must be 1 to 128"},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-amount", "-1"}, 1, "allot authorize: amount: must be a number from 0 to 1e15 (got -1)"},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-amount", "1e400"}, 1, "allot authorize: amount: must be a number from 0 to 1e15 (got 1e400)"},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-amount", "1e15", "-amount", "1000000000000001"}, 1, "allot authorize: amount: must be a number from 0 to 1e15 (got 1000000000000001)"},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-amount", "1e-300"}, 1, "allot authorize: amount: must be a number from 0 to 1e15 with at most 6 decimal places (got 1e-300)"},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-amount", "lots"}, 2, `invalid value "lots" for flag -amount`},
		{[]string{"authorize", "-uid", "u-1", "-metric", "m", "-id", "has space"}, 1, "allot authorize: id: "},

		{[]string{"grants", "-uid", "u-1", "-set", "photo_daily_total"}, 2, `allot grants: invalid value "photo_daily_total" for flag -set: want metric=number`},
		{[]string{"grants", "-uid", "u-1", "-set", "photo_daily_total=lots"}, 2, `"lots" is not a number`},
		{[]string{"grants", "-uid", "u-1", "-set", "=5"}, 2, "want metric=number"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=1", "-set", "m=2"}, 2, "m is set twice"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=-5"}, 1, "allot grants: set.m: must be a number from 0 to 1e15 (got -5)"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=1e308"}, 1, "allot grants: set.m: must be a number from 0 to 1e15 (got 1e+308)"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=1e400"}, 1, "allot grants: set.m: must be a number from 0 to 1e15 (got 1e400)"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=NaN"}, 1, "allot grants: set.m: must be a number from 0 to 1e15 (got NaN)"},
		{[]string{"grants", "-uid", "u-1", "-set", "m.x=5"}, 1, "allot grants: set: must be 1 to 128"},
		{[]string{"grants", "-uid", "u-1", "-set", "m=5", "-unset", "m"}, 1, `allot grants: unset: metric "m" is both set and unset`},
		{[]string{"grants", "-uid", "u 1"}, 1, "allot grants: uid: must be"},

		{[]string{"check", "-uid", "u-1", "-cost", "-1"}, 1, "allot check: cost: must be a whole number from 0 to 1000000 (got -1)"},
		{[]string{"check", "-uid", "u-1", "-cost", "1000001"}, 1, "allot check: cost: must be a whole number from 0 to 1000000 (got 1000001)"},
		{[]string{"check", "-uid", "u-1", "-cost", "1e308"}, 1, "allot check: cost: must be a whole number from 0 to 1000000 (got 1e+308)"},
		{[]string{"check", "-uid", "u-1", "-cost", "lots"}, 2, `invalid value "lots" for flag -cost: not a number`},
		{[]string{"check", "-uid", "u-1", "-cost", "1.5"}, 1, "allot check: cost: must be a whole number from 0 to 1000000 (got 1.5)"},
		{[]string{"check", "-uid", "u-1", "-service", "a*"}, 1, "allot check: service: must be 1 to 128"},
		{[]string{"check", "-uid", "*"}, 1, "allot check: uid: must be"},

		{[]string{"ratelimit"}, 2, "allot ratelimit: missing subcommand (reset, import-envoy)"},
		{[]string{"ratelimit", "frob"}, 2, `allot ratelimit: unknown subcommand "frob" (want reset, import-envoy)`},
		{[]string{"ratelimit", "-uid", "u-1", "reset"}, 2, "allot ratelimit: flag -uid before the subcommand"},
		{[]string{"ratelimit", "reset"}, 2, "allot ratelimit: reset: -uid is required"},
		{[]string{"ratelimit", "reset", "-uid", "u-1", "-cost", "1"}, 2, "allot ratelimit: reset: flag provided but not defined: -cost"},
		{[]string{"ratelimit", "reset", "-uid", "u>1"}, 1, "allot ratelimit: uid: must be"},
		{[]string{"ratelimit", "reset", "-uid", "u-1", "-service", "a.b"}, 1, "allot ratelimit: service: must be"},

		{[]string{"registry", "a.b"}, 1, "allot registry: name: must be 1 to 128"},
		{[]string{"registry", "media", "accounts"}, 2, `allot registry: unexpected argument "accounts"`},
		{[]string{"registry", "-nope"}, 2, "allot registry: flag provided but not defined: -nope"},

		{[]string{"credit", "-uid", "u-1", "-timeout", "0s"}, 2, "-timeout must be > 0"},
	} {
		r := runCLI(t, env, "", tc.args...)
		if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("allot %q: exit %d, stderr %q; want exit %d mentioning %q", tc.args, r.code, r.stderr, tc.code, tc.want)
		}
		lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
		if tc.code == 2 && (len(lines) != 2 || !strings.HasPrefix(lines[1], "Run 'allot ")) {
			t.Errorf("allot %q: stderr %q; want the mistake and a pointer to -h, no usage dump", tc.args, r.stderr)
		}
		if tc.code == 1 && len(lines) != 1 {
			t.Errorf("allot %q: stderr %q; want one line", tc.args, r.stderr)
		}
		if r.stdout != "" {
			t.Errorf("allot %q printed %q", tc.args, r.stdout)
		}
	}
	if calls := fake.received(); len(calls) != 0 {
		t.Errorf("bad input reached the services: %+v", calls)
	}
}

func TestEndpointHelp(t *testing.T) {
	for _, tc := range []struct {
		name string // the command as in "Usage: allot <name>"
		args []string
	}{
		{"credit", []string{"credit", "-h"}},
		{"credit", []string{"help", "credit"}},
		{"authorize", []string{"authorize", "-h"}},
		{"grants", []string{"grants", "--help"}},
		{"check", []string{"check", "-h"}},
		{"ratelimit reset", []string{"ratelimit", "reset", "-h"}},
		{"registry", []string{"registry", "-h"}},
		{"registry", []string{"registry", "media", "-h"}},
	} {
		r := runCLI(t, nil, "", tc.args...)
		if r.code != 0 || r.stdout != "" {
			t.Errorf("allot %q: exit %d, stdout %q", tc.args, r.code, r.stdout)
		}
		for _, want := range []string{"Usage: allot " + tc.name + " ", "Examples:\n  allot " + tc.name, "Flags:\n", "-json", "-nats", "-timeout"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("allot %q: help lacks %q:\n%s", tc.args, want, r.stderr)
			}
		}
	}
	for _, args := range [][]string{{"ratelimit", "-h"}, {"help", "ratelimit"}} {
		r := runCLI(t, nil, "", args...)
		if r.code != 0 || !strings.Contains(r.stderr, "Subcommands:\n  reset ") || !strings.Contains(r.stderr, "Examples:\n  allot ratelimit reset ") {
			t.Errorf("allot %q: exit %d, want the subcommands and an example:\n%s", args, r.code, r.stderr)
		}
	}
}
