// An empty stand-in for github.com/containerd/containerd (see ../go.mod): nothing the kubelet builds imports it.
module github.com/containerd/containerd

go 1.21
