// Command bind-ceiling posts one Binding per pending pod of a namespace and nothing else: the bind-only ceiling
// of benchmarks/live_throughput.py, written with client-go as kube-scheduler's binder is. Nodes are taken
// round-robin among those with a free nvidia.com/gpu, each binding naming its device in gangsched.io/gpu-devices
// as gangsched's do, so the request bodies match. Client QPS, burst and the number of concurrent bindings are
// the flags gangsched's binder takes.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apitypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

const (
	gpuResource = "nvidia.com/gpu"
	devicesKey  = "gangsched.io/gpu-devices"
)

type binding struct {
	name, uid, node string
	device          int
}

func main() {
	kubeconfig := flag.String("kubeconfig", "", "kubeconfig file")
	qps := flag.Float64("qps", 5000, "client QPS")
	burst := flag.Int("burst", 10000, "client burst")
	workers := flag.Int("bind-workers", 16, "bindings posted concurrently")
	namespace := flag.String("namespace", "", "bind the pending pods of this namespace")
	selector := flag.String("node-selector", "", "label selector of the nodes to bind to")
	protobuf := flag.Bool("protobuf", false, "talk protobuf to the API server (kube-scheduler does); default JSON, as gangsched")
	flag.Parse()
	if *namespace == "" {
		fail(fmt.Errorf("--namespace is required"))
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		fail(err)
	}
	cfg.QPS, cfg.Burst, cfg.UserAgent = float32(*qps), *burst, "bind-ceiling"
	if *protobuf {
		cfg.ContentType = "application/vnd.kubernetes.protobuf"
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		fail(err)
	}
	ctx := context.Background()
	nodes, err := client.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: *selector})
	if err != nil {
		fail(err)
	}
	names := make([]string, 0, len(nodes.Items))
	free, total := map[string]int{}, map[string]int{}
	for _, n := range nodes.Items {
		gpus := n.Status.Allocatable[gpuResource]
		names = append(names, n.Name)
		free[n.Name], total[n.Name] = int(gpus.Value()), int(gpus.Value())
	}
	sort.Strings(names)
	var pending []corev1.Pod
	opts := metav1.ListOptions{Limit: 500}
	for {
		page, err := client.CoreV1().Pods(*namespace).List(ctx, opts)
		if err != nil {
			fail(err)
		}
		for _, p := range page.Items {
			if p.Spec.NodeName == "" {
				pending = append(pending, p)
			}
		}
		if opts.Continue = page.Continue; opts.Continue == "" {
			break
		}
	}
	sort.Slice(pending, func(i, j int) bool { return pending[i].Name < pending[j].Name })

	work := make(chan binding, *workers*4)
	var failed atomic.Int64
	var wg sync.WaitGroup
	for w := 0; w < *workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for b := range work {
				body := &corev1.Binding{
					ObjectMeta: metav1.ObjectMeta{Name: b.name, Namespace: *namespace, UID: apitypes.UID(b.uid),
						Annotations: map[string]string{devicesKey: strconv.Itoa(b.device)}},
					Target: corev1.ObjectReference{Kind: "Node", Name: b.node},
				}
				if err := client.CoreV1().Pods(*namespace).Bind(ctx, body, metav1.CreateOptions{}); err != nil {
					failed.Add(1)
					fmt.Fprintf(os.Stderr, "%s: %v\n", b.name, err)
				}
			}
		}()
	}
	start := time.Now()
	posted, i := 0, 0
	for _, p := range pending {
		node := ""
		for range names {
			candidate := names[i%len(names)]
			i++
			if free[candidate] >= 1 {
				node = candidate
				break
			}
		}
		if node == "" {
			fmt.Printf("no free GPU left for %s\n", p.Name)
			break
		}
		used := total[node] - free[node]
		free[node]--
		work <- binding{p.Name, string(p.UID), node, used}
		posted++
	}
	close(work)
	wg.Wait()
	fmt.Printf("ceiling-go: %d bindings posted, %d failed, in %.2f s\n", posted, failed.Load(),
		time.Since(start).Seconds())
}

func fail(err error) {
	fmt.Fprintf(os.Stderr, "bind-ceiling: %v\n", err)
	os.Exit(2)
}
