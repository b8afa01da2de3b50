package main

// The README's walkthrough, replayed.
//
// Which blocks: every block of README.md fenced as ```console is a
// transcript: lines starting with "$ " are commands, the lines after one,
// up to the next, are what it prints (stdout and stderr as a terminal
// shows them). The test replays all of them, in the README's order, as one
// session against one in-process allot dev, as a reader following the
// README from the top does; examples that are not to be checked go in
// ```sh blocks.
//
// Commands understood, and how each is run:
//
//	make run            "bin/allot dev" through the CLI's own run, on free
//	                    ports (-nats-addr, -http, -smtp 127.0.0.1:0); the
//	                    lines make prints before "allot dev is running"
//	                    depend on the module and build caches and are not
//	                    compared. It runs until the end of the test, which
//	                    then stops it as Ctrl-C does and wants exit 0.
//	bin/allot ARGS      the CLI's run, in-process, with only the session's
//	                    exported variables as its environment
//	export NAME=VALUE   sets NAME for the later commands
//	cat FILE            prints FILE (relative to the repository)
//	curl -s URL         an HTTP GET, printing the body
//
// joined by "&&" (the next runs only when the previous exited 0), with
// ">/dev/null" to drop a command's stdout and '...' or "..." quoting.
// A command is expected to fail (exit non-zero) exactly when the last
// line the README shows for it is the CLI's error line, "allot <command>:
// ...". Before a bin/allot command that talks to NATS runs, NATS_URL must
// be exported (or -nats given), so the test never reaches a NATS on
// 127.0.0.1:4222.
//
// After each command the test waits until the stack is idle (every
// consumer of the streams has acked all, asynq has no task pending,
// active or to retry), as it is by the time a person types the next
// command. Before the first "check" it waits out an hour boundary less
// than 20 s away: the example service's window is an epoch-aligned hour,
// and the counts shown assume the checks share one window.
//
// What genuinely varies from run to run is replaced by a placeholder, in
// the README's lines and in the output alike, by the rules in volatile;
// everything else, every number in particular, must be equal (trailing
// spaces and trailing empty lines aside). When a line matches, each value
// a placeholder hid in the README is paired with the value printed, and
// later commands get the printed one: "export NATS_URL=nats://127.0.0.1:4222"
// becomes the dev stack's port, a token copied from the mail becomes the
// token the mail really held.

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/hibiken/asynq"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// volatile are the rules: what varies from run to run, and its
// placeholder. They are tried in this order at each position.
var volatile = []struct {
	placeholder string
	pattern     string
}{
	// Times: RFC 3339 (events, credit, tail), notify verify's
	// "2006-01-02 15:04:05Z", and the mail's RFC 1123 expiry.
	{"<time>", `\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:\.\d+)?Z`},
	{"<time>", `(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} UTC`},
	// Event and request ids (UUIDv7).
	{"<id>", `[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}`},
	// Confirmation tokens: payload.signature, base64url.
	{"<token>", `[A-Za-z0-9_-]{20,}\.[A-Za-z0-9_-]{20,}`},
	// API keys: an 8-character id, a dot, a 32-character secret.
	{"<key>", `[A-Za-z0-9_-]{8}\.[A-Za-z0-9_-]{32}`},
	// The embedded JetStream's temporary directory.
	{"<dir>", `/\S*allot-dev-jetstream-\d+`},
	// Ports: free ones in the test, the defaults in the README.
	{"127.0.0.1:<port>", `127\.0\.0\.1:\d+`},
	// Stream sizes, which follow the length of the times in the events.
	{"<n> bytes", `\d+ bytes`},
	// Durations measured or counted down: "in 3ms", "resets in 41m3s".
	{" in <duration>", ` in (?:\d+h)?(?:\d+m)?\d+(?:\.\d+)?(?:ns|µs|ms|s)\b`},
}

var volatileRE = func() *regexp.Regexp {
	parts := make([]string, len(volatile))
	for i, v := range volatile {
		parts[i] = "(" + v.pattern + ")"
	}
	return regexp.MustCompile(strings.Join(parts, "|"))
}()

// normalize replaces what varies in line with placeholders and returns
// the values replaced, in order.
func normalize(line string) (string, []string) {
	line = strings.TrimRight(line, " \t\r")
	var b strings.Builder
	var values []string
	last := 0
	for _, m := range volatileRE.FindAllStringSubmatchIndex(line, -1) {
		for g := range volatile {
			if m[2+2*g] < 0 {
				continue
			}
			b.WriteString(line[last:m[0]])
			b.WriteString(volatile[g].placeholder)
			values = append(values, line[m[0]:m[1]])
			last = m[1]
			break
		}
	}
	b.WriteString(line[last:])
	return b.String(), values
}

// transcriptCommand is one "$ " line of a console block and the lines
// shown after it.
type transcriptCommand struct {
	line int // in README.md
	text string
	want []string
}

// readTranscripts returns the commands of every console block of the
// README, in order.
func readTranscripts(t *testing.T, path string) []transcriptCommand {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cmds []transcriptCommand
	in := false
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case !in && line == "```console":
			in = true
		case in && line == "```":
			in = false
		case in && strings.HasPrefix(line, "$ "):
			cmds = append(cmds, transcriptCommand{line: n, text: strings.TrimPrefix(line, "$ ")})
		case in && len(cmds) == 0:
			t.Fatalf("%s:%d: a console block must start with a command (\"$ ...\"), got %q", path, n, line)
		case in:
			cmds[len(cmds)-1].want = append(cmds[len(cmds)-1].want, line)
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if in {
		t.Fatalf("%s: a console block is not closed", path)
	}
	return cmds
}

// session is the state the README's commands share.
type session struct {
	t        *testing.T
	env      map[string]string
	literals map[string]string // a value the README shows -> the one printed

	dev     *devProcess
	nc      *nats.Conn
	inspect *asynq.Inspector
	checked bool // a rate-limit check ran
}

// devProcess is "allot dev" running in-process.
type devProcess struct {
	cancel context.CancelFunc
	done   chan int
	out    *syncBuffer
	log    *syncBuffer
}

func TestREADMEWalkthrough(t *testing.T) {
	t.Chdir("../..") // the README's commands run in the repository
	cmds := readTranscripts(t, "README.md")
	if len(cmds) == 0 {
		t.Fatal("README.md has no console blocks")
	}
	s := &session{t: t, env: map[string]string{}, literals: map[string]string{}}
	defer s.stopDev()
	for _, c := range cmds {
		s.replay(c)
	}
	s.stopDev()
}

// cliErrorLine is the line the CLI ends with when a command fails.
var cliErrorLine = regexp.MustCompile(`^allot [a-z]+: `)

// replay runs one command line and compares its output with the README's.
func (s *session) replay(c transcriptCommand) {
	t := s.t
	text := s.substitute(c.text)
	var out syncBuffer
	wantFail := len(c.want) > 0 && cliErrorLine.MatchString(c.want[len(c.want)-1])
	want := c.want
	code := 0
	if text == "make run" {
		want = s.startDev(c, &out)
	} else {
		for _, part := range strings.Split(text, " && ") {
			if code = s.runOne(c, strings.TrimSpace(part), &out); code != 0 {
				break
			}
		}
	}
	if s.dev != nil {
		s.settle(c)
	}
	if wantFail != (code != 0) {
		t.Errorf("README.md:%d: $ %s exited %d; the README shows it %s", c.line, c.text, code,
			map[bool]string{true: "failing", false: "succeeding"}[wantFail])
	}
	got := strings.Split(out.String(), "\n")
	if diff := s.compare(trimEmpty(want), trimEmpty(got)); diff != "" {
		t.Errorf("README.md:%d: $ %s\n%s", c.line, c.text, diff)
	}
}

// substitute replaces the values the README showed with those printed,
// in one pass, the longest first where two start at the same place.
func (s *session) substitute(text string) string {
	keys := make([]string, 0, len(s.literals))
	for k := range s.literals {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	pairs := make([]string, 0, 2*len(keys))
	for _, k := range keys {
		pairs = append(pairs, k, s.literals[k])
	}
	return strings.NewReplacer(pairs...).Replace(text)
}

// compare returns "" when got shows what want shows, placeholders aside,
// and records the values the placeholders hid; else the lines that
// differ.
func (s *session) compare(want, got []string) string {
	var diff strings.Builder
	for i := range max(len(want), len(got)) {
		var w, g string
		var wv, gv []string
		if i < len(want) {
			w, wv = normalize(want[i])
		}
		if i < len(got) {
			g, gv = normalize(got[i])
		}
		if i >= len(want) || i >= len(got) || w != g {
			fmt.Fprintf(&diff, "  line %d:\n    README:  %q\n    printed: %q\n", i+1, lineOr(want, i), lineOr(got, i))
			continue
		}
		for j := range wv {
			s.literals[wv[j]] = gv[j]
		}
	}
	return diff.String()
}

func lineOr(lines []string, i int) string {
	if i < len(lines) {
		return lines[i]
	}
	return "(none)"
}

func trimEmpty(lines []string) []string {
	for len(lines) > 0 && strings.TrimSpace(lines[len(lines)-1]) == "" {
		lines = lines[:len(lines)-1]
	}
	return lines
}

// runOne runs one simple command, writing what it prints to out, and
// returns its exit code.
func (s *session) runOne(c transcriptCommand, text string, out io.Writer) int {
	t := s.t
	stdout := out
	if cut, ok := strings.CutSuffix(text, " >/dev/null"); ok {
		text, stdout = cut, io.Discard
	}
	args, err := shellWords(text)
	if err != nil {
		t.Fatalf("README.md:%d: %v", c.line, err)
	}
	if len(args) == 0 {
		t.Fatalf("README.md:%d: an empty command", c.line)
	}
	switch {
	case args[0] == "export" && len(args) >= 2:
		for _, a := range args[1:] {
			k, v, ok := strings.Cut(a, "=")
			if !ok {
				t.Fatalf("README.md:%d: export %q: the walkthrough test exports NAME=value only", c.line, a)
			}
			s.env[k] = v
		}
		return 0
	case args[0] == "cat" && len(args) == 2:
		b, err := os.ReadFile(args[1])
		if err != nil {
			fmt.Fprintf(out, "cat: %v\n", err)
			return 1
		}
		_, _ = stdout.Write(b)
		return 0
	case args[0] == "curl" && len(args) == 3 && args[1] == "-s":
		resp, err := http.Get(args[2])
		if err != nil {
			return 7 // curl: could not connect
		}
		defer resp.Body.Close()
		_, _ = io.Copy(stdout, resp.Body)
		return 0
	case args[0] == "bin/allot" && len(args) > 1:
		talks := !slices.Contains([]string{"dev", "version", "help"}, args[1]) && !slices.Contains(args, "-h")
		if talks && s.env["NATS_URL"] == "" && !slices.Contains(args, "-nats") {
			t.Fatalf("README.md:%d: %q runs before NATS_URL is exported: it would reach whatever NATS listens on 127.0.0.1:4222", c.line, c.text)
		}
		if args[1] == "check" && !s.checked {
			s.checked = true
			waitOutHourBoundary(t, 20*time.Second)
		}
		return run(t.Context(), args[1:], &cliEnv{
			stdin:  strings.NewReader(""),
			stdout: stdout,
			stderr: out,
			getenv: func(k string) string { return s.env[k] },
			self:   "bin/allot",
		})
	}
	t.Fatalf("README.md:%d: the walkthrough test cannot run %q (see readme_test.go for the commands it knows)", c.line, text)
	return 0
}

// shellWords splits a command line on spaces, honouring '...' and "..."
// (no escapes, no variables).
func shellWords(text string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range text {
		switch {
		case quote != 0 && r == quote:
			quote = 0
		case quote != 0:
			cur.WriteRune(r)
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case strings.ContainsRune("|;&<>$`\\*?", r):
			return nil, fmt.Errorf("%q: the walkthrough test does not run shell syntax %q", text, r)
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("%q: unclosed quote", text)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}

// startDev runs "allot dev" on free ports as "make run" runs it, waits for
// its banner, and returns the README's lines from the banner on.
func (s *session) startDev(c transcriptCommand, out io.Writer) []string {
	t := s.t
	if s.dev != nil {
		t.Fatalf("README.md:%d: make run twice", c.line)
	}
	ctx, cancel := context.WithCancel(context.WithoutCancel(t.Context()))
	d := &devProcess{cancel: cancel, done: make(chan int, 1), out: &syncBuffer{}, log: &syncBuffer{}}
	s.dev = d
	go func() {
		d.done <- run(ctx, []string{"dev", "-nats-addr", "127.0.0.1:0", "-http", "127.0.0.1:0", "-smtp", "127.0.0.1:0", "-grpc", "127.0.0.1:0"}, &cliEnv{
			stdin: strings.NewReader(""), stdout: d.out, stderr: d.log,
			getenv: func(k string) string { return s.env[k] },
			self:   "bin/allot",
		})
	}()
	deadline := time.Now().Add(60 * time.Second)
	for !strings.Contains(d.out.String(), "\nTry:") {
		select {
		case code := <-d.done:
			s.dev = nil
			t.Fatalf("allot dev exited %d before its banner:\n%s\n%s", code, d.out.String(), d.log.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("allot dev printed no banner within 60s:\n%s\n%s", d.out.String(), d.log.String())
		}
	}
	banner := d.out.String()
	_, _ = io.WriteString(out, banner)

	natsURL := regexp.MustCompile(`export NATS_URL=(\S+)`).FindStringSubmatch(banner)
	redisAddr := regexp.MustCompile(`Redis\s+redis://(\S+)/0`).FindStringSubmatch(banner)
	if natsURL == nil || redisAddr == nil {
		t.Fatalf("the banner names no NATS or Redis:\n%s", banner)
	}
	// The test watches the stack as an admin, with the key allot dev made.
	var opts []nats.Option
	if key := regexp.MustCompile(`ALLOT_KEY=(\S+)`).FindStringSubmatch(banner); key != nil {
		var err error
		if opts, err = events.KeyOptions(key[1]); err != nil {
			t.Fatal(err)
		}
	}
	nc, err := nats.Connect(natsURL[1], opts...)
	if err != nil {
		t.Fatal(err)
	}
	s.nc = nc
	s.inspect = asynq.NewInspector(asynq.RedisClientOpt{Addr: redisAddr[1]})

	for i, line := range c.want {
		if strings.HasPrefix(line, "allot dev is running") {
			return c.want[i:]
		}
	}
	return c.want
}

// stopDev stops allot dev as Ctrl-C does and checks it stopped cleanly.
func (s *session) stopDev() {
	d := s.dev
	if d == nil {
		return
	}
	s.dev = nil
	if s.inspect != nil {
		_ = s.inspect.Close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	d.cancel()
	select {
	case code := <-d.done:
		if code != 0 || !strings.Contains(d.log.String(), "allot dev: stopped") {
			s.t.Errorf("allot dev exited %d after Ctrl-C, want 0 and a clean stop:\n%s", code, tail(d.log.String(), 20))
		}
	case <-time.After(30 * time.Second):
		s.t.Error("allot dev did not stop within 30s of Ctrl-C")
	}
}

// settle waits until every consumer of the streams has acked all it was
// given and asynq has no task pending, active or to retry.
func (s *session) settle(c transcriptCommand) {
	t := s.t
	js, err := jetstream.New(s.nc)
	if err != nil {
		t.Fatal(err)
	}
	var busy string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if busy = s.busy(t.Context(), js); busy == "" {
			return
		}
	}
	t.Fatalf("README.md:%d: after $ %s the stack is still busy after 20s: %s\n%s", c.line, c.text, busy, tail(s.dev.log.String(), 20))
}

// busy says what is still at work, or "" when nothing is.
func (s *session) busy(ctx context.Context, js jetstream.JetStream) string {
	for name := range js.StreamNames(ctx).Name() {
		st, err := js.Stream(ctx, name)
		if err != nil {
			return err.Error()
		}
		consumers := st.ListConsumers(ctx)
		for info := range consumers.Info() {
			if info.NumPending > 0 || info.NumAckPending > 0 {
				return fmt.Sprintf("consumer %s of %s: %d pending, %d unacked", info.Name, name, info.NumPending, info.NumAckPending)
			}
		}
		if err := consumers.Err(); err != nil {
			return err.Error()
		}
	}
	queues, err := s.inspect.Queues()
	if err != nil {
		return err.Error()
	}
	for _, q := range queues {
		info, err := s.inspect.GetQueueInfo(q)
		if err != nil {
			return err.Error()
		}
		if n := info.Pending + info.Active + info.Retry; n > 0 {
			return fmt.Sprintf("asynq queue %s: %d pending, %d active, %d to retry", q, info.Pending, info.Active, info.Retry)
		}
	}
	return ""
}

// waitOutHourBoundary sleeps past the next hour boundary when it is less
// than margin away.
func waitOutHourBoundary(t *testing.T, margin time.Duration) {
	t.Helper()
	next := time.Now().Truncate(time.Hour).Add(time.Hour)
	if wait := time.Until(next); wait < margin {
		t.Logf("waiting %s for the hour boundary: the example service's window is an hour", wait.Round(time.Millisecond))
		time.Sleep(wait + 500*time.Millisecond)
	}
}
