package service_test

import (
	"testing"

	"github.com/allot/allot/pkg/service"
)

func TestNewRegistry(t *testing.T) {
	reg := service.NewRegistry()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{"go_goroutines", "go_memstats_alloc_bytes", "process_start_time_seconds"} {
		if !got[name] {
			t.Errorf("registry lacks %s", name)
		}
	}
	if service.NewRegistry() == reg {
		t.Error("NewRegistry returned the same registry twice")
	}
}
