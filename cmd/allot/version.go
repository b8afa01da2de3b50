package main

import (
	"context"
	"flag"
	"fmt"

	"github.com/allot/allot/pkg/service"
)

func versionCommand() command {
	return command{
		name:    "version",
		summary: "print the version of this build: version, VCS revision and Go version",
		usage: `Usage: allot version

Prints what this binary was built from, as every allot binary's -version
and the allot_build_info metric say it: the version (set by the Makefile
and the image build, else the module's; 0.0.0-dev+<revision> for a build
from a checkout), the VCS revision (whether the checkout had changes, and
the commit's time when known) and the Go version, OS and architecture.

Examples:
  allot version`,
		run: runVersion,
	}
}

func runVersion(_ context.Context, env *cliEnv, fs *flag.FlagSet, args []string) error {
	if err := parse(fs, args, false); err != nil {
		return err
	}
	_, err := fmt.Fprintf(env.stdout, "allot %s\n", service.Build())
	return err
}
