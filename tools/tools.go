//go:build tools

// Package tools records the pinned development tools as imports, so
// go.mod keeps their versions.
package tools

import (
	_ "gotest.tools/gotestsum"
)
