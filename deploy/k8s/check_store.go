package k8s

import (
	"fmt"
	"strings"

	"github.com/allot/allot/pkg/events"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// checkStreamStore checks that every NATS server can hold the streams the
// allot services create. nats-server sets aside each stream's max_bytes
// against its JetStream store limit (max_file_store, or max_memory_store
// for memory streams) when the stream is created, and with a replica on
// every server each one sets aside all of them: streams whose caps add up
// to more fail to be created ("insufficient storage resources"), and the
// services with them. The file store must in turn fit its volume, or the
// volume fills before the streams do.
func (r *Rendered) checkStreamStore(p *problems, ws []Workload) {
	var streams *events.StreamConfig
	var from Workload
	for _, w := range ws {
		if !w.IsService() {
			continue
		}
		cfg, err := r.Config(w)
		if err != nil {
			continue // reported by checkService
		}
		if streams == nil || streamsReserve(cfg.Streams) > streamsReserve(*streams) {
			streams, from = &cfg.Streams, w
		}
	}
	if streams == nil {
		return
	}
	need := streamsReserve(*streams)
	for _, w := range ws {
		c, _, ok := natsContainer(w)
		if !ok {
			continue
		}
		opts, where, err := r.NATSOptions(w, true)
		if err != nil || !opts.JetStream {
			continue // reported by checkNATSAuth, or no JetStream to check
		}
		limit, key := opts.JetStreamMaxStore, "jetstream.max_file_store"
		if streams.Memory {
			limit, key = opts.JetStreamMaxMemory, "jetstream.max_memory_store"
		}
		if limit > 0 && need > limit {
			p.add(w.Object, where+": "+key, "is %s, but the streams of %s's allot.yaml reserve %s (streams: max_bytes + dead_max_bytes + notify_max_bytes) on every server: nats-server would refuse to create them", bytesOf(limit), from.Object.Name, bytesOf(need))
		}
		if streams.Memory || limit <= 0 {
			continue
		}
		if size, claim, ok := r.storeVolume(w, c, opts.StoreDir); ok && limit > size {
			p.add(w.Object, "spec.volumeClaimTemplates["+claim+"]", "requests %s, less than %s: %s (%s), so the volume fills before JetStream's limit", bytesOf(size), key, bytesOf(limit), where)
		}
	}
}

// streamsReserve is what the usage, dead-letter and notice streams set
// aside on a server; an unlimited stream (-1) sets aside nothing.
func streamsReserve(s events.StreamConfig) int64 {
	var n int64
	for _, b := range []int64{s.MaxBytes, s.DeadMaxBytes, s.NotifyMaxBytes} {
		n += max(b, 0)
	}
	return n
}

// storeVolume returns the storage request of the volume claim template
// mounted where container c keeps JetStream's files (dir).
func (r *Rendered) storeVolume(w Workload, c *corev1.Container, dir string) (int64, string, bool) {
	o, ok := r.find(w.Object.Namespace, "StatefulSet", w.Object.Name)
	if !ok {
		return 0, "", false
	}
	sts, ok := o.Value.(*appsv1.StatefulSet)
	if !ok {
		return 0, "", false
	}
	for _, m := range c.VolumeMounts {
		if dir != m.MountPath && !strings.HasPrefix(dir, strings.TrimSuffix(m.MountPath, "/")+"/") {
			continue
		}
		for _, t := range sts.Spec.VolumeClaimTemplates {
			if t.Name != m.Name {
				continue
			}
			q, ok := t.Spec.Resources.Requests[corev1.ResourceStorage]
			if !ok {
				return 0, "", false
			}
			return q.Value(), t.Name, true
		}
	}
	return 0, "", false
}

// bytesOf says n in GiB or MiB, with the exact count.
func bytesOf(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB (%d bytes)", float64(n)/(1<<30), n)
	default:
		return fmt.Sprintf("%.2f MiB (%d bytes)", float64(n)/(1<<20), n)
	}
}
