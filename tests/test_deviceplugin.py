"""The device plugin's logic, and its gRPC service over real unix-socket channels: a stand-in kubelet (Registration
and pod-resources servers) and the plugin dialled as the kubelet dials it. The API server is a plain object here;
tests/integration/test_device_plugin.py runs the plugin against a real kubelet and API server."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest

from gangsched.deviceplugin import allocation
from gangsched.deviceplugin.allocation import SCHEDULED_ANNOTATION, BoundPod, choose, corrections
from gangsched.deviceplugin.inventory import FileSource, Gpu, InventoryError, annotation, from_file, from_nvml
from gangsched.deviceplugin.pb import deviceplugin_v1beta1_pb2 as pb
from gangsched.deviceplugin.pb import deviceplugin_v1beta1_pb2_grpc as pb_grpc
from gangsched.deviceplugin.pb import podresources_v1_pb2 as prpb
from gangsched.deviceplugin.pb import podresources_v1_pb2_grpc as prpb_grpc
from gangsched.deviceplugin.plugin import DevicePlugin, Metrics, PodResources
from gangsched.deviceplugin.server import INDICES_ENV, VISIBLE_DEVICES_ENV, container_response
from gangsched.live.cache import Cache
from gangsched.live.translate import GPU_DEVICES_ANNOTATION, GPU_INVENTORY_ANNOTATION, node_from, node_gpus
from gangsched.state import ClusterState
from tests import livekit

ROOT = Path(__file__).resolve().parents[1]
UUIDS = [f"GPU-test-{i:04d}" for i in range(8)]


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def bound(name: str, named: tuple[int, ...] | None, created: float = 0.0) -> BoundPod:
    return BoundPod("ns", name, f"uid-{name}", named, created, {"metadata": {"name": name, "namespace": "ns"}})


UUID_OF = dict(enumerate(UUIDS))


# ---- choosing devices --------------------------------------------------------------------------------------------
def test_choose_honours_the_annotated_pod_whose_devices_are_free():
    pods = [bound("a", (4, 5)), bound("b", (1,))]
    c = choose(1, UUIDS, [], pods, {}, UUID_OF)
    assert (c.devices, c.pod.name) == ((UUIDS[1],), "b")  # the exact-size pod, not a's first device
    c = choose(2, UUIDS, [], pods, {}, UUID_OF)
    assert (c.devices, c.pod.name) == ((UUIDS[4], UUIDS[5]), "a")


def test_choose_takes_the_oldest_of_equal_candidates_and_skips_pods_already_allocated():
    pods = [bound("new", (3,), created=20.0), bound("old", (6,), created=10.0)]
    assert choose(1, UUIDS, [], pods, {}, UUID_OF).pod.name == "old"
    # "old" got its device already (pod-resources says so): "new" is the one being admitted
    free = [u for u in UUIDS if u != UUIDS[6]]
    assert choose(1, free, [], pods, {"ns/old": {UUIDS[6]}}, UUID_OF).pod.name == "new"


def test_choose_serves_a_pods_containers_one_at_a_time():
    pods = [bound("two", (3, 4))]  # two containers of 1 GPU each
    assert choose(1, UUIDS, [], pods, {}, UUID_OF).devices == (UUIDS[3],)
    # the first container has device 3 (pod-resources): the second gets the rest of the annotation
    free = [u for u in UUIDS if u != UUIDS[3]]
    assert choose(1, free, [], pods, {"ns/two": {UUIDS[3]}}, UUID_OF).devices == (UUIDS[4],)


def test_choose_lets_the_kubelet_choose_when_the_annotated_devices_are_not_free():
    pods = [bound("a", (0, 1))]
    c = choose(2, UUIDS[1:], [], pods, {}, UUID_OF)
    assert c.devices == () and c.pod is None and c.diverged.name == "a"
    c = choose(1, UUIDS, [], [bound("x", None)], {}, UUID_OF)  # nobody named devices: the kubelet chooses
    assert c == allocation.Choice((), None, None)


def test_choose_keeps_must_include_devices():
    c = choose(2, UUIDS, [UUIDS[2]], [bound("a", (2, 3))], {}, UUID_OF)
    assert c.devices == (UUIDS[2], UUIDS[3])
    assert choose(1, UUIDS, [UUIDS[7]], [], {}, UUID_OF).devices == (UUIDS[7],)


def test_corrections_write_what_the_node_did_and_keep_the_schedulers_pick():
    pods = [bound("same", (2, 1)), bound("moved", (0,)), bound("other", None), bound("idle", (5,))]
    allocated = {"ns/same": {UUIDS[1], UUIDS[2]}, "ns/moved": {UUIDS[6]}, "ns/other": {UUIDS[3], UUIDS[4]}}
    out = {c.pod.name: c for c in corrections(pods, allocated, {u: i for i, u in UUID_OF.items()})}
    assert set(out) == {"moved", "other"}  # "same" matches (order aside); "idle" has no devices yet
    assert out["moved"].patch == {"metadata": {"annotations": {GPU_DEVICES_ANNOTATION: "6",
                                                               SCHEDULED_ANNOTATION: "0"}}}
    assert out["moved"].reason == "GPUAllocationDiverged" and "picked GPUs 0" in out["moved"].message
    assert out["other"].patch == {"metadata": {"annotations": {GPU_DEVICES_ANNOTATION: "3,4"}}}
    assert out["other"].reason == "GPUAllocationRecorded"


def test_container_response_names_the_devices_by_uuid_and_index():
    gpus = [Gpu(2, UUIDS[2], paths=("/dev/nvidia2",)), Gpu(5, UUIDS[5], paths=("/dev/nvidia5",))]
    r = container_response(gpus, exists=lambda p: p != "/dev/nvidia-uvm-tools")
    assert dict(r.envs) == {VISIBLE_DEVICES_ENV: f"{UUIDS[2]},{UUIDS[5]}", INDICES_ENV: "2,5"}
    assert [d.host_path for d in r.devices] == ["/dev/nvidia2", "/dev/nvidia5", "/dev/nvidiactl", "/dev/nvidia-uvm",
                                                "/dev/nvidia-modeset"]
    assert list(container_response(gpus, exists=lambda p: False).devices) == []  # no driver: env only


# ---- inventory -----------------------------------------------------------------------------------------------------
def device_file(path: Path, healthy: dict[int, bool] | None = None, n: int = 8) -> Path:
    devices = [{"uuid": UUIDS[i], "model": "A100-SXM4-80GB", "memoryMiB": 81920, "numa": i // 4, "island": i // 4,
                "healthy": (healthy or {}).get(i, True)} for i in range(n)]
    path.write_text(json.dumps({"devices": devices}))
    return path


@pytest.mark.parametrize(("doc", "message"), [
    ({"devices": []}, "non-empty list under 'devices'"),
    ({"devices": [{"uuid": "a", "memoryMiB": "lots"}]}, "devices[0].memoryMiB='lots': expected int"),
    ({"devices": [{"uuid": "a", "colour": 1}]}, "devices[0]: unknown field 'colour'"),
    ({"devices": [{"uuid": "a"}, {"uuid": "a"}]}, "devices[1].uuid='a' appears twice"),
    ({"devices": [{"model": "x"}]}, "devices[0].uuid: required"),
    ({"devices": [{"uuid": "a", "healthy": 1}]}, "devices[0].healthy=1: expected bool"),
])
def test_device_file_errors_name_the_field(tmp_path, doc, message):
    path = tmp_path / "devices.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InventoryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_file(path)


def test_device_file_source_keeps_the_last_good_list(tmp_path):
    path = device_file(tmp_path / "devices.json")
    src = FileSource(path)
    assert not src.poll()
    device_file(path, {3: False})
    assert src.poll() and not src.gpus[3].healthy
    path.write_text("devices: [oops")
    assert not src.poll() and "not YAML/JSON" in src.error and not src.gpus[3].healthy
    assert [g.island for g in src.gpus] == [0, 0, 0, 0, 1, 1, 1, 1]


def test_nvml_discovery_finds_nvlink_islands():
    err = type("NVMLError", (Exception,), {})
    links = {0: [1], 1: [0], 2: [3], 3: [2]}  # two pairs

    def h(i):
        return i

    nvml = SimpleNamespace(
        NVMLError=err, NVML_NVLINK_MAX_LINKS=2, nvmlDeviceGetCount=lambda: 4, nvmlDeviceGetHandleByIndex=h,
        nvmlDeviceGetPciInfo=lambda i: SimpleNamespace(busId=f"00000000:0{i}:00.0".encode()),
        nvmlDeviceGetNvLinkState=lambda i, link: 1 if link < len(links[i]) else 0,
        nvmlDeviceGetNvLinkRemotePciInfo=lambda i, link: SimpleNamespace(busId=f"0000:0{links[i][link]}:00.0"),
        nvmlDeviceGetMinorNumber=lambda i: i, nvmlDeviceGetUUID=lambda i: f"GPU-{i}",
        nvmlDeviceGetName=lambda i: b"NVIDIA H100", nvmlDeviceGetMemoryInfo=lambda i: SimpleNamespace(total=80 << 30))
    gpus = from_nvml(nvml)
    assert [(g.uuid, g.island, g.memory_mib, g.paths) for g in gpus] == [
        ("GPU-0", 0, 81920, ("/dev/nvidia0",)), ("GPU-1", 0, 81920, ("/dev/nvidia1",)),
        ("GPU-2", 1, 81920, ("/dev/nvidia2",)), ("GPU-3", 1, 81920, ("/dev/nvidia3",))]
    assert gpus[0].model == "NVIDIA H100"


# ---- what the live scheduler reads ---------------------------------------------------------------------------------
def kubelet_node(allocatable: int, healthy: dict[int, bool] | None = None) -> dict:
    gpus = [Gpu(i, UUIDS[i], "A100" if i < 4 else "H100", 1024, i // 4, i // 4, (healthy or {}).get(i, True))
            for i in range(8)]
    obj = livekit.node("real", gpus=allocatable)
    obj["metadata"]["annotations"] = {GPU_INVENTORY_ANNOTATION: annotation(gpus)}
    return obj


def test_live_nodes_read_the_published_inventory():
    node = node_from(kubelet_node(8))
    assert [(d.model, d.group) for d in node.gpus] == [("A100", 0)] * 4 + [("H100", 1)] * 4
    state = ClusterState([node_from(kubelet_node(7, {3: False}))])
    assert state.gpu_cap[0].tolist() == [1000, 1000, 1000, 0, 1000, 1000, 1000, 1000]  # 3 is never picked
    assert state.models == ["A100", "H100"]


def test_inventory_and_kubelet_count_reconciled():
    # the kubelet offers fewer (the plugin is not registered yet after a kubelet restart): the highest are held back
    assert [d.healthy for d in node_gpus(annotation([Gpu(i, UUIDS[i]) for i in range(4)]), 2)] == [1, 1, 0, 0]
    # the annotation marks a device unhealthy before the kubelet hears: the annotation leads
    node = node_from(kubelet_node(8, {0: False}))
    assert node.allocatable["nvidia.com/gpu"] == 7 and not node.gpus[0].healthy
    for bad in ("{", "[]", '[{"index": 1}]', '[{"model": "x"}]', '"x"'):
        assert node_gpus(bad, 8) == ()  # malformed: the node counts as identical devices


def test_books_follow_the_annotation_the_plugin_rewrites():
    cache = Cache(ClusterState([]))
    cache.apply("nodes", "ADDED", kubelet_node(8))
    cache.refresh_nodes()
    a = livekit.pod("a", gpus=2, node_name="real", devices="0,1", phase="Running")
    cache.apply("pods", "ADDED", a)
    assert cache.state.assignments["default/a"].devices == (0, 1)
    a["metadata"]["annotations"][GPU_DEVICES_ANNOTATION] = "5,6"  # the kubelet gave 5,6: the plugin says so
    cache.apply("pods", "MODIFIED", a)
    assert cache.state.assignments["default/a"].devices == (5, 6)
    assert cache.state.gpu_free[0].tolist() == [1000, 1000, 1000, 1000, 1000, 0, 0, 1000]


def test_books_follow_a_swap_the_plugin_reports_one_pod_at_a_time():
    # the kubelet gave a what b was annotated with and b what a was: the two rewrites arrive one after the other
    cache = Cache(ClusterState([]))
    cache.apply("nodes", "ADDED", kubelet_node(8))
    cache.refresh_nodes()
    a = livekit.pod("a", node_name="real", devices="0", phase="Running")
    b = livekit.pod("b", node_name="real", devices="5", phase="Running")
    for p in (a, b):
        cache.apply("pods", "ADDED", p)
    a["metadata"]["annotations"][GPU_DEVICES_ANNOTATION] = "5"  # b still holds 5 in the books: a is guessed
    cache.apply("pods", "MODIFIED", a)
    b["metadata"]["annotations"][GPU_DEVICES_ANNOTATION] = "0"  # b takes 0 from a's guess: a gets its 5 back
    cache.apply("pods", "MODIFIED", b)
    assert cache.state.assignments["default/a"].devices == (5,)
    assert cache.state.assignments["default/b"].devices == (0,)
    assert "default/a" not in cache.guessed


# ---- over gRPC -----------------------------------------------------------------------------------------------------
class FakeKubelet(pb_grpc.RegistrationServicer, prpb_grpc.PodResourcesListerServicer):
    """The kubelet's two servers: Registration on kubelet.sock, pod-resources on its own socket."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.registrations: list[pb.RegisterRequest] = []
        self.allocated: dict[tuple[str, str], list[str]] = {}
        self.pr_socket = directory / "pod-resources.sock"
        self.pr_server = self._serve(self.pr_socket, prpb_grpc.add_PodResourcesListerServicer_to_server)
        self.start()

    def _serve(self, path: Path, add) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        add(self, server)
        server.add_insecure_port(f"unix:{path}")
        server.start()
        return server

    def start(self) -> None:
        self.server = self._serve(self.directory / "kubelet.sock", pb_grpc.add_RegistrationServicer_to_server)

    def restart(self) -> None:
        """As the kubelet does when it starts: wipe the directory's sockets, serve a new kubelet.sock."""
        self.server.stop(0).wait()
        for sock in self.directory.glob("*.sock"):
            if sock != self.pr_socket:
                sock.unlink()
        self.start()

    def Register(self, request, context):
        self.registrations.append(request)
        return pb.Empty()

    def List(self, request, context):
        return prpb.ListPodResourcesResponse(pod_resources=[
            prpb.PodResources(name=name, namespace=ns, containers=[prpb.ContainerResources(
                name="c", devices=[prpb.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=ids)])])
            for (ns, name), ids in self.allocated.items()])

    def stop(self) -> None:
        self.server.stop(0)
        self.pr_server.stop(0)


class FakeApi:
    """The API server as the plugin uses it: pods on the node, patches recorded (and applied)."""

    def __init__(self, pods: list[dict]):
        self.pods = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
        self.patches: list[tuple[str, dict]] = []
        self.lists = 0

    def list_all(self, path, query=None):
        self.lists += 1
        return list(self.pods.values()), "1"

    def request(self, method, path, body=None, **kw):
        self.patches.append((path, body))
        parts = path.split("/")
        if "pods" in parts:
            pod = self.pods[(parts[4], parts[6])]
            pod["metadata"].setdefault("annotations", {}).update(body["metadata"]["annotations"])
        return {}


class Recorder:
    def __init__(self):
        self.events = []

    def record(self, obj, kind, reason, message, warning=True):
        self.events.append((obj["metadata"]["name"], reason, message))


@pytest.fixture
def rig(tmp_path_factory):
    d = Path(tmp_path_factory.mktemp("dp"))
    kubelet = FakeKubelet(d)
    devices = device_file(d / "devices.json")
    pods = [livekit.pod("a", gpus=2, ns="ns", node_name="n1", devices="4,5"),
            livekit.pod("b", gpus=1, ns="ns", node_name="n1")]
    api = FakeApi(pods)
    recorder = Recorder()
    plugin = DevicePlugin(api, "n1", FileSource(devices), d, "nvidia.com/gpu",  # type: ignore[arg-type]
                          PodResources(kubelet.pr_socket, "nvidia.com/gpu"), recorder, Metrics(),
                          reconcile_seconds=0.1)
    thread = threading.Thread(target=plugin.run, kwargs={"tick": 0.05}, daemon=True)
    thread.start()
    rig = SimpleNamespace(dir=d, kubelet=kubelet, devices=devices, api=api, plugin=plugin, recorder=recorder)
    try:
        wait_for(lambda: kubelet.registrations, what="registration")
        yield rig
    finally:
        plugin.shutdown()
        thread.join(10)
        kubelet.stop()


def dial(rig) -> tuple[grpc.Channel, pb_grpc.DevicePluginStub]:
    reg = rig.kubelet.registrations[-1]
    channel = grpc.insecure_channel(f"unix:{rig.dir / reg.endpoint}")
    return channel, pb_grpc.DevicePluginStub(channel)


def test_registers_and_streams_health(rig):
    reg = rig.kubelet.registrations[0]
    assert (reg.version, reg.resource_name, reg.options.get_preferred_allocation_available) == \
        ("v1beta1", "nvidia.com/gpu", True)
    annotated = json.loads(rig.api.patches[0][1]["metadata"]["annotations"][GPU_INVENTORY_ANNOTATION])
    assert [d["uuid"] for d in annotated] == UUIDS and annotated[4]["island"] == 1  # the node's inventory
    channel, stub = dial(rig)
    with channel:
        stream = stub.ListAndWatch(pb.Empty(), timeout=20)
        first = next(stream)
        assert [(d.ID, d.health, d.topology.nodes[0].ID) for d in first.devices][:5:4] == \
            [(UUIDS[0], "Healthy", 0), (UUIDS[4], "Healthy", 1)]
        device_file(rig.devices, {3: False})
        second = next(stream)
        assert [d.ID for d in second.devices if d.health == "Unhealthy"] == [UUIDS[3]]
        # the node annotation says so too, published before the kubelet heard
        inv = json.loads(rig.api.patches[-1][1]["metadata"]["annotations"][GPU_INVENTORY_ANNOTATION])
        assert [d["healthy"] for d in inv] == [True] * 3 + [False] + [True] * 4
        stream.cancel()


def test_preferred_allocation_and_allocate_follow_the_annotation(rig):
    channel, stub = dial(rig)
    with channel:
        opts = stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        assert opts.get_preferred_allocation_available
        req = pb.ContainerPreferredAllocationRequest(available_deviceIDs=UUIDS, allocation_size=2)
        resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[req]), timeout=5)
        assert list(resp.container_responses[0].deviceIDs) == [UUIDS[4], UUIDS[5]]
        alloc = stub.Allocate(pb.AllocateRequest(container_requests=[
            pb.ContainerAllocateRequest(devices_ids=[UUIDS[5], UUIDS[4]])]), timeout=5)
        assert alloc.container_responses[0].envs[INDICES_ENV] == "4,5"
        assert alloc.container_responses[0].envs[VISIBLE_DEVICES_ENV] == f"{UUIDS[4]},{UUIDS[5]}"
        with pytest.raises(grpc.RpcError) as e:
            stub.Allocate(pb.AllocateRequest(container_requests=[pb.ContainerAllocateRequest(devices_ids=["x"])]),
                          timeout=5)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # a's devices are taken: the kubelet chooses for a pod asking 2 (recorded), and nothing breaks
        free = [u for u in UUIDS if u not in (UUIDS[4], UUIDS[5])]
        req = pb.ContainerPreferredAllocationRequest(available_deviceIDs=free, allocation_size=2)
        resp = stub.GetPreferredAllocation(pb.PreferredAllocationRequest(container_requests=[req]), timeout=5)
        assert list(resp.container_responses[0].deviceIDs) == []
        assert rig.recorder.events[-1][:2] == ("a", "GPUDevicesNotFree")


def test_what_the_kubelet_did_is_written_back(rig):
    rig.kubelet.allocated = {("ns", "a"): [UUIDS[0], UUIDS[1]], ("ns", "b"): [UUIDS[7]]}
    ann = wait_for(lambda: [p["metadata"]["annotations"].get(GPU_DEVICES_ANNOTATION) for p in
                            rig.api.pods.values()] == ["0,1", "7"] and rig.api.pods, what="annotations rewritten")
    assert ann[("ns", "a")]["metadata"]["annotations"][SCHEDULED_ANNOTATION] == "4,5"
    reasons = {(name, reason) for name, reason, _ in rig.recorder.events}
    assert reasons >= {("a", "GPUAllocationDiverged"), ("b", "GPUAllocationRecorded")}
    n, lists = len(rig.api.patches), rig.api.lists
    time.sleep(0.5)  # several reconcile periods: nothing more to write (a real wait for absence, bounded)
    assert len(rig.api.patches) == n
    assert rig.api.lists <= lists + 1  # allocations unchanged: the node's pods are not listed again


def test_kubelet_restart_registers_again(rig):
    assert rig.plugin.metrics.registrations._value.get() == 1
    rig.kubelet.restart()
    wait_for(lambda: len(rig.kubelet.registrations) == 2, what="re-registration")
    channel, stub = dial(rig)
    with channel:
        assert len(next(stub.ListAndWatch(pb.Empty(), timeout=10)).devices) == 8


def test_generated_stubs_match_the_protos(tmp_path):
    pytest.importorskip("grpc_tools")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", "-Igangsched/deviceplugin/pb=proto", f"--python_out={tmp_path}",
           f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}",
           "gangsched/deviceplugin/pb/deviceplugin_v1beta1.proto", "gangsched/deviceplugin/pb/podresources_v1.proto"]
    subprocess.run(cmd, cwd=ROOT, check=True)
    for f in sorted((tmp_path / "gangsched/deviceplugin/pb").iterdir()):
        assert f.read_text() == (ROOT / "gangsched/deviceplugin/pb" / f.name).read_text(), \
            f"{f.name} is stale: regenerate (proto/README.md)"


# ---- what ships --------------------------------------------------------------------------------------------------
def test_kubelet_built_from_the_control_planes_kubernetes():
    import re

    def pins(path: Path) -> set[str]:
        return set(re.findall(r"(k8s\.io/\S+ => k8s\.io/\S+ v\S+)", path.read_text()))

    k8s, kubelet = pins(ROOT / "deploy/k8sbin/go.mod"), pins(ROOT / "deploy/kubeletbin/go.mod")
    assert "k8s.io/kubernetes => k8s.io/kubernetes v1.37.2" in kubelet and kubelet == k8s


def test_daemonset_mounts_the_kubelet_sockets_and_rbac_covers_the_plugins_calls():
    import yaml

    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "deploy/device-plugin.yaml").read_text())}
    pod = docs["DaemonSet"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][0] == "device-plugin"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/var/lib/kubelet/device-plugins",
                                                                    "/var/lib/kubelet/pod-resources"}
    assert {e["name"] for e in container["env"]} >= {"NODE_NAME"}
    rules = {(r, v) for rule in docs["ClusterRole"]["rules"] for r in rule["resources"] for v in rule["verbs"]}
    # node_pods (list), reconcile (patch pods), publish (patch nodes), Events (create)
    assert rules == {("pods", "list"), ("pods", "patch"), ("nodes", "patch"), ("events", "create")}
    assert pod["serviceAccountName"] == docs["ServiceAccount"]["metadata"]["name"]


# ---- the dev cluster's kubelet node (the parts that need no root) ------------------------------------------------
def test_one_kubelet_node_per_machine(tmp_path):
    from gangsched.devcluster.cluster import DevClusterError
    from gangsched.devcluster.kubeletnode import MachineLock

    other = subprocess.Popen(["sleep", "60"])
    try:
        first = MachineLock(tmp_path / "lock", tmp_path / "claim")
        first.acquire(1)
        first.claim(other.pid)  # a detached node, alive as long as that process
        first.release(unclaim=False)
        with pytest.raises(DevClusterError, match=f"pid {other.pid}"):
            MachineLock(tmp_path / "lock", tmp_path / "claim").acquire(0.3)
        forced = MachineLock(tmp_path / "lock", tmp_path / "claim")
        forced.acquire(1, force=True)  # `devcluster down` stops it all the same
        forced.release(unclaim=False)
    finally:
        other.kill()
        other.wait()
    again = MachineLock(tmp_path / "lock", tmp_path / "claim")
    again.acquire(1)  # its claim died with it (a crash): taken over
    again.release()
    assert not (tmp_path / "claim").exists()


def test_busybox_image_is_a_docker_archive_with_one_layer(tmp_path):
    import tarfile

    from gangsched.devcluster.kubeletnode import IMAGE, busybox_image

    fake = tmp_path / "busybox"
    fake.write_bytes(b"\x7fELF static")
    with tarfile.open(busybox_image(tmp_path / "img.tar", busybox=fake)) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        config = json.load(tar.extractfile("config.json"))
        with tarfile.open(fileobj=tar.extractfile("layer.tar")) as layer:
            names = set(layer.getnames())
    assert manifest == [{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}]
    assert {"bin/busybox", "bin/sh", "bin/sleep"} <= names
    assert config["config"]["Entrypoint"][0] == "/bin/sleep"  # also the pods' sandbox image
    assert len(config["rootfs"]["diff_ids"]) == 1


def test_nvml_missing_or_without_a_driver_is_one_clear_error():
    from gangsched.deviceplugin.inventory import nvml_source

    def missing():
        raise ImportError("No module named 'pynvml'")

    with pytest.raises(InventoryError, match=r"gangsched\[nvml\].*--devices FILE"):
        nvml_source(loader=missing)
    err = type("NVMLError", (Exception,), {})

    def no_driver():
        raise err("Driver Not Loaded")

    with pytest.raises(InventoryError, match=r"NVML: Driver Not Loaded \(is the NVIDIA driver installed"):
        nvml_source(loader=lambda: SimpleNamespace(NVMLError=err, nvmlInit=no_driver))
