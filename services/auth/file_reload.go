package auth

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"time"
)

func (b *fileBackend) poll() {
	defer close(b.done)
	t := time.NewTicker(b.every)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			b.look()
		}
	}
}

// look reloads the file if it changed.
func (b *fileBackend) look() {
	b.looks++
	st, err := os.Stat(b.path)
	if err != nil {
		b.fail(fmt.Errorf("keys file: %w", err))
		return
	}
	stamp := fileStamp{st.ModTime(), st.Size()}
	if stamp.mod.Equal(b.stamp.mod) && stamp.size == b.stamp.size && b.looks%rehashEvery != 0 && b.problem == "" {
		return
	}
	data, err := readKeysFile(b.path)
	if err != nil {
		b.fail(err)
		return
	}
	b.stamp, b.problem = stamp, ""
	sum := sha256.Sum256(data)
	if sum == b.sum {
		return
	}
	b.sum = sum
	recs, err := parseKeysFile(b.path, data)
	if err != nil {
		b.failures.Add(1)
		b.log.Warn("the keys file is bad; keeping the keys last loaded", "path", b.path, "err", err)
		return
	}
	b.replace(byID(recs))
}

// fail logs and counts a stat or read error, once until it changes.
func (b *fileBackend) fail(err error) {
	if err.Error() == b.problem {
		return
	}
	b.problem = err.Error()
	b.failures.Add(1)
	b.log.Warn("cannot read the keys file; keeping the keys last loaded", "path", b.path, "err", err)
}

// replace swaps in keys and tells the watchers every id that changed.
func (b *fileBackend) replace(next map[string]Record) {
	b.mu.Lock()
	changed := diffKeys(b.keys, next)
	b.keys = next
	ws := make([]*watcher, 0, len(b.watchers))
	for w := range b.watchers {
		ws = append(ws, w)
	}
	b.mu.Unlock()
	b.log.Info("keys file reloaded", "path", b.path, "keys", len(next), "changed", len(changed))
	for _, id := range changed {
		for _, w := range ws {
			w.changed(id)
		}
	}
}

// diffKeys returns the ids added, removed or changed from before to
// after, sorted.
func diffKeys(before, after map[string]Record) []string {
	var out []string
	for id, o := range before {
		n, ok := after[id]
		if !ok || !sameRecord(o, n) {
			out = append(out, id)
		}
	}
	for id := range after {
		if _, ok := before[id]; !ok {
			out = append(out, id)
		}
	}
	slices.Sort(out)
	return out
}

func sameRecord(a, b Record) bool {
	ja, errA := json.Marshal(a)
	jb, errB := json.Marshal(b)
	return errA == nil && errB == nil && bytes.Equal(ja, jb)
}
