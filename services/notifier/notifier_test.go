package notifier

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/allot/allot/pkg/events"
	"github.com/allot/allot/pkg/service"
	"github.com/allot/allot/pkg/testenv"
	"github.com/allot/allot/services/meter"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
)

// behaviours run on miniredis and an embedded NATS here, and on the real
// Redis and NATS under the integration tag.
var behaviours = []struct {
	name string
	fn   func(t *testing.T, newEnv envFunc)
}{
	{"ConfirmationEmailAndVerify", testConfirmationEmailAndVerify},
	{"ExpiredToken", testExpiredToken},
	{"SameRequestSendsOnce", testSameRequestSendsOnce},
	{"BadInputIsDeadLettered", testBadInputIsDeadLettered},
	{"UsageNoticeEmail", testUsageNoticeEmail},
	{"EmailGrantExhausted", testEmailGrantExhausted},
	{"SMTPFailures", testSMTPFailures},
	{"UnknownOutcome", testUnknownOutcome},
	{"Templates", testTemplates},
	{"RefreshHasOneScheduler", testRefreshHasOneScheduler},
	{"RefreshSchedulerStopsWithTheLock", testRefreshSchedulerStopsWithTheLock},
}

func TestBehaviour(t *testing.T) {
	for _, b := range behaviours {
		t.Run(b.name, func(t *testing.T) { b.fn(t, newMiniEnv) })
	}
}

// A confirmation request becomes one email with a working link; the token
// verifies once, then reads as used, and the address becomes the uid's.
func testConfirmationEmailAndVerify(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	_, reg := e.start()
	e.confirm("u-42", events.ConfirmRequest{ID: "c-1", Email: "ada@example.com", Name: "Ada Lovelace"})

	got := e.mails(1)[0]
	if got.From != "noreply@allot.example" || len(got.To) != 1 || got.To[0] != "ada@example.com" {
		t.Errorf("envelope from %q to %v", got.From, got.To)
	}
	p := got.MustParse(t)
	for h, want := range map[string]string{"From": "allot", "To": "ada@example.com", "Message-Id": "@allot.allot>", "X-Allot-Task": "confirm:u-42:c-1"} {
		if v := p.Header.Get(h); !strings.Contains(v, want) {
			t.Errorf("header %s = %q, want it to contain %q", h, v, want)
		}
	}
	if p.Subject == "" || p.HTML == "" || !strings.Contains(p.Text, "Ada Lovelace") {
		t.Errorf("subject %q, text:\n%s\nhtml:\n%s", p.Subject, p.Text, p.HTML)
	}
	tok := tokenOf(t, p.Text)
	if !strings.Contains(p.HTML, url.QueryEscape(tok)) && !strings.Contains(p.HTML, tok) {
		t.Errorf("the HTML part lacks the token")
	}
	if link := linkRE.FindString(p.Text); !strings.Contains(link, "from=mail") {
		t.Errorf("link %s lost the page's own query", link)
	}
	tok, err := url.QueryUnescape(tok)
	if err != nil {
		t.Fatal(err)
	}

	ctx := t.Context()
	v, err := e.client.Verify(ctx, tok)
	if err != nil {
		t.Fatal(err)
	}
	if v.Status != events.VerifyValid || v.UID != "u-42" || v.Email != "ada@example.com" {
		t.Errorf("first verify %+v", v)
	}
	if d := time.Until(v.ExpiresAt); d < 11*time.Hour || d > 12*time.Hour {
		t.Errorf("expires in %v, want about 12h", d)
	}
	if v, _ := e.client.Verify(ctx, tok); v.Status != events.VerifyUsed {
		t.Errorf("second verify %+v, want used", v)
	}
	if addr, _ := e.rdb.Get(ctx, e.keys.ConfirmedAddress("u-42")).Result(); addr != "ada@example.com" {
		t.Errorf("confirmed address %q", addr)
	}
	if v, _ := e.client.Verify(ctx, tok+"x"); v.Status != events.VerifyInvalid || v.UID != "" {
		t.Errorf("tampered token %+v, want invalid without claims", v)
	}
	// The email was charged once to email_daily_total.
	c, err := e.client.Credit(ctx, "u-42", "email_daily_total")
	if err != nil {
		t.Fatal(err)
	}
	if c.Used != 1 {
		t.Errorf("email_daily_total used %v, want 1", c.Used)
	}
	// Counted once the handler is back from the SMTP server; asynq's
	// queue metrics are on the same registry.
	eventually(t, 5*time.Second, func() error {
		if n := counter(t, reg, "allot_notifier_emails_sent_total", "type", TypeConfirmEmail); n != 1 {
			return fmt.Errorf("sent counter %v", n)
		}
		if n := counter(t, reg, "asynq_tasks_processed_total"); n < 1 {
			return fmt.Errorf("asynq_tasks_processed_total = %v", n)
		}
		return nil
	})
	if n := counter(t, reg, "allot_notifier_verifications_total", "status", "valid"); n != 1 {
		t.Errorf("valid verifications %v", n)
	}
}

func testExpiredToken(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	n, _ := e.start()
	e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "bo@example.com"})
	tok, err := url.QueryUnescape(tokenOf(t, e.mails(1)[0].MustParse(t).Text))
	if err != nil {
		t.Fatal(err)
	}
	e.clock.advance(12*time.Hour + time.Second)
	v, err := n.Verify(t.Context(), tok)
	if err != nil || v.Status != events.VerifyExpired || v.UID != "u-1" {
		t.Errorf("verify after 12h: %+v %v", v, err)
	}
	// An expired token does not confirm the address.
	if n, _ := e.rdb.Exists(t.Context(), e.keys.ConfirmedAddress("u-1")).Result(); n != 0 {
		t.Error("expired token confirmed the address")
	}
}

// A request published again under another Nats-Msg-Id (past the stream's
// duplicate window, say) or redelivered finds its task and sends nothing.
func testSameRequestSendsOnce(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	_, reg := e.start()
	body := []byte(`{"id":"c-7","email":"cy@example.com"}`)
	for i, msgID := range []string{"first", "second", "third"} {
		e.publishRaw(e.cfg.Subjects.NotifyConfirm("u-7"), body, msgID)
		if i == 0 {
			e.mails(1)
		}
	}
	eventually(t, 5*time.Second, func() error {
		if n := counter(t, reg, "allot_notifier_notices_total", "result", "duplicate"); n != 2 {
			return errors.New("the two republished requests are not counted as duplicates yet")
		}
		return nil
	})
	time.Sleep(300 * time.Millisecond)
	if got := len(e.smtp.Messages()); got != 1 {
		t.Errorf("%d emails, want 1", got)
	}
}

// Each bad notice is archived (asynq's dead letter) with its reason,
// counted, never sent and never retried.
func testBadInputIsDeadLettered(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	_, reg := e.start()
	s := e.cfg.Subjects
	good := func(metric string) events.UsageNotice {
		return events.UsageNotice{ID: "u-9." + metric + ".0.80", UID: "u-9", Metric: metric, Threshold: 80, Used: 160, Limit: 200, Period: "day"}
	}
	cases := []struct {
		name, queue, subject, body, reason, says string
	}{
		{"not JSON", "critical", s.NotifyConfirm("u-9"), `not json`, reasonBadInput, "request"},
		{"missing id", "critical", s.NotifyConfirm("u-9"), `{"email":"a@example.com"}`, reasonBadInput, "id: is required"},
		{"invalid email", "critical", s.NotifyConfirm("u-9"), `{"id":"b-1","email":"not-an-address"}`, reasonBadInput, "email"},
		{"header injection", "critical", s.NotifyConfirm("u-9"), `{"id":"b-2","email":"a@example.com","name":"x\r\nBcc: eve@example.com"}`, reasonBadInput, "name"},
		{"unknown template", "critical", s.NotifyConfirm("u-9"), `{"id":"b-3","email":"a@example.com","template":"nope"}`, reasonBadInput, `"nope" is not a template`},
		{"unknown field", "critical", s.NotifyConfirm("u-9"), `{"id":"b-4","email":"a@example.com","bcc":"eve@example.com"}`, reasonBadInput, "bcc"},
		{"bad uid", "critical", s.Notify + ".confirm.u=9", `{"id":"b-5","email":"a@example.com"}`, reasonBadInput, "uid"},
		{"unknown metric", "default", s.NotifyUsage("u-9"), mustJSON(t, good("nope_total")), reasonUnknownMetric, "nope_total"},
		{"counter metric", "default", s.NotifyUsage("u-9"), mustJSON(t, good("api_calls_total")), reasonUnknownMetric, "api_calls_total"},
		{"missing field", "default", s.NotifyUsage("u-9"), `{"id":"n-1","uid":"u-9","metric":"photo_daily_total"}`, reasonBadInput, "threshold"},
		{"uid mismatch", "default", s.NotifyUsage("u-8"), mustJSON(t, good("photo_daily_total")), reasonBadInput, "uid"},
	}
	for i, c := range cases {
		e.publishRaw(c.subject, []byte(c.body), "bad-"+string(rune('a'+i)))
	}
	var all []string
	for _, q := range []string{"critical", "default"} {
		want := 0
		for _, c := range cases {
			if c.queue == q {
				want++
			}
		}
		queue := map[string]string{"critical": e.cfg.Notifier.ConfirmQueue, "default": e.cfg.Notifier.UsageQueue}[q]
		for _, ti := range e.archived(queue, want) {
			all = append(all, ti.LastErr)
			if ti.Retried != 0 {
				t.Errorf("%s was retried %d times", ti.ID, ti.Retried)
			}
		}
	}
	for _, c := range cases {
		found := false
		for _, lastErr := range all {
			if strings.HasPrefix(lastErr, c.reason+":") && strings.Contains(lastErr, c.says) {
				found = true
			}
		}
		if !found {
			t.Errorf("%s: no archived task with reason %s saying %q; archived: %q", c.name, c.reason, c.says, all)
		}
	}
	if n := counter(t, reg, "allot_notifier_dead_total"); n != float64(len(cases)) {
		t.Errorf("dead counter %v, want %d", n, len(cases))
	}
	if got := len(e.smtp.Messages()); got != 0 {
		t.Errorf("%d emails sent for bad input", got)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := jsonMarshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A usage notice goes to the uid's confirmed address and says which grant
// crossed which threshold and when it resets.
func testUsageNoticeEmail(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	_, reg := e.start()
	if err := e.rdb.Set(t.Context(), e.keys.ConfirmedAddress("u-5"), "dee@example.com", 0).Err(); err != nil {
		t.Fatal(err)
	}
	// Today's period, as the meter would send it now: a notice is no
	// calendar date.
	start := time.Now().UTC().Truncate(24 * time.Hour)
	resets := start.Add(24 * time.Hour)
	noticeID := func(uid string) string { return fmt.Sprintf("%s.photo_daily_total.%d.80", uid, start.UnixMilli()) }
	n := events.UsageNotice{ID: noticeID("u-5"), UID: "u-5", Metric: "photo_daily_total",
		Threshold: 80, Used: 160, Limit: 200, Period: "day", PeriodStart: start, ResetsAt: resets}
	e.publishNotice(n)
	e.publishRaw(e.cfg.Subjects.NotifyUsage("u-5"), []byte(mustJSON(t, n)), "the same notice again")
	got := e.mails(1)[0]
	p := got.MustParse(t)
	if got.To[0] != "dee@example.com" {
		t.Errorf("to %v", got.To)
	}
	for _, want := range []string{"photo_daily_total", "80", "160", "200", resets.Format("02 Jan 2006")} {
		if !strings.Contains(p.Subject+"\n"+p.Text, want) {
			t.Errorf("usage email lacks %q:\n%s\n%s", want, p.Subject, p.Text)
		}
	}
	eventually(t, 5*time.Second, func() error {
		if counter(t, reg, "allot_notifier_notices_total", "kind", "usage", "result", "duplicate") != 1 {
			return errors.New("duplicate notice not counted yet")
		}
		if n := counter(t, reg, "allot_notifier_enqueue_to_sent_seconds", "type", TypeUsageEmail); n != 1 {
			return fmt.Errorf("latency observations %v, want 1", n)
		}
		return nil
	})
	if len(e.smtp.Messages()) != 1 {
		t.Errorf("%d emails, want 1", len(e.smtp.Messages()))
	}
	// A uid that never confirmed an address gets no email, and that is
	// not a failure: counted, not archived.
	other := n
	other.UID, other.ID = "u-6", noticeID("u-6")
	e.publishNotice(other)
	eventually(t, 5*time.Second, func() error {
		if counter(t, reg, "allot_notifier_tasks_total", "type", TypeUsageEmail, "result", "no_address") != 1 {
			return errors.New("the notice without an address is not counted yet")
		}
		return nil
	})
	if archived, _ := e.insp.ListArchivedTasks(e.cfg.Notifier.UsageQueue); len(archived) != 0 || len(e.smtp.Messages()) != 1 {
		t.Errorf("%d archived, %d emails", len(archived), len(e.smtp.Messages()))
	}
}

// When the sender's email grant is used up the task stops at once with a
// reason, and is counted.
func testEmailGrantExhausted(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	_, reg := e.start()
	if _, err := e.client.Grants(t.Context(), "u-3", events.GrantsRequest{Set: map[string]float64{"email_daily_total": 1}}); err != nil {
		t.Fatal(err)
	}
	e.confirm("u-3", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
	e.mails(1)
	e.confirm("u-3", events.ConfirmRequest{ID: "c-2", Email: "a@example.com"})
	ti := e.archived(e.cfg.Notifier.ConfirmQueue, 1)[0]
	if !strings.HasPrefix(ti.LastErr, reasonOverLimit+": email_daily_total of u-3 is exhausted until ") {
		t.Errorf("reason %q", ti.LastErr)
	}
	if n := counter(t, reg, "allot_notifier_charge_refused_total"); n != 1 {
		t.Errorf("charge refused %v", n)
	}
	if len(e.smtp.Messages()) != 1 {
		t.Errorf("%d emails, want 1", len(e.smtp.Messages()))
	}
}

// A server that is down is retried with backoff, then the task is
// archived with the reason; a 4xx is retried until it goes through; a
// 5xx is final at once.
func testSMTPFailures(t *testing.T, newEnv envFunc) {
	t.Run("down", func(t *testing.T) {
		e := newEnv(t)
		e.cfg.Notifier.MaxRetry = 2
		_, reg := e.start()
		e.smtp.Stop()
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		ti := e.archived(e.cfg.Notifier.ConfirmQueue, 1)[0]
		if ti.Retried != 2 || !strings.Contains(ti.LastErr, "connect") && !strings.Contains(ti.LastErr, "refused") {
			t.Errorf("archived after %d retries with %q", ti.Retried, ti.LastErr)
		}
		if n := counter(t, reg, "allot_notifier_dead_total", "reason", reasonRetriesOut); n != 1 {
			t.Errorf("retries_exhausted counter %v", n)
		}
		if n := counter(t, reg, "allot_notifier_smtp_errors_total", "kind", "transient"); n != 3 {
			t.Errorf("transient SMTP errors %v, want 3 (first try and two retries)", n)
		}
		// The charge was made once, however often it was tried.
		if c, _ := e.client.Credit(t.Context(), "u-1", "email_daily_total"); c.Used != 1 {
			t.Errorf("charged %v times", c.Used)
		}
	})
	t.Run("4xx then accepted", func(t *testing.T) {
		e := newEnv(t)
		_, reg := e.start()
		e.smtp.RefuseNext(451, "try again later", 2)
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		e.mails(1)
		if n := counter(t, reg, "allot_notifier_smtp_errors_total", "kind", "transient"); n != 2 {
			t.Errorf("transient errors %v, want 2", n)
		}
	})
	t.Run("5xx", func(t *testing.T) {
		e := newEnv(t)
		_, reg := e.start()
		e.smtp.RefuseDataNext(554, "no such mailbox here", 1)
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		ti := e.archived(e.cfg.Notifier.ConfirmQueue, 1)[0]
		if ti.Retried != 0 || !strings.HasPrefix(ti.LastErr, reasonSMTPRefused+":") || !strings.Contains(ti.LastErr, "554") {
			t.Errorf("retried %d, reason %q", ti.Retried, ti.LastErr)
		}
		if n := counter(t, reg, "allot_notifier_smtp_errors_total", "kind", "permanent"); n != 1 {
			t.Errorf("permanent errors %v", n)
		}
	})
}

// An email whose attempt ended between the end of its data and the
// server's answer (here the server hangs up after taking it) has an
// unknown outcome: the rerun finds the claimed mark and skips it, or with
// unknown_outcome resend sends it again with the same Message-ID. A
// server that answers no after the claim leaves no claim behind.
func testUnknownOutcome(t *testing.T, newEnv envFunc) {
	markOf := func(e *env, id string) string {
		v, _ := e.rdb.Get(t.Context(), e.keys.SentEmail("u-1", hashID("confirm:u-1:"+id))).Result()
		return v
	}
	waitCounter := func(reg *prometheus.Registry, want float64, name string, labels ...string) {
		t.Helper()
		eventually(t, 10*time.Second, func() error {
			if got := counter(t, reg, name, labels...); got != want {
				return fmt.Errorf("%s %v = %v, want %v", name, labels, got, want)
			}
			return nil
		})
	}
	t.Run("skip", func(t *testing.T) {
		e := newEnv(t)
		_, reg := e.start()
		e.smtp.DropReplyNext(1)
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		waitCounter(reg, 1, "allot_notifier_unknown_outcome_total", "action", "skipped")
		if n := len(e.smtp.Messages()); n != 1 {
			t.Errorf("%d emails, want the one the server took", n)
		}
		if m := markOf(e, "c-1"); m != markClaimed {
			t.Errorf("mark %q, want it left claimed", m)
		}
		if n := counter(t, reg, "allot_notifier_unknown_outcome_total", "action", "resent"); n != 0 {
			t.Errorf("resent %v", n)
		}
	})
	t.Run("resend", func(t *testing.T) {
		e := newEnv(t)
		e.cfg.Notifier.UnknownOutcome = UnknownOutcomeResend
		_, reg := e.start()
		e.smtp.DropReplyNext(1)
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		got := e.mails(2)
		first, second := got[0].MustParse(t), got[1].MustParse(t)
		if first.Header.Get("Message-ID") == "" || first.Header.Get("Message-ID") != second.Header.Get("Message-ID") {
			t.Errorf("Message-IDs %q and %q, want the same", first.Header.Get("Message-ID"), second.Header.Get("Message-ID"))
		}
		waitCounter(reg, 1, "allot_notifier_unknown_outcome_total", "action", "resent")
		eventually(t, 5*time.Second, func() error {
			if m := markOf(e, "c-1"); m != markSent {
				return fmt.Errorf("mark %q, want sent", m)
			}
			return nil
		})
		// Charged once: the resend charges the same id.
		if c, _ := e.client.Credit(t.Context(), "u-1", "email_daily_total"); c.Used != 1 {
			t.Errorf("charged %v times", c.Used)
		}
	})
	t.Run("refused after the claim", func(t *testing.T) {
		e := newEnv(t)
		_, reg := e.start()
		e.smtp.RefuseDataNext(451, "try again later", 1)
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		e.mails(1)
		waitCounter(reg, 1, "allot_notifier_tasks_total", "type", TypeConfirmEmail, "result", "sent")
		if n := counter(t, reg, "allot_notifier_unknown_outcome_total", "action", "skipped"); n != 0 {
			t.Errorf("a refusal was taken for an unknown outcome %v times", n)
		}
		if m := markOf(e, "c-1"); m != markSent {
			t.Errorf("mark %q, want sent", m)
		}
	})
	t.Run("claim left by a dead attempt", func(t *testing.T) {
		e := newEnv(t)
		_, reg := e.start()
		mark := e.keys.SentEmail("u-1", hashID("confirm:u-1:c-1"))
		if err := e.rdb.Set(t.Context(), mark, markClaimed, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
		e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
		waitCounter(reg, 1, "allot_notifier_unknown_outcome_total", "action", "skipped")
		if n := len(e.smtp.Messages()); n != 0 {
			t.Errorf("%d emails sent for an unknown outcome under skip", n)
		}
	})
}

// Templates come from a directory that overrides and adds; one that fails
// to render is dead-lettered and counted, and the worker goes on.
func testTemplates(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	dir := t.TempDir()
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("welcome.txt", `{{define "subject"}}Welcome to {{.Product}}, {{.Name}}{{end}}Hello {{.Name}}, confirm here: {{.Link}}`)
	write("broken.txt", `{{define "subject"}}Hi{{end}}{{index .Name 99}}`)
	e.cfg.Notifier.TemplatesDir = dir
	_, reg := e.start()
	e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com", Name: "Eve", Template: "broken"})
	ti := e.archived(e.cfg.Notifier.ConfirmQueue, 1)[0]
	if !strings.HasPrefix(ti.LastErr, reasonRenderFailed+":") || ti.Retried != 0 {
		t.Errorf("broken template: retried %d, %q", ti.Retried, ti.LastErr)
	}
	if n := counter(t, reg, "allot_notifier_render_failures_total", "template", "broken"); n != 1 {
		t.Errorf("render failures %v", n)
	}
	e.confirm("u-1", events.ConfirmRequest{ID: "c-2", Email: "a@example.com", Name: "Eve", Template: "welcome"})
	p := e.mails(1)[0].MustParse(t)
	if p.Subject != "Welcome to allot, Eve" || !strings.Contains(p.Text, "Hello Eve") || p.HTML != "" {
		t.Errorf("welcome: %q\n%s\nhtml %q", p.Subject, p.Text, p.HTML)
	}
	tokenOf(t, p.Text)
}

// A task that finds its sent mark (asynq running it again after the SMTP
// server accepted it) sends nothing and charges nothing.
func TestSentMarkStopsARerun(t *testing.T) {
	e := newMiniEnv(t)
	_, reg := e.start()
	mark := e.keys.SentEmail("u-1", hashID("confirm:u-1:c-1"))
	if err := e.rdb.Set(t.Context(), mark, "1", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
	eventually(t, 5*time.Second, func() error {
		if counter(t, reg, "allot_notifier_tasks_total", "type", TypeConfirmEmail, "result", "duplicate") != 1 {
			return errors.New("the rerun is not counted yet")
		}
		return nil
	})
	if n := len(e.smtp.Messages()); n != 0 {
		t.Errorf("%d emails sent despite the sent mark", n)
	}
	if c, _ := e.client.Credit(t.Context(), "u-1", "email_daily_total"); c.Used != 0 {
		t.Errorf("charged %v", c.Used)
	}
	// Another request is sent and marked.
	e.confirm("u-1", events.ConfirmRequest{ID: "c-2", Email: "a@example.com"})
	e.mails(1)
	eventually(t, 5*time.Second, func() error {
		if n, _ := e.rdb.Exists(t.Context(), e.keys.SentEmail("u-1", hashID("confirm:u-1:c-2"))).Result(); n != 1 {
			return errors.New("no sent mark after sending")
		}
		return nil
	})
}

// Redis away at the moment the server takes an email: the sent mark is
// written once Redis is back, so asynq's rerun (it could not record the
// task's success either) finds it sent and sends nothing more.
func TestSentMarkOutlastsARedisOutage(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	cfg := DefaultConfig()
	cfg.NATS.URL = service.URL(testenv.EmbeddedNATS(t))
	e := newEnvOn(t, cfg, meter.DefaultSettings(), rdb)
	_, reg := e.start()
	e.smtp.BeforeReplyNext(func() {
		mr.Close()
		time.AfterFunc(700*time.Millisecond, func() {
			if err := mr.Restart(); err != nil {
				t.Errorf("restart miniredis: %v", err)
			}
		})
	})
	e.confirm("u-1", events.ConfirmRequest{ID: "c-1", Email: "a@example.com"})
	eventually(t, 15*time.Second, func() error {
		v, err := rdb.Get(t.Context(), e.keys.SentEmail("u-1", hashID("confirm:u-1:c-1"))).Result()
		if v != markSent {
			return fmt.Errorf("mark %q (%v), want sent", v, err)
		}
		return nil
	})
	if n := counter(t, reg, "allot_notifier_tasks_total", "type", TypeConfirmEmail, "result", "sent"); n != 1 {
		t.Errorf("sent %v times", n)
	}
	if n := len(e.smtp.Messages()); n != 1 {
		t.Errorf("%d emails, want 1", n)
	}
}

func TestVerifyBadInput(t *testing.T) {
	e := newMiniEnv(t)
	e.start()
	for body, field := range map[string]string{
		`{}`:          `"field":"token"`,
		`{"token":1}`: `"field":"token"`,
		`{"tok":"x"}`: `"field":"tok"`,
		`not json`:    `"field":"request"`,
		`{"token":"` + strings.Repeat("x", 2000) + `"}`: `"field":"token"`,
	} {
		msg, err := e.nc.Request(e.cfg.Subjects.NotifyVerify(), []byte(body), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get("Nats-Service-Error-Code") != "400" || !strings.Contains(string(msg.Data), field) {
			t.Errorf("%.40s: %s %s, want 400 naming %s", body, msg.Header.Get("Nats-Service-Error-Code"), msg.Data, field)
		}
	}
	v, err := e.client.Verify(t.Context(), "garbage.token")
	if err != nil || v.Status != events.VerifyInvalid {
		t.Errorf("garbage: %+v %v", v, err)
	}
}

func TestStartRefusesWithoutASecretOrWithBadParts(t *testing.T) {
	e := newMiniEnv(t)
	for name, mutate := range map[string]func(*Config){
		"no secret":    func(c *Config) { c.Notifier.TokenSecrets = nil },
		"placeholder":  func(c *Config) { c.Notifier.TokenSecrets = []service.Secret{"CHANGE-ME-" + testSecret} },
		"missing dir":  func(c *Config) { c.Notifier.TemplatesDir = filepath.Join(t.TempDir(), "nope") },
		"bad template": func(c *Config) { c.Notifier.TemplatesDir = badTemplateDir(t) },
		"bad config":   func(c *Config) { c.Notifier.SMTP.Port = 0 },
		"smtp placeholder": func(c *Config) {
			c.Notifier.SMTP.Username, c.Notifier.SMTP.Password = "CHANGE-ME-smtp-user", "CHANGE-ME-smtp-password"
		},
	} {
		cfg := e.cfg
		mutate(&cfg)
		if _, err := Start(t.Context(), cfg, Deps{NATS: e.nc, Redis: e.rdb, Registerer: prometheus.NewRegistry()}); err == nil {
			t.Errorf("%s: started", name)
		} else if name == "no secret" && !errors.Is(err, ErrNoSecret) {
			t.Errorf("no secret: %v", err)
		}
	}
}

func badTemplateDir(t *testing.T) string {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "confirm.txt"), []byte(`{{define "subject"}}{{end`), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

// One of two notifiers runs asynq's scheduler for the registry refresh,
// and its entry is what asynq's tooling lists (Inspector.SchedulerEntries,
// as `asynq cron ls` and asynqmon read it): exactly one. When the leader
// stops, its entry goes with it and the other takes over.
func testRefreshHasOneScheduler(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	e.startRegistry()
	e.cfg.Notifier.RefreshInterval = time.Second
	a, regA := e.start()
	b, regB := e.start()
	leader := func(reg *prometheus.Registry) bool { return counter(t, reg, "allot_notifier_scheduler_leader") == 1 }
	done := func() float64 {
		return counter(t, regA, "allot_notifier_tasks_total", "type", TypeRegistryRefresh, "result", "done") +
			counter(t, regB, "allot_notifier_tasks_total", "type", TypeRegistryRefresh, "result", "done")
	}
	// entries are the scheduler entries of this test's refresh queue (a
	// real Redis may hold other deployments').
	entries := func() []*asynq.SchedulerEntry {
		all, err := e.insp.SchedulerEntries()
		if err != nil {
			t.Fatal(err)
		}
		var ours []*asynq.SchedulerEntry
		for _, en := range all {
			for _, o := range en.Opts {
				if o.Type() == asynq.QueueOpt && o.Value() == e.cfg.Notifier.RefreshQueue {
					ours = append(ours, en)
				}
			}
		}
		return ours
	}
	oneEntry := func() (*asynq.SchedulerEntry, error) {
		es := entries()
		if len(es) != 1 {
			return nil, fmt.Errorf("%d scheduler entries, want 1", len(es))
		}
		if es[0].Spec != "@every 1s" || es[0].Task.Type() != TypeRegistryRefresh {
			return nil, fmt.Errorf("scheduler entry %s %s", es[0].Spec, es[0].Task.Type())
		}
		return es[0], nil
	}
	var entry *asynq.SchedulerEntry
	eventually(t, 10*time.Second, func() (err error) {
		if leader(regA) == leader(regB) || done() < 2 {
			return errors.New("waiting for one leader and two refreshes")
		}
		entry, err = oneEntry()
		return err
	})
	start := time.Now()
	scheduled := counter(t, regA, "allot_notifier_refresh_scheduled_total") + counter(t, regB, "allot_notifier_refresh_scheduled_total")
	// One task per interval, whoever enqueued it.
	if elapsed := time.Since(start); scheduled > 4 {
		t.Errorf("%v refresh tasks scheduled in about 2s (%v)", scheduled, elapsed)
	}

	first, other, otherReg := a, b, regB
	if leader(regB) {
		first, other, otherReg = b, a, regA
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := first.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for _, en := range entries() {
		if en.ID == entry.ID {
			t.Errorf("the stopped leader's scheduler entry %s is still listed", en.ID)
		}
	}
	before := done()
	eventually(t, 10*time.Second, func() error {
		if !leader(otherReg) || counter(t, otherReg, "allot_notifier_refresh_scheduled_total") < 1 {
			return errors.New("the other notifier did not take over")
		}
		if done() <= before {
			return errors.New("no refresh after the takeover")
		}
		next, err := oneEntry()
		if err == nil && next.ID == entry.ID {
			err = errors.New("the listed entry is still the stopped leader's")
		}
		return err
	})
	if err := other.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if es := entries(); len(es) != 0 {
		t.Errorf("%d scheduler entries listed after both notifiers stopped", len(es))
	}
}

// A leader that loses its lock (here: the key deleted under it) stops
// its scheduler, whose entry goes, and takes the lock again with a new
// one: never two entries.
func testRefreshSchedulerStopsWithTheLock(t *testing.T, newEnv envFunc) {
	e := newEnv(t)
	e.startRegistry()
	e.cfg.Notifier.RefreshInterval = time.Second
	_, reg := e.start()
	ids := func() []string {
		all, err := e.insp.SchedulerEntries()
		if err != nil {
			t.Fatal(err)
		}
		var ours []string
		for _, en := range all {
			for _, o := range en.Opts {
				if o.Type() == asynq.QueueOpt && o.Value() == e.cfg.Notifier.RefreshQueue {
					ours = append(ours, en.ID)
				}
			}
		}
		return ours
	}
	var first string
	eventually(t, 10*time.Second, func() error {
		if got := ids(); len(got) != 1 {
			return fmt.Errorf("scheduler entries %v, want one", got)
		}
		first = ids()[0]
		return nil
	})
	if err := e.rdb.Del(t.Context(), e.cfg.Redis.KeyPrefix+"lock:{"+schedulerLock+"}").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		got := ids()
		if len(got) > 1 {
			t.Fatalf("scheduler entries %v: the lost leader's scheduler still runs beside the new one", got)
		}
		if len(got) != 1 || got[0] == first || counter(t, reg, "allot_notifier_scheduler_leader") != 1 {
			return fmt.Errorf("scheduler entries %v, want one other than %s", got, first)
		}
		return nil
	})
	if counter(t, reg, "allot_mutex_lost_total") < 1 {
		t.Error("the lock was not counted as lost")
	}
}

func TestRetryDelay(t *testing.T) {
	f := retryDelay(time.Second, time.Minute)
	for n, want := range map[int]time.Duration{0: time.Second, 1: 2 * time.Second, 3: 8 * time.Second, 10: time.Minute, 100: time.Minute} {
		got := f(n, nil, nil)
		if got < want*8/10 || got > want*12/10 {
			t.Errorf("retry %d: %v, want %v ±20%%", n, got, want)
		}
	}
}

func TestConfirmLink(t *testing.T) {
	for page, want := range map[string]string{
		"https://app.example/confirm":       "https://app.example/confirm?token=a%2Bb",
		"https://app.example/confirm?x=1":   "https://app.example/confirm?token=a%2Bb&x=1",
		"https://app.example/c?token=stale": "https://app.example/c?token=a%2Bb",
	} {
		if got := confirmLink(page, "a+b"); got != want {
			t.Errorf("%s: %s, want %s", page, got, want)
		}
	}
}
