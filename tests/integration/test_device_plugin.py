"""`gangsched device-plugin` on a real kubelet node (containerd + runc, see gangsched.devcluster.kubeletnode) of the
dev cluster, with `gangsched run` placing pods: each container's environment, read through the API server's
pods/log (the kubelet serves it), shows the devices it really got.

The node has 8 fake GPUs in two NVLink islands (0-3, 4-7), served from a device list file the tests edit. One
kubelet per machine: the fixture takes a machine-wide lock, so two test runs at once wait for each other. Needs
root (CI runs as root); containerd and runc come from Debian (.ci/run installs them).
"""

from __future__ import annotations

import os
import uuid

import pytest

from gangsched.devcluster.kubeletnode import LABEL, KubeletNode, ensure_kubelet, toleration
from gangsched.deviceplugin.allocation import SCHEDULED_ANNOTATION
from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.translate import GPU_DEVICES_ANNOTATION
from tests.integration.live import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="a kubelet node needs root (containerd, runc, cgroups)")
ISLANDS = ({0, 1, 2, 3}, {4, 5, 6, 7})


@pytest.fixture(scope="module")
def node(devcluster, pytestconfig):
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():
        kubelet = ensure_kubelet(progress=lambda msg: print(f"\n{msg}", end="", flush=True))
    n = KubeletNode(devcluster.kubeconfig, kubelet)
    n.start(lock_timeout=900, timeout=120)  # another run's kubelet node: wait for it (it has deadlines too)
    try:
        yield n
    finally:
        for name in ("kubelet", "device-plugin"):
            print(f"--- {name}.log\n" + "\n".join(n.log(name).read_text(errors="replace").splitlines()[-40:]))
        n.stop()


class Pods:
    """Pods of one namespace on the kubelet node, and what their containers saw."""

    def __init__(self, client: KubeClient, node: KubeletNode):
        self.c = client
        self.node = node
        self.ns = f"dp-{uuid.uuid4().hex[:8]}"
        client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                       "metadata": {"name": self.ns}})
        self.uuid_index = {d["uuid"]: i for i, d in enumerate(node.devices())}

    def create(self, name: str, gpus: int, scheduler: str = "gangsched", node_name: str | None = None) -> None:
        spec = {"schedulerName": scheduler, "hostNetwork": True, "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0, "tolerations": [toleration()],
                "nodeSelector": {LABEL: "true"},
                "containers": [{"name": "c", "image": "gangsched.local/busybox:1", "imagePullPolicy": "Never",
                                "command": ["/bin/sh", "-c", "echo DEVICES=$NVIDIA_VISIBLE_DEVICES; sleep 3600"],
                                "resources": {"requests": {"cpu": "10m"}, "limits": {"nvidia.com/gpu": str(gpus)}}}]}
        if node_name:
            spec["nodeName"] = node_name
        self.c.request("POST", f"/api/v1/namespaces/{self.ns}/pods",
                       {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec})

    def get(self, name: str) -> dict:
        return self.c.request("GET", f"/api/v1/namespaces/{self.ns}/pods/{name}")

    def seen(self, name: str, timeout: float = 60.0) -> tuple[int, ...]:
        """The device indices the container's environment names, once it runs."""
        def logged():
            pod = self.get(name)
            if pod["status"].get("phase") == "Failed":
                raise AssertionError(f"pod {name} failed: {pod['status']}")
            if pod["status"].get("phase") != "Running":
                return None
            try:
                out = self.c.pool.request("GET", self.c.url(f"/api/v1/namespaces/{self.ns}/pods/{name}/log"),
                                          headers=self.c._headers(), timeout=5).data.decode()
            except OSError:
                return None
            return next((line for line in out.splitlines() if line.startswith("DEVICES=")), None)
        line = wait_for(logged, timeout=timeout, what=f"pod {name} running and logging its devices")
        return tuple(sorted(self.uuid_index[u] for u in line.removeprefix("DEVICES=").split(",") if u))

    def annotation(self, name: str, key: str = GPU_DEVICES_ANNOTATION) -> tuple[int, ...] | None:
        value = (self.get(name)["metadata"].get("annotations") or {}).get(key)
        return tuple(sorted(int(x) for x in value.split(","))) if value else None

    def run(self, name: str, gpus: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Create, wait until it runs: (devices its container sees, what gangsched picked)."""
        self.create(name, gpus)
        got = self.seen(name)
        # the annotation is the scheduler's pick, unless the node did otherwise (then the pick is kept aside)
        picked = self.annotation(name, SCHEDULED_ANNOTATION) or self.annotation(name)
        assert len(got) == gpus and picked is not None and len(picked) == gpus
        wait_for(lambda: self.annotation(name) == got, timeout=20, what=f"{name}'s annotation to name {got}")
        return got, picked

    def delete(self, *names: str) -> None:
        for name in names:
            self.c.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{name}", query={"gracePeriodSeconds": 0})
        def gone():
            for name in names:
                try:
                    self.get(name)
                    return False
                except ApiError as e:
                    if e.status != 404:
                        raise
            return True
        wait_for(gone, timeout=60, what=f"pods {names} gone")

    def events(self, reason: str) -> list[dict]:
        items = self.c.request("GET", f"/api/v1/namespaces/{self.ns}/events")["items"]
        return [e for e in items if e.get("reason") == reason]

    def delete_all(self) -> None:
        items = self.c.request("GET", f"/api/v1/namespaces/{self.ns}/pods")["items"]
        if items:
            self.delete(*(p["metadata"]["name"] for p in items))


@pytest.fixture
def pods(devcluster, node):
    p = Pods(KubeClient.load(str(devcluster.kubeconfig), qps=0), node)
    yield p
    p.delete_all()


@pytest.fixture
def plugin(node):
    """The device plugin restarted with the given arguments, registered and publishing; back to normal after."""
    def start(*extra: str) -> None:
        before = node.log("device-plugin").read_text().count("registered nvidia.com/gpu")
        node.start_plugin(*extra)
        wait_for(lambda: node.log("device-plugin").read_text().count("registered nvidia.com/gpu") > before,
                 timeout=30, what="the device plugin registered")
        node.wait_ready(60)
    yield start
    node.write_devices([{**d, "healthy": True} for d in node.devices()])
    start()


ALIVE = {"c1", "d4", "e2", "f1"}  # the pods of `sequence` still running at its end


def sequence(pods: Pods) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """1-, 2- and 4-GPU pods arriving and leaving on the 8-GPU node; (seen, picked) per pod."""
    out = {}
    for i in range(8):  # eight 1-GPU pods, then all gone: the kubelet's own choice is random among the free ones
        out[f"one-{i}"] = pods.run(f"one-{i}", 1)
    pods.delete(*(f"one-{i}" for i in range(8)))
    out["a1"] = pods.run("a1", 1)
    out["b2"] = pods.run("b2", 2)
    out["c1"] = pods.run("c1", 1)
    out["d4"] = pods.run("d4", 4)  # the node is full now
    pods.delete("a1", "b2")
    out["e2"] = pods.run("e2", 2)
    out["f1"] = pods.run("f1", 1)
    return out


def assert_no_gpu_twice(runs: dict, alive: list[str]) -> None:
    used = [d for name in alive for d in runs[name][0]]
    assert len(used) == len(set(used)), runs


def test_containers_get_the_devices_gangsched_picked(node, pods, plugin, start_scheduler):
    start_scheduler()
    runs = sequence(pods)
    assert {name: seen for name, (seen, _) in runs.items()} == {name: picked for name, (_, picked) in runs.items()}
    assert not pods.events("GPUAllocationDiverged")
    assert any(runs["d4"][0] == tuple(sorted(island)) for island in ISLANDS), runs  # a whole NVLink island
    assert_no_gpu_twice(runs, ["c1", "d4", "e2", "f1"])


def test_without_the_preference_the_kubelet_diverges_and_the_books_follow(node, pods, plugin, start_scheduler):
    plugin("--no-preferred-allocation")
    start_scheduler()
    runs = sequence(pods)
    diverged = sorted(name for name, (seen, picked) in runs.items() if seen != picked)
    # the kubelet takes free devices in Go's random map order: all 14 matching gangsched's picks by chance is
    # below 1 in 8! x 2,520 (the eight 1-GPU pods alone: 1 in 40,320)
    assert diverged, runs

    def told() -> set[str]:
        return {e["involvedObject"]["name"] for e in pods.events("GPUAllocationDiverged")}

    # The plugin writes back what the node did for the pods it finds running when it looks (every tick): one
    # deleted before that (the one-* and a1, b2 go within seconds) holds nothing any more and may get no Event.
    # Those alive at the end must have theirs, and no pod that got its pick may have one.
    alive = {n for n in diverged if n in ALIVE}
    try:
        wait_for(lambda: alive <= told(), timeout=20,
                 what=f"a GPUAllocationDiverged Event for each of {sorted(alive)}")  # posted asynchronously
        assert told() <= set(diverged)
    except AssertionError as e:  # say which ones came, and what each pod got and was picked
        raise AssertionError(f"{e}; Events for {sorted(told())}; (got, picked) per pod: {runs}") from None
    assert_no_gpu_twice(runs, sorted(ALIVE))  # the books followed the node: no device given twice
    print(f"diverged: {len(diverged)} of {len(runs)} pods; d4 got {runs['d4'][0]} "
          f"({'one island' if any(set(runs['d4'][0]) == i for i in ISLANDS) else 'split across islands'})")


def test_an_unhealthy_device_leaves_allocatable_and_is_not_picked(node, pods, plugin, start_scheduler):
    start_scheduler()
    devices = node.devices()
    devices[2]["healthy"] = False
    node.write_devices(devices)
    node.wait_ready(30, gpus=7)
    got = [pods.run(f"p{i}", g)[0] for i, g in enumerate((4, 2, 1))]
    used = sorted(d for g in got for d in g)
    assert used == [0, 1, 3, 4, 5, 6, 7], got
    pods.create("waits", 1)  # no healthy GPU left
    wait_for(lambda: any(e["involvedObject"]["name"] == "waits" for e in pods.events("FailedScheduling")),
             timeout=30, what="FailedScheduling for the pod that does not fit")
    assert not pods.get("waits")["spec"].get("nodeName")
    devices[2]["healthy"] = True
    node.write_devices(devices)
    assert pods.seen("waits") == (2,)  # back in allocatable: gangsched places it there


def test_kubelet_restart_re_registers_and_allocations_survive(node, pods, plugin, start_scheduler):
    start_scheduler()
    before = {name: pods.run(name, g)[0] for name, g in (("x4", 4), ("y2", 2))}
    registered = node.log("device-plugin").read_text().count("registered nvidia.com/gpu")
    node.restart_kubelet()
    wait_for(lambda: node.log("device-plugin").read_text().count("registered nvidia.com/gpu") > registered,
             timeout=60, what="the device plugin registered again")
    node.wait_ready(60)
    for name, seen in before.items():
        pod = pods.get(name)
        assert pod["status"]["phase"] == "Running" and pod["status"]["containerStatuses"][0]["restartCount"] == 0
        assert pods.annotation(name) == seen
    got, picked = pods.run("z2", 2)
    assert got == picked and not set(got) & {d for s in before.values() for d in s}


def test_a_pod_bound_elsewhere_gets_devices_and_gangsched_books_follow(node, pods, plugin, start_scheduler):
    start_scheduler()
    pods.create("other", 3, scheduler="default-scheduler", node_name=node.name)  # bound by "someone else"
    theirs = pods.seen("other")
    wait_for(lambda: pods.annotation("other") == theirs, timeout=20, what="the plugin recording other's devices")
    wait_for(lambda: pods.events("GPUAllocationRecorded"), timeout=20, what="the GPUAllocationRecorded Event")
    got, picked = pods.run("rest", 5)
    assert got == picked == tuple(d for d in range(8) if d not in theirs)
    assert not pods.events("GPUAllocationDiverged")
