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
}

// Register adds -config (default: the ALLOT_CONFIG environment variable)
// and -validate to fs.
func (f *Flags) Register(fs *flag.FlagSet) {
	fs.StringVar(&f.ConfigPath, "config", os.Getenv("ALLOT_CONFIG"),
		"YAML config `file` (default $ALLOT_CONFIG; none: defaults and environment only)")
	fs.BoolVar(&f.Validate, "validate", false,
		"check the configuration, print it with secrets redacted, and exit")
}
