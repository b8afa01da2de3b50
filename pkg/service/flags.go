package service

import (
	"flag"
	"os"
)

// Flags are the command-line flags every allot binary takes.
type Flags struct {
	// ConfigPath is the YAML config file; empty means defaults and
	// environment only.
	ConfigPath string
	// Validate asks the binary to check its configuration, print it with
	// secrets redacted, and exit.
	Validate bool
	// Version asks the binary to print what it was built from (Build)
	// and exit.
	Version bool
}

// Register adds -config (default: the ALLOT_CONFIG environment variable),
// -validate and -version to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.ConfigPath, "config", os.Getenv("ALLOT_CONFIG"),
		"YAML config `file` (default $ALLOT_CONFIG; none: defaults and environment only)")
	fs.BoolVar(&f.Validate, "validate", false,
		"check the configuration, print it with secrets redacted, and exit")
	fs.BoolVar(&f.Version, "version", false,
		"print what this binary was built from (version, VCS revision, Go version) and exit")
}
