//go:build !unix

package bench_test

import "time"

func processCPU() (time.Duration, bool) { return 0, false }
