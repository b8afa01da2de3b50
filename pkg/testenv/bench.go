package testenv

import (
	"os"
	"strconv"
	"time"
)

// BenchTurns is how long each phase of an interleaved benchmark runs
// (ALLOT_BENCH_DURATION, default 2s) and for how many rounds the phases
// take turns (ALLOT_BENCH_ROUNDS, default 3): the knobs every
// side-by-side benchmark reads, so a longer run on a quiet machine is one
// pair of variables for all of them. A value that does not parse, or is
// not positive, keeps the default.
func BenchTurns() (d time.Duration, rounds int) {
	d, rounds = 2*time.Second, 3
	if v, err := time.ParseDuration(os.Getenv("ALLOT_BENCH_DURATION")); err == nil && v > 0 {
		d = v
	}
	if v, err := strconv.Atoi(os.Getenv("ALLOT_BENCH_ROUNDS")); err == nil && v > 0 {
		rounds = v
	}
	return d, rounds
}
