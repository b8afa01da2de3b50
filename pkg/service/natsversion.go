package service

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// MinNATSVersion is the oldest nats-server allot runs on. 2.9 is out of
// support, and its pull consumers starve the meter at the start of a
// burst (README, "Ingest on NATS 2.9"); 2.10 brought the subject
// transforms and auth callout that access control and scale-out build on.
// CI tests the version the embedded server uses (the nats-server module in
// go.work), and deploy/k8s runs that line.
const MinNATSVersion = "2.10.0"

// ErrNATSVersion marks a server older than MinNATSVersion, or one whose
// version cannot be read.
var ErrNATSVersion = errors.New("service: unsupported nats-server")

// CheckNATSVersion returns nil when version, as a server reports it in its
// INFO ("2.10.22", "2.11.0-RC.1"), is MinNATSVersion or later, and
// otherwise an ErrNATSVersion naming both versions.
func CheckNATSVersion(version string) error {
	got, err := parseVersion(version)
	if err != nil {
		return fmt.Errorf("%w: it reports version %q (%v); allot needs %s or later", ErrNATSVersion, version, err, MinNATSVersion)
	}
	minimum, _ := parseVersion(MinNATSVersion)
	for i := range got {
		if got[i] != minimum[i] {
			if got[i] < minimum[i] {
				return fmt.Errorf("%w: it runs %s; allot needs %s or later", ErrNATSVersion, version, MinNATSVersion)
			}
			return nil
		}
	}
	return nil
}

// parseVersion reads major.minor.patch, ignoring a pre-release or build
// suffix after the patch number ("2.11.0-RC.1" is 2.11.0).
func parseVersion(v string) ([3]int, error) {
	var out [3]int
	core, _, _ := strings.Cut(strings.TrimPrefix(v, "v"), "-")
	core, _, _ = strings.Cut(core, "+")
	parts := strings.Split(core, ".")
	if len(parts) != 3 {
		return out, errors.New("not major.minor.patch")
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || strings.Trim(p, "0123456789") != "" || (len(p) > 1 && p[0] == '0') {
			return out, fmt.Errorf("%q is not a version number", p)
		}
		out[i] = n
	}
	return out, nil
}
