//go:build tools

// Package helmbin only pins the helm CLI, which the chart test (helm lint, helm template) builds with `go build`.
package helmbin

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
