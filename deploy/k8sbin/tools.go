//go:build tools

// Package k8sbin only pins the main packages that devcluster builds with `go build`.
package k8sbin

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
