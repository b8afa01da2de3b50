package mutex_test

import (
	"context"
	"fmt"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/allot/allot/pkg/mutex"
)

func Example() {
	srv, err := miniredis.Run() // a real server in production
	if err != nil {
		fmt.Println(err)
		return
	}
	defer srv.Close()
	client := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer client.Close()

	locker, err := mutex.New(client, mutex.Options{Registerer: prometheus.NewRegistry()})
	if err != nil {
		fmt.Println(err)
		return
	}
	ctx := context.Background()
	opts := mutex.LockOptions{TTL: 10 * time.Second, MaxWait: 30 * time.Second}

	// Run a function under the lock; its context ends if the lock is lost.
	err = locker.WithLock(ctx, "migrations", opts, func(ctx context.Context) error {
		fmt.Println("migrating")
		return nil
	})
	fmt.Println("WithLock:", err)

	// Or hold the lock by hand, and hand the fencing token to the resource.
	lock, err := locker.TryAcquire(ctx, "reaper", opts)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("fencing token:", lock.FencingToken())
	_, err = locker.TryAcquire(ctx, "reaper", opts)
	fmt.Println(err)
	fmt.Println("release:", lock.Release(ctx))
	fmt.Println(lock.Release(ctx))

	// Output:
	// migrating
	// WithLock: <nil>
	// fencing token: 1
	// mutex: acquire "reaper": not acquired
	// release: <nil>
	// mutex: release "reaper": not held
}
