package main

import (
	"runtime"
	"runtime/debug"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for _, tc := range []struct {
		name string
		info *debug.BuildInfo
		want string
	}{
		{"a release", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.3.1"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "6189221620362315aaaaaaaaaaaaaaaaaaaaaaaa"}, {Key: "vcs.time", Value: "2026-11-20T10:00:00Z"}, {Key: "vcs.modified", Value: "false"},
		}}, "allot v0.3.1 (618922162036, 2026-11-20T10:00:00Z) go1.26.0 linux/amd64\n"},
		{"a checkout with changes", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "6189221"}, {Key: "vcs.modified", Value: "true"},
		}}, "allot (devel) (6189221, modified) go1.26.0 linux/amd64\n"},
		{"no VCS stamp", &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}},
			"allot (devel) (no VCS revision) go1.26.0 linux/amd64\n"},
		{"no build information", nil, "allot: no build information in this binary; " + runtime.Version() + " linux/amd64\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var b strings.Builder
			printVersion(&b, tc.info, "linux/amd64")
			if b.String() != tc.want {
				t.Errorf("got  %q\nwant %q", b.String(), tc.want)
			}
		})
	}

	r := runCLI(t, nil, "", "version")
	if r.code != 0 || !strings.HasPrefix(r.stdout, "allot ") || !strings.Contains(r.stdout, runtime.Version()) || !isOneLine(r.stdout) {
		t.Errorf("allot version: %+v", r)
	}
	if r := runCLI(t, nil, "", "version", "extra"); r.code != 2 {
		t.Errorf("allot version extra: %+v", r)
	}
}
