package service_test

import (
	"errors"
	"testing"

	"github.com/allot/allot/pkg/service"
)

func TestCheckNATSVersion(t *testing.T) {
	for _, tc := range []struct {
		version string
		ok      bool
	}{
		{"2.10.0", true},
		{"2.10.22", true},
		{"2.11.0-RC.1", true},
		{"2.15.2", true},
		{"v2.12.1", true},
		{"2.10.0+build.7", true},
		{"3.0.0", true},
		{"2.9.10", false},
		{"2.9.99", false},
		{"2.2.0", false},
		{"1.99.99", false},
		{"2.10.0-beta.1", true}, // the 2.10 line, as its server reports it
		// What no server should report is refused, never taken as new.
		{"", false},
		{"2.10", false},
		{"2.10.0.1", false},
		{"2.x.0", false},
		{"2.+10.0", false},
		{"2.-1.0", false},
		{"2.010.0", false},
		{"two.ten.zero", false},
		{"99999999999999999999.0.0", false},
	} {
		err := service.CheckNATSVersion(tc.version)
		if tc.ok && err != nil {
			t.Errorf("CheckNATSVersion(%q) = %v, want nil", tc.version, err)
		}
		if !tc.ok && !errors.Is(err, service.ErrNATSVersion) {
			t.Errorf("CheckNATSVersion(%q) = %v, want ErrNATSVersion", tc.version, err)
		}
	}
	err := service.CheckNATSVersion("2.9.10")
	if want := "service: unsupported nats-server: it runs 2.9.10; allot needs 2.10.0 or later"; err == nil || err.Error() != want {
		t.Errorf("error line = %q, want %q", err, want)
	}
}
