package notifier

import (
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
)

// The queue collector reads the notifier's queues through asynq's
// Inspector: gauges by state, cumulative counters, no other deployment's
// queue, and promlint has nothing to say about it.
func TestQueueCollector(t *testing.T) {
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	client := asynq.NewClientFromRedisClient(rdb)
	for _, q := range []string{"mail", "mail", "theirs"} {
		if _, err := client.Enqueue(asynq.NewTask("t", nil), asynq.Queue(q)); err != nil {
			t.Fatal(err)
		}
	}
	inspector := asynq.NewInspectorFromRedisClient(rdb)
	if err := inspector.PauseQueue("mail"); err != nil {
		t.Fatal(err)
	}
	c := newQueueCollector(inspector, map[string]int{"mail": 2, "chores": 1})

	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	want := `
# HELP asynq_queue_paused 1 while the queue is paused (its tasks wait), else 0.
# TYPE asynq_queue_paused gauge
asynq_queue_paused{queue="chores"} 0
asynq_queue_paused{queue="mail"} 1
# HELP asynq_queue_size Tasks in the queue in every state but completed.
# TYPE asynq_queue_size gauge
asynq_queue_size{queue="chores"} 0
asynq_queue_size{queue="mail"} 2
# HELP asynq_queue_tasks Tasks in the queue by state (pending, active, scheduled, retry, archived, completed, aggregating).
# TYPE asynq_queue_tasks gauge
asynq_queue_tasks{queue="chores",state="active"} 0
asynq_queue_tasks{queue="chores",state="aggregating"} 0
asynq_queue_tasks{queue="chores",state="archived"} 0
asynq_queue_tasks{queue="chores",state="completed"} 0
asynq_queue_tasks{queue="chores",state="pending"} 0
asynq_queue_tasks{queue="chores",state="retry"} 0
asynq_queue_tasks{queue="chores",state="scheduled"} 0
asynq_queue_tasks{queue="mail",state="active"} 0
asynq_queue_tasks{queue="mail",state="aggregating"} 0
asynq_queue_tasks{queue="mail",state="archived"} 0
asynq_queue_tasks{queue="mail",state="completed"} 0
asynq_queue_tasks{queue="mail",state="pending"} 2
asynq_queue_tasks{queue="mail",state="retry"} 0
asynq_queue_tasks{queue="mail",state="scheduled"} 0
# HELP asynq_tasks_failed_total Task runs of the queue that failed since the queue was created.
# TYPE asynq_tasks_failed_total counter
asynq_tasks_failed_total{queue="chores"} 0
asynq_tasks_failed_total{queue="mail"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "asynq_queue_paused", "asynq_queue_size", "asynq_queue_tasks", "asynq_tasks_failed_total"); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(c); n != 2*(7+6) {
		t.Errorf("%d series, want 13 for each of the two queues", n)
	}

	// Redis gone: the scrape reports the error instead of zeros.
	mr.Close()
	reg := prometheus.NewRegistry()
	reg.MustRegister(c)
	if _, err := reg.Gather(); err == nil || !strings.Contains(err.Error(), "list asynq queues") {
		t.Errorf("gather without Redis: %v", err)
	}
}
