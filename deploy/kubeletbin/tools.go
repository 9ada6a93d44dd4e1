//go:build tools

// Package kubeletbin only pins the kubelet's main package, which devcluster builds with `go build`.
package kubeletbin

import _ "k8s.io/kubernetes/cmd/kubelet"
