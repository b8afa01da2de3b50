package service

import (
	"fmt"
	"regexp"
	"runtime"
	"runtime/debug"
	"strings"
)

// What the build says it is, set by the linker; empty, the module build
// information says. The Makefile and the Dockerfile set them:
//
//	-ldflags "-X github.com/allot/allot/pkg/service.version=0.2.0
//	          -X github.com/allot/allot/pkg/service.revision=<commit>
//	          -X github.com/allot/allot/pkg/service.modified=true"
//
// They are written by the linker only, never by the program.
var (
	version  string
	revision string
	modified string
)

// BuildInfo is what a binary was built from. Every place that shows a
// version reads it from here: `allot version`, each binary's -version,
// the allot_build_info metric and the micro services' version.
type BuildInfo struct {
	// Version is a semantic version without the leading v, as micro
	// requires: the linked version, else the main module's version, else,
	// for a build from a checkout, 0.0.0-dev with the revision and
	// "dirty" as build metadata (0.0.0-dev+618922162036.dirty).
	Version string
	// Revision is the VCS commit; empty when unknown.
	Revision string
	// Modified says the checkout had uncommitted changes.
	Modified bool
	// Time is the commit's time (RFC 3339), when the build stamped it.
	Time string
	// GoVersion is the Go release that built the binary.
	GoVersion string
	// Platform is GOOS/GOARCH.
	Platform string
}

// Build returns what this binary was built from: the values the linker
// set, over the module build information (runtime/debug.ReadBuildInfo:
// the main module's version, vcs.revision, vcs.time, vcs.modified).
func Build() BuildInfo {
	info, _ := debug.ReadBuildInfo()
	return buildInfo(info, version, revision, modified)
}

// buildInfo combines the build information (nil: none) with the linked
// values.
func buildInfo(info *debug.BuildInfo, linkedVersion, linkedRevision, linkedModified string) BuildInfo {
	b := BuildInfo{GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	v := linkedVersion
	if info != nil {
		if info.GoVersion != "" {
			b.GoVersion = info.GoVersion
		}
		if v == "" && info.Main.Version != "(devel)" {
			v = info.Main.Version
		}
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				b.Revision = s.Value
			case "vcs.time":
				b.Time = s.Value
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if linkedRevision != "" {
		b.Revision = linkedRevision
	}
	if linkedModified != "" {
		b.Modified = linkedModified == "true"
	}
	b.Version = semver(strings.TrimPrefix(v, "v"), b.shortRevision(), b.Modified)
	return b
}

// semverRE is the expression semver.org suggests, which micro checks a
// service's version with.
var semverRE = regexp.MustCompile(`^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$`)

// semver returns v when it is a semantic version. No version is
// 0.0.0-dev, with rev and "dirty" as build metadata; anything else
// linked in (a tag such as "latest") is kept as the build metadata of
// 0.0.0-unknown, so it still shows.
func semver(v, rev string, dirty bool) string {
	switch {
	case v != "" && semverRE.MatchString(v):
		return v
	case v != "":
		return withMetadata("0.0.0-unknown", strings.Split(v, ".")...)
	}
	var meta []string
	if rev != "" {
		meta = append(meta, rev)
	}
	if dirty {
		meta = append(meta, "dirty")
	}
	return withMetadata("0.0.0-dev", meta...)
}

// withMetadata appends the build metadata identifiers ids to v, each
// cut to the characters semver allows; empty ones are dropped.
func withMetadata(v string, ids ...string) string {
	var kept []string
	for _, id := range ids {
		id = strings.Map(func(r rune) rune {
			if r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' {
				return r
			}
			return '-'
		}, id)
		if id != "" {
			kept = append(kept, id)
		}
	}
	if len(kept) == 0 {
		return v
	}
	return v + "+" + strings.Join(kept, ".")
}

// shortRevision is the revision's first 12 characters.
func (b BuildInfo) shortRevision() string {
	if len(b.Revision) > 12 {
		return b.Revision[:12]
	}
	return b.Revision
}

// String is one line about the build: "<version> (<revision>[, modified][,
// <time>]) <go version> <platform>", the revision cut to 12 characters.
func (b BuildInfo) String() string {
	vcs := "no VCS revision"
	if b.Revision != "" {
		vcs = b.shortRevision()
		if b.Modified {
			vcs += ", modified"
		}
		if b.Time != "" {
			vcs += ", " + b.Time
		}
	}
	return fmt.Sprintf("%s (%s) %s %s", b.Version, vcs, b.GoVersion, b.Platform)
}
