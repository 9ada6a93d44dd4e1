//go:build tools

// Package etcdbin only pins the etcd main package that devcluster builds with `go build`.
package etcdbin

import (
	_ "go.etcd.io/etcd/server/v3"
)
