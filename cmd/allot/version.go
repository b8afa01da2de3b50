package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
)

func versionCommand() command {
	return command{
		name:    "version",
		summary: "print the version of this build: module version, VCS revision and Go version",
		usage: `Usage: allot version

Prints what this binary was built from: the module version ("(devel)" for
a build from a checkout), the VCS revision and its time, whether the
checkout had changes, and the Go version, OS and architecture.

Examples:
  allot version`,
		run: runVersion,
	}
}

func runVersion(_ context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	if err := parse(fs, args, false); err != nil {
		return err
	}
	info, _ := debug.ReadBuildInfo()
	printVersion(env.stdout, info, runtime.GOOS+"/"+runtime.GOARCH)
	return nil
}

// printVersion writes one line about the build: "allot <version>
// (<revision>[, modified], <time>) <go version> <platform>". Without build
// information (a binary built without module support), it says so.
func printVersion(w io.Writer, info *debug.BuildInfo, platform string) {
	if info == nil {
		fmt.Fprintf(w, "allot: no build information in this binary; %s %s\n", runtime.Version(), platform)
		return
	}
	version := info.Main.Version
	if version == "" {
		version = "(unknown)"
	}
	var rev, at, modified string
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.time":
			at = s.Value
		case "vcs.modified":
			if s.Value == "true" {
				modified = ", modified"
			}
		}
	}
	vcs := "no VCS revision"
	if rev != "" {
		if len(rev) > 12 {
			rev = rev[:12]
		}
		vcs = rev + modified
		if at != "" {
			vcs += ", " + at
		}
	}
	fmt.Fprintf(w, "allot %s (%s) %s %s\n", version, vcs, info.GoVersion, platform)
}
