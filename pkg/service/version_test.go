package service

import (
	"context"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestBuildInfo(t *testing.T) {
	const rev = "6189221620362315aaaaaaaaaaaaaaaaaaaaaaaa"
	checkout := func(modified string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: rev}, {Key: "vcs.time", Value: "2026-11-20T10:00:00Z"}, {Key: "vcs.modified", Value: modified},
		}}
	}
	platform := runtime.GOOS + "/" + runtime.GOARCH
	for _, tc := range []struct {
		name                     string
		info                     *debug.BuildInfo
		version, revision, dirty string // linked
		want                     BuildInfo
		wantString               string
	}{
		{name: "a module release", info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.3.1"}},
			want:       BuildInfo{Version: "0.3.1", GoVersion: "go1.26.0", Platform: platform},
			wantString: "0.3.1 (no VCS revision) go1.26.0 " + platform},
		{name: "a pseudo-version of a modified checkout", info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "v0.0.0-20261120100000-618922162036+dirty"}},
			want: BuildInfo{Version: "0.0.0-20261120100000-618922162036+dirty", GoVersion: "go1.26.0", Platform: platform}},
		{name: "a checkout", info: checkout("false"),
			want:       BuildInfo{Version: "0.0.0-dev+618922162036", Revision: rev, Time: "2026-11-20T10:00:00Z", GoVersion: "go1.26.0", Platform: platform},
			wantString: "0.0.0-dev+618922162036 (618922162036, 2026-11-20T10:00:00Z) go1.26.0 " + platform},
		{name: "a checkout with changes", info: checkout("true"),
			want:       BuildInfo{Version: "0.0.0-dev+618922162036.dirty", Revision: rev, Modified: true, Time: "2026-11-20T10:00:00Z", GoVersion: "go1.26.0", Platform: platform},
			wantString: "0.0.0-dev+618922162036.dirty (618922162036, modified, 2026-11-20T10:00:00Z) go1.26.0 " + platform},
		{name: "linked over the build information", info: checkout("true"), version: "v0.2.0", revision: "abc123", dirty: "false",
			want:       BuildInfo{Version: "0.2.0", Revision: "abc123", Time: "2026-11-20T10:00:00Z", GoVersion: "go1.26.0", Platform: platform},
			wantString: "0.2.0 (abc123, 2026-11-20T10:00:00Z) go1.26.0 " + platform},
		{name: "linked into an image, without VCS information", info: &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Version: "(devel)"}},
			version: "0.2.0-rc.1", revision: rev,
			want: BuildInfo{Version: "0.2.0-rc.1", Revision: rev, GoVersion: "go1.26.0", Platform: platform}},
		{name: "git describe, linked", info: nil, version: "v0.1.0-3-g6189221-dirty", revision: rev, dirty: "true",
			want: BuildInfo{Version: "0.1.0-3-g6189221-dirty", Revision: rev, Modified: true, GoVersion: runtime.Version(), Platform: platform}},
		{name: "only a revision linked", info: nil, revision: rev,
			want: BuildInfo{Version: "0.0.0-dev+618922162036", Revision: rev, GoVersion: runtime.Version(), Platform: platform}},
		{name: "not a semantic version, linked", info: nil, version: "latest build/2",
			want: BuildInfo{Version: "0.0.0-unknown+latest-build-2", GoVersion: runtime.Version(), Platform: platform}},
		{name: "nothing known", info: nil,
			want:       BuildInfo{Version: "0.0.0-dev", GoVersion: runtime.Version(), Platform: platform},
			wantString: "0.0.0-dev (no VCS revision) " + runtime.Version() + " " + platform},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := buildInfo(tc.info, tc.version, tc.revision, tc.dirty)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("(-want +got)\n%s", diff)
			}
			if !semverRE.MatchString(got.Version) {
				t.Errorf("version %q is not a semantic version", got.Version)
			}
			if tc.wantString != "" && got.String() != tc.wantString {
				t.Errorf("String() = %q, want %q", got.String(), tc.wantString)
			}
		})
	}
}

// allot_build_info is 1 with the build's labels, on every registry
// NewRegistry makes.
func TestBuildInfoMetric(t *testing.T) {
	b := BuildInfo{Version: "0.2.0", Revision: "abc123", GoVersion: "go1.26.0"}
	want := `
# HELP allot_build_info Always 1; its labels say what the binary was built from: version (semantic), VCS revision, Go version.
# TYPE allot_build_info gauge
allot_build_info{go_version="go1.26.0",revision="abc123",version="0.2.0"} 1
`
	reg := prometheus.NewRegistry()
	reg.MustRegister(newBuildInfoGauge(b))
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}

	// NewRegistry's, from this binary's Build.
	b = Build()
	want = strings.NewReplacer("abc123", "unknown", "0.2.0", b.Version, "go1.26.0", b.GoVersion).Replace(want)
	if b.Revision != "" {
		want = strings.Replace(want, `revision="unknown"`, `revision="`+b.Revision+`"`, 1)
	}
	if err := testutil.GatherAndCompare(NewRegistry(), strings.NewReader(want), "allot_build_info"); err != nil {
		t.Error(err)
	}
}

// -version prints the build and returns before reading any
// configuration or connecting anywhere.
func TestRunVersion(t *testing.T) {
	var stdout, stderr strings.Builder
	getenv := func(name string) string {
		if name == "ALLOT_CONFIG" {
			return "/nonexistent/allot.yaml" // would fail the load
		}
		return ""
	}
	started := false
	start := func(context.Context, Deps) (func(context.Context) error, error) { started = true; return nil, nil }
	if err := Run(t.Context(), "meter", []string{"-version"}, getenv, &stdout, &stderr, start); err != nil {
		t.Fatal(err)
	}
	if want := "meter " + Build().String() + "\n"; stdout.String() != want || started {
		t.Errorf("stdout %q (started %v), want %q", stdout.String(), started, want)
	}
	if stderr.Len() != 0 {
		t.Errorf("stderr: %q", stderr.String())
	}
}
