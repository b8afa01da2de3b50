package events

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
)

// WatchOptions configures a [RegistryWatch]. The zero value is ready to
// use.
type WatchOptions struct {
	// Resync reloads the instances this often even when no change says
	// to (default 1m; negative never): the last change of a quiet name
	// may be lost without a later one to reveal the gap.
	Resync time.Duration
}

// watchBuffer is the most changes kept while a load is under way; past
// it they are dropped and the load is followed by another.
const watchBuffer = 10000

// maxReloadWait bounds the wait between reloads that keep failing or
// keep finding a gap straight away.
const maxReloadWait = time.Second

// RegistryWatch answers finds of one service name from memory: it loads
// the instances once (registry.find.<name>, which carries the name's
// change sequence S), then applies the change events of
// registry.changed.<name> numbered S+1, S+2, ... as they arrive. A
// change that skips a number, one it cannot read, or one without a
// number (an older registry) means it may have missed something: it
// stops answering from memory and reloads. While it is not current Find
// asks the registry instead, so it never answers from a state it knows to
// be incomplete. It is safe for concurrent use; Close stops it.
//
// An instance leaves the watch when its deregistered or expired event
// arrives. One whose TTL has run out but that the registry's reaper has
// not yet announced (at most registry.reap_interval) is still listed,
// as the change feed has not said it is gone.
type RegistryWatch struct {
	c    *Client
	name string
	opts WatchOptions
	log  *slog.Logger
	sub  *nats.Subscription

	// reply is the current answer; nil while the watch is not current.
	// Readers take it without a lock: it is replaced, never changed.
	reply atomic.Pointer[FindReply]

	mu       sync.Mutex
	insts    map[string]Instance // by id
	seq      uint64              // the last change applied
	ready    bool                // insts is the state at seq
	loading  bool                // a load is under way: changes are buffered
	buffered []RegistryChange
	stale    bool // a change was dropped or unreadable during the load: load again

	kick   chan struct{} // a reload is wanted (cap 1)
	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	reloads, gaps, malformed, applied, fallbacks atomic.Uint64
}

// WatchStats counts what a watch did.
type WatchStats struct {
	Reloads   uint64 // loads from the registry, the first included
	Gaps      uint64 // changes that skipped a number (or had none)
	Malformed uint64 // change events it could not read or apply
	Applied   uint64 // changes applied in memory
	Fallbacks uint64 // finds sent to the registry while not current
	Seq       uint64 // the last change applied
	Current   bool   // finds are answered from memory
}

// WatchRegistry starts watching service name: it subscribes to its
// change events, then loads its instances (bounded by ctx). A failed
// first load is retried in the background, Find asking the registry
// meanwhile; an error is returned only for a bad name or a failed
// subscription.
func (c *Client) WatchRegistry(ctx context.Context, name string, opts WatchOptions) (*RegistryWatch, error) {
	if err := ValidateToken("name", name); err != nil {
		return nil, err
	}
	if opts.Resync == 0 {
		opts.Resync = time.Minute
	}
	w := &RegistryWatch{c: c, name: name, opts: opts, log: c.log.With("watch", name),
		insts: map[string]Instance{}, kick: make(chan struct{}, 1), done: make(chan struct{})}
	// Subscribed, and the server knows it, before the load: a change
	// made after the load's read is then either in the load or buffered.
	sub, err := c.conn.Subscribe(c.subj.RegistryChanged(name), w.onChange)
	if err != nil {
		return nil, fmt.Errorf("events: watch %s: subscribe: %w", name, err)
	}
	fctx, cancelFlush := c.bound(ctx)
	defer cancelFlush()
	if err := c.conn.FlushWithContext(fctx); err != nil {
		_ = sub.Unsubscribe()
		return nil, fmt.Errorf("events: watch %s: subscribe: %w", name, err)
	}
	w.sub = sub
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	w.cancel = cancel
	if err := w.load(ctx); err != nil {
		w.log.Warn("registry watch: first load failed; finds ask the registry until one succeeds", "err", err)
		w.wantReload()
	}
	go w.loop(lctx)
	return w, nil
}

// Find returns the instances of the watched name with their URL map,
// from memory when the watch is current, else from the registry. The
// reply is shared: treat it as read-only.
func (w *RegistryWatch) Find(ctx context.Context) (FindReply, error) {
	if r := w.reply.Load(); r != nil {
		return *r, nil
	}
	w.fallbacks.Add(1)
	return w.c.Find(ctx, w.name)
}

// Stats returns the watch's counters.
func (w *RegistryWatch) Stats() WatchStats {
	w.mu.Lock()
	seq, current := w.seq, w.ready
	w.mu.Unlock()
	return WatchStats{Reloads: w.reloads.Load(), Gaps: w.gaps.Load(), Malformed: w.malformed.Load(),
		Applied: w.applied.Load(), Fallbacks: w.fallbacks.Load(), Seq: seq, Current: current}
}

// Close stops the watch; Find then always asks the registry.
func (w *RegistryWatch) Close() error {
	var err error
	w.once.Do(func() {
		err = w.sub.Unsubscribe()
		w.cancel()
		<-w.done
		w.mu.Lock()
		w.ready = false
		w.reply.Store(nil)
		w.mu.Unlock()
	})
	return err
}

// loop reloads when asked to and every Resync, waiting longer between
// reloads that fail or find a gap straight away.
func (w *RegistryWatch) loop(ctx context.Context) {
	defer close(w.done)
	var resync <-chan time.Time
	if w.opts.Resync > 0 {
		t := time.NewTicker(w.opts.Resync)
		defer t.Stop()
		resync = t.C
	}
	wait := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-w.kick:
		case <-resync:
		}
		if wait > 0 {
			select {
			case <-ctx.Done():
				return
			case <-time.After(wait):
			}
		}
		err := w.load(ctx)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			w.log.Warn("registry watch: reload failed", "err", err)
			w.wantReload()
		}
		if len(w.kick) > 0 { // failed, or already behind again
			wait = min(max(2*wait, 5*time.Millisecond), maxReloadWait)
		} else {
			wait = 0
		}
	}
}

// load reads the name's instances and sequence from the registry, then
// applies the changes buffered meanwhile that come after it.
func (w *RegistryWatch) load(ctx context.Context) error {
	w.mu.Lock()
	w.loading, w.buffered, w.stale = true, nil, false
	w.mu.Unlock()
	rep, err := w.c.Find(ctx, w.name)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.loading = false
	buffered := w.buffered
	w.buffered = nil
	if err != nil {
		w.invalidateLocked()
		return err
	}
	w.reloads.Add(1)
	w.insts = make(map[string]Instance, len(rep.Instances))
	for _, in := range rep.Instances {
		w.insts[in.ID] = in
	}
	w.seq, w.ready = rep.Seq, true
	w.log.Debug("registry watch loaded", "seq", rep.Seq, "instances", len(rep.Instances), "buffered", len(buffered))
	sort.SliceStable(buffered, func(i, j int) bool { return buffered[i].Seq < buffered[j].Seq })
	for _, ch := range buffered {
		if !w.applyLocked(ch) {
			return nil
		}
	}
	if w.stale {
		w.log.Info("registry watch: a change was dropped or unreadable while loading; loading again")
		w.invalidateLocked()
		return nil
	}
	w.publishLocked()
	return nil
}

// onChange takes one change event: applied at once when it is the next
// one, buffered during a load, and a reason to reload otherwise.
func (w *RegistryWatch) onChange(msg *nats.Msg) {
	ch, err := w.decode(msg.Data)
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		w.malformed.Add(1)
		w.log.Warn("registry watch: unreadable change event; reloading", "err", err)
		w.stale = w.stale || w.loading
		w.invalidateLocked()
		return
	}
	if w.loading {
		if len(w.buffered) < watchBuffer {
			w.buffered = append(w.buffered, ch)
		} else {
			w.stale = true
		}
	}
	// A resync loads while the watch is current: it keeps applying
	// changes meanwhile, so a removal is not held up by the load.
	if w.ready {
		if w.applyLocked(ch) {
			w.publishLocked()
		}
	}
}

// errChange marks a change event a watch cannot use.
var errChange = errors.New("events: registry change")

// decode reads a change event of the watched name.
func (w *RegistryWatch) decode(data []byte) (RegistryChange, error) {
	var ch RegistryChange
	if err := json.Unmarshal(data, &ch); err != nil {
		return ch, fmt.Errorf("%w: %w", errChange, err)
	}
	switch {
	case ch.Name != w.name:
		return ch, fmt.Errorf("%w: name %q on the subject of %q", errChange, ch.Name, w.name)
	case ch.ID == "":
		return ch, fmt.Errorf("%w: no id", errChange)
	}
	switch ch.Change {
	case ChangeAppeared, ChangeChanged:
		if ch.Instance == nil || ch.Instance.Name != ch.Name || ch.Instance.ID != ch.ID {
			return ch, fmt.Errorf("%w: %s of %s without its instance", errChange, ch.Change, ch.ID)
		}
	case ChangeDeregistered, ChangeExpired:
	default:
		return ch, fmt.Errorf("%w: unknown change %q", errChange, ch.Change)
	}
	return ch, nil
}

// applyLocked applies ch if it is the next change, ignores it if it is
// one already applied, and otherwise stops answering from memory and
// asks for a reload; it reports whether the state is still current.
func (w *RegistryWatch) applyLocked(ch RegistryChange) bool {
	switch {
	case ch.Seq == 0 || ch.Seq > w.seq+1:
		w.gaps.Add(1)
		w.log.Info("registry watch: missed a change; reloading", "have", w.seq, "got", ch.Seq)
		w.invalidateLocked()
		return false
	case ch.Seq <= w.seq:
		return true // in the load already
	}
	switch ch.Change {
	case ChangeAppeared, ChangeChanged:
		w.insts[ch.ID] = *ch.Instance
	default:
		delete(w.insts, ch.ID)
	}
	w.seq = ch.Seq
	w.applied.Add(1)
	return true
}

// publishLocked makes the current instances the answer of Find.
func (w *RegistryWatch) publishLocked() {
	insts := make([]Instance, 0, len(w.insts))
	for _, in := range w.insts {
		insts = append(insts, in)
	}
	sort.Slice(insts, func(i, j int) bool { return insts[i].ID < insts[j].ID })
	rep := BuildFindReply(insts, w.name)
	rep.Seq = w.seq
	w.reply.Store(&rep)
}

// invalidateLocked stops answering from memory and asks for a reload.
func (w *RegistryWatch) invalidateLocked() {
	w.ready = false
	w.reply.Store(nil)
	w.wantReload()
}

func (w *RegistryWatch) wantReload() {
	select {
	case w.kick <- struct{}{}:
	default:
	}
}
