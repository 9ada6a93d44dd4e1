//go:build tools

// Package coschedbin only pins the main package that devcluster builds with `go build`.
package coschedbin

import (
	_ "sigs.k8s.io/scheduler-plugins/cmd/scheduler"
)
