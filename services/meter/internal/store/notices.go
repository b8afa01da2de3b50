package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Notice is a threshold crossing to publish, exactly as Redis holds it
// until Confirm.
type Notice struct {
	Raw       string
	Threshold float64
	Start     time.Time
	End       time.Time
	Limit     float64
	Used      float64
}

// ParseNotices parses a pending list: "percent|start|end|limit|used"
// entries joined by ';'.
func ParseNotices(q string) ([]Notice, error) {
	var out []Notice
	for _, raw := range strings.Split(q, ";") {
		if raw == "" {
			continue
		}
		f := strings.Split(raw, "|")
		if len(f) != 5 {
			return nil, fmt.Errorf("malformed notice %q", raw)
		}
		var nums [5]float64
		for i, x := range f {
			v, err := strconv.ParseFloat(x, 64)
			if err != nil {
				return nil, fmt.Errorf("malformed notice %q: %w", raw, err)
			}
			nums[i] = v
		}
		out = append(out, Notice{
			Raw: raw, Threshold: nums[0],
			Start: msTime(int64(nums[1])), End: msTime(int64(nums[2])),
			Limit: nums[3], Used: nums[4],
		})
	}
	return out, nil
}

// Pending returns the notices of uid's grant metric that are still
// waiting to be published.
func (s *Store) Pending(ctx context.Context, uid, metric string) ([]Notice, error) {
	q, err := s.rdb.HGet(ctx, s.keys.Grant(uid, metric), "q").Result()
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read notices: %w", ErrRedis, err)
	}
	return ParseNotices(q)
}

// Confirmation names the published notices of one (uid, metric).
type Confirmation struct {
	UID, Metric string
	Notices     []Notice
}

// ConfirmAll removes the published notices of several (uid, metric)
// pairs from their pending lists in one pipelined round trip.
func (s *Store) ConfirmAll(ctx context.Context, cs []Confirmation) error {
	err := s.confirmAll(ctx, cs)
	if isNoScript(err) {
		if lerr := s.Load(ctx); lerr != nil {
			return lerr
		}
		err = s.confirmAll(ctx, cs)
	}
	return err
}

func (s *Store) confirmAll(ctx context.Context, cs []Confirmation) error {
	pipe := s.rdb.Pipeline()
	var cmds []*redis.Cmd
	for _, c := range cs {
		if len(c.Notices) == 0 {
			continue
		}
		args := make([]any, len(c.Notices))
		for i, n := range c.Notices {
			args[i] = n.Raw
		}
		cmds = append(cmds, s.confirm.EvalSha(ctx, pipe, []string{s.keys.Grant(c.UID, c.Metric)}, args...))
	}
	if len(cmds) == 0 {
		return nil
	}
	_, _ = pipe.Exec(ctx)
	for _, cmd := range cmds {
		if err := cmd.Err(); err != nil {
			if isNoScript(err) {
				return err
			}
			return fmt.Errorf("%w: confirm notices: %w", ErrRedis, err)
		}
	}
	return nil
}
