package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/allot/allot/pkg/events"
	"github.com/nats-io/nats.go"
)

func publishCommand() command {
	return command{
		name:    "publish",
		summary: "publish one usage event from flags, or many from a JSON Lines file",
		usage: `Usage: allot publish -uid UID -metric NAME [-value N] [-label k=v]...
       allot publish -file events.jsonl   (or -file - for stdin)

Publishes usage events to the USAGE stream and waits for the stream's ack.
An event that repeats an earlier id is reported as a duplicate and counts
once. Each line of a file is one event in CloudEvents JSON; id, source,
time, specversion and type may be left out and are filled in.

Examples:
  allot publish -uid u-42 -metric photo_daily_total
  allot publish -uid u-42 -metric api_calls_total -value 3 -label resource=photo
  echo '{"subject":"u-42","data":{"metric":"photo_daily_total","value":1}}' | allot publish -file -`,
		run: runPublish,
	}
}

// labelFlags collects repeated -label k=v flags.
type labelFlags map[string]string

func (l labelFlags) String() string { return fmt.Sprint(map[string]string(l)) }

func (l labelFlags) Set(s string) error {
	k, v, ok := strings.Cut(s, "=")
	if !ok || k == "" {
		return fmt.Errorf("want name=value, got %q", s)
	}
	l[k] = v
	return nil
}

func runPublish(ctx context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	var cf clientFlags
	cf.register(fs, env)
	uid := fs.String("uid", "", "the user the usage belongs to")
	metric := fs.String("metric", "", "the metric used, e.g. photo_daily_total")
	value := newNumberFlag("1")
	fs.Var(value, "value", "how much was used: a `number` from -1e15 to 1e15 with at most 6 decimal places (below 0 for a gauge only)")
	id := fs.String("id", "", "the event id, the idempotency key (default: a new UUIDv7)")
	source := fs.String("source", "allot-cli", "the publishing app")
	file := fs.String("file", "", "publish every line of this JSON Lines file; - reads stdin")
	window := fs.Int("window", 1024, "with -file: events in flight at once")
	show := fs.Int("show", 100, "with -file: print at most this many refused or failed lines (0: all of them)")
	labels := labelFlags{}
	fs.Var(labels, "label", "a label name=value (repeatable)")
	if err := parse(fs, args, false); err != nil {
		return err
	}
	if *file == "" && (*uid == "" || *metric == "") {
		return usagef("-uid and -metric are required (or -file)")
	}
	if *file != "" && (*uid != "" || *metric != "" || *id != "" || len(labels) > 0) {
		return usagef("-file cannot be combined with -uid, -metric, -id or -label")
	}
	if *window < 1 || *window > 65536 {
		return usagef("-window must be between 1 and 65536")
	}
	if *show < 0 {
		return usagef("-show must be >= 0 (0 prints every problem)")
	}
	v, err := value.value("data.value", events.ValueRange)
	if *file == "" && err != nil {
		return err
	}
	cfg, nc, err := cf.load(env)
	if err != nil {
		return err
	}
	defer nc.Close()
	opts := events.PublisherOptions{Subjects: cfg.Subjects, Source: *source}

	if *file == "" {
		ev := events.NewUsage(*uid, *metric, v)
		ev.ID = *id
		if len(labels) > 0 {
			ev.Data.Labels = labels
		}
		err := publishOne(ctx, env, nc, opts, ev, cf.timeout)
		if errors.Is(err, events.ErrNoStream) {
			return fmt.Errorf("%w; this is NATS %s", err, cf.target)
		}
		return err
	}
	in := env.stdin
	name := "stdin"
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in, name = f, *file
	}
	err = publishFile(ctx, env, nc, events.AsyncOptions{PublisherOptions: opts, Window: *window, AckTimeout: cf.timeout}, in, name, *show)
	if errors.Is(err, events.ErrNoStream) {
		return fmt.Errorf("%w; this is NATS %s", err, cf.target)
	}
	return err
}

func publishOne(ctx context.Context, env *cliEnv, nc *nats.Conn, opts events.PublisherOptions, ev events.Event, timeout time.Duration) error {
	pub, err := events.NewPublisher(nc, opts)
	if err != nil {
		return err
	}
	pe, err := pub.Prepare(ev)
	if err != nil {
		return err // refused before the wire, naming the field
	}
	ev = pe.Event()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	ack, err := pub.PublishPrepared(ctx, pe)
	if err != nil {
		return err
	}
	if ack.Duplicate {
		fmt.Fprintf(env.stdout, "duplicate: event %s was already in %s (seq %d); it counts once\n", ev.ID, ack.Stream, ack.Sequence)
		return nil
	}
	fmt.Fprintf(env.stdout, "published event %s to %s: %s seq %d\n", ev.ID, opts.Subjects.UsageFor(ev.Subject), ack.Stream, ack.Sequence)
	return nil
}

// maxTracked bounds the memory spent remembering which line each event
// came from; failures past it are reported by event id alone.
const maxTracked = 1 << 20

// lineError is one line of the input that was refused or failed.
type lineError struct {
	line int
	err  error
}

// problems keeps the refused and failed lines to report: the first show
// of them (all when show is 0), and how many there were.
type problems struct {
	show  int
	kept  []lineError
	count int
	// noStream is set when a line failed because no stream captures its
	// subject: the command's error then says how to create the streams.
	noStream bool
}

func (p *problems) add(e lineError) {
	p.count++
	if p.show == 0 || len(p.kept) < p.show {
		p.kept = append(p.kept, e)
	}
	if errors.Is(e.err, events.ErrNoStream) {
		p.noStream = true
	}
}

// print writes one line per kept problem, and how many were left out.
func (p *problems) print(w io.Writer) {
	for _, e := range p.kept {
		if e.line == 0 {
			fmt.Fprintf(w, "  %v\n", oneLine(e.err))
			continue
		}
		fmt.Fprintf(w, "  line %d: %v\n", e.line, oneLine(e.err))
	}
	if left := p.count - len(p.kept); left > 0 {
		fmt.Fprintf(w, "  (%d more %s not shown, %d in all; -show 0 prints every one)\n", left, plural(left, "problem", "problems"), p.count)
	}
}

// plural returns one when n is 1 and many otherwise.
func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// publishFile publishes every line of in, with a progress line and a
// summary. Lines that are not valid events are refused and reported with
// their number; the rest are still published. The first show problems
// are printed (all when show is 0), then how many more there were.
func publishFile(ctx context.Context, env *cliEnv, nc *nats.Conn, opts events.AsyncOptions, in io.Reader, name string, show int) error {
	pub, err := events.NewAsyncPublisher(nc, opts)
	if err != nil {
		return err
	}
	var lineNo, refusedN atomic.Int64
	probs := &problems{show: show}
	lineOf := map[string]int{} // event id -> line, to name failed lines
	start := time.Now()
	stopProgress := startProgress(env.stderr, func() string {
		st := pub.Stats()
		rate := float64(st.Acked) / time.Since(start).Seconds()
		return fmt.Sprintf("read %d lines: %d accepted, %d duplicate, %d refused, %d failed, %d in flight (%.0f events/s)",
			lineNo.Load(), st.Acked-st.Duplicates, st.Duplicates, refusedN.Load(), st.Failed, st.InFlight, rate)
	})

	r := bufio.NewReaderSize(in, 64<<10)
	var readErr error
	for ctx.Err() == nil {
		line, tooLong, err := readLine(r, events.DefaultMaxEventBytes)
		if len(line) > 0 || tooLong {
			n := int(lineNo.Add(1))
			switch pe, perr := parseLine(line, tooLong, pub); {
			case perr != nil:
				refusedN.Add(1)
				probs.add(lineError{n, perr})
			default:
				if len(lineOf) < maxTracked {
					lineOf[pe.Event().ID] = n
				}
				if perr := pub.PublishPrepared(ctx, pe); perr != nil {
					refusedN.Add(1)
					probs.add(lineError{n, perr})
				}
			}
		} else if err == nil {
			lineNo.Add(1) // a blank line
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			readErr = fmt.Errorf("reading %s: %w", name, err)
			break
		}
	}
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), opts.AckTimeout*time.Duration(opts.MaxRetries+2))
	defer cancel()
	failed, closeErr := pub.Close(flushCtx)
	stopProgress()

	st := pub.Stats()
	refused := int(refusedN.Load())
	for _, f := range failed {
		probs.add(lineError{lineOf[f.Event.ID], fmt.Errorf("event %s: %w", f.Event.ID, f.Err)})
	}
	lines, accepted, dups := int(lineNo.Load()), int(st.Acked-st.Duplicates), int(st.Duplicates)
	fmt.Fprintf(env.stdout, "%s: %d %s: %d %s accepted, %d %s, %d refused, %d failed, in %s\n",
		name, lines, plural(lines, "line", "lines"), accepted, plural(accepted, "event", "events"),
		dups, plural(dups, "duplicate", "duplicates"), refused, len(failed), time.Since(start).Round(time.Millisecond))
	probs.print(env.stdout)
	switch {
	case readErr != nil:
		return readErr
	case ctx.Err() != nil:
		return fmt.Errorf("interrupted after %d lines; the summary above counts what was sent", lineNo.Load())
	case closeErr != nil:
		return fmt.Errorf("waiting for acks: %w", closeErr)
	case probs.noStream:
		return fmt.Errorf("%d of %d %s not published: %w (create the streams with 'allot streams')",
			probs.count, lines, plural(lines, "line was", "lines were"), events.ErrNoStream)
	case probs.count > 0:
		return fmt.Errorf("%d of %d %s not published", probs.count, lines, plural(lines, "line was", "lines were"))
	}
	return nil
}

// readLine reads one line without its newline. A line longer than max
// is consumed and reported as tooLong instead of being returned.
func readLine(r *bufio.Reader, max int) (line []byte, tooLong bool, err error) {
	for {
		chunk, err := r.ReadSlice('\n')
		if len(line)+len(chunk) > max+2 {
			tooLong = true
			line = nil
		} else if !tooLong {
			line = append(line, chunk...)
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		return []byte(strings.TrimRight(string(line), "\r\n")), tooLong, err
	}
}

// parseLine decodes one line and prepares its event with pub, once: the
// id is filled in now, so a failure can be traced to its line, and what
// is sent is what was checked here.
func parseLine(line []byte, tooLong bool, pub *events.AsyncPublisher) (events.Prepared, error) {
	if tooLong {
		return events.Prepared{}, fmt.Errorf("event: longer than %d bytes", events.DefaultMaxEventBytes)
	}
	ev, err := events.DecodeDraft(line, 0)
	if err != nil {
		return events.Prepared{}, err
	}
	return pub.Prepare(ev)
}

// startProgress prints status() every second: rewriting one line on a
// terminal, a line every 5 seconds otherwise. The returned func stops it.
func startProgress(w io.Writer, status func() string) (stop func()) {
	tty := isTerminal(w)
	every := 5 * time.Second
	if tty {
		every = time.Second
	}
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				if tty {
					fmt.Fprint(w, "\r\033[K")
				}
				return
			case <-t.C:
				if tty {
					fmt.Fprintf(w, "\r\033[K%s", status())
				} else {
					fmt.Fprintln(w, status())
				}
			}
		}
	}()
	return func() {
		close(done)
		<-finished
	}
}
