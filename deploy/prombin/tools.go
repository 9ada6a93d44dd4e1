//go:build tools

// Package prombin only pins the main packages that the integration tests build with `go build`: Prometheus
// (scrapes `gangsched run` in a test) and promtool (`promtool test rules` on deploy/prometheus/).
package prombin

import (
	_ "github.com/prometheus/prometheus/cmd/prometheus"
	_ "github.com/prometheus/prometheus/cmd/promtool"
)
