"""Pod watch streams in protobuf (`live.podproto`): framing, envelopes, the translation's JSON shapes, and the
client and informer paths around them. Against the real API server: tests/integration/test_podproto.py."""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client as k8s_client

from gangsched.live import informer as inf
from gangsched.live import podproto
from gangsched.live.k8spb import core_v1_pb2, meta_v1_pb2, runtime_pb2
from gangsched.live.kube import ApiError, KubeClient


def envelope(kind: str, msg) -> bytes:
    u = runtime_pb2.Unknown(raw=msg.SerializeToString())
    u.typeMeta.apiVersion, u.typeMeta.kind = "v1", kind
    return podproto.MAGIC + u.SerializeToString()


def frame(typ: str, kind: str, msg) -> bytes:
    ev = meta_v1_pb2.WatchEvent(type=typ)
    ev.object.raw = envelope(kind, msg)
    data = ev.SerializeToString()
    return struct.pack(">I", len(data)) + data


def sample_pod() -> core_v1_pb2.Pod:
    p = core_v1_pb2.Pod()
    m = p.metadata
    m.name, m.namespace, m.uid, m.resourceVersion = "p", "ns", "u-1", "42"
    m.generation = 0  # a non-pointer zero, written by Go, omitted by JSON
    m.labels["scheduling.x-k8s.io/pod-group"] = "g"
    m.creationTimestamp.seconds = 1_700_000_000
    o = m.ownerReferences.add(apiVersion="v1", kind="ConfigMap", name="o", uid="u-o", controller=True)
    o.blockOwnerDeletion = False
    s = p.spec
    s.schedulerName, s.nodeName, s.priority = "gangsched", "", 0  # priority is a pointer: 0 is kept
    c = s.containers.add(name="main", image="busybox")
    c.resources.requests["cpu"].string = "500m"
    c.resources.limits["nvidia.com/gpu"].string = "2"
    s.initContainers.add(name="side", restartPolicy="Always").resources.SetInParent()  # Go writes it empty
    s.tolerations.add(operator="Exists", key="", tolerationSeconds=30)
    term = s.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms.add()
    term.matchExpressions.add(key="zone", operator="In", values=["a", "b"])
    s.schedulingGates.add(name="wait")
    cond = p.status.conditions.add(type="PodScheduled", status="False", observedGeneration=0)
    cond.lastProbeTime.SetInParent()  # the zero time: JSON's null
    cond.lastTransitionTime.seconds = 1_700_000_060
    p.status.phase = "Pending"
    return p


def test_a_pod_reads_as_its_json_would():
    ev = podproto.event(frame("ADDED", "Pod", sample_pod())[4:])
    assert ev["type"] == "ADDED"
    assert ev["object"] == {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "resourceVersion": "42",
                     "labels": {"scheduling.x-k8s.io/pod-group": "g"}, "creationTimestamp": "2023-11-14T22:13:20Z",
                     "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o", "uid": "u-o",
                                          "controller": True}]},
        "spec": {"schedulerName": "gangsched", "priority": 0,
                 "containers": [{"name": "main", "resources": {"requests": {"cpu": "500m"},
                                                               "limits": {"nvidia.com/gpu": "2"}}}],
                 "initContainers": [{"name": "side", "resources": {}, "restartPolicy": "Always"}],
                 "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                     "nodeSelectorTerms": [{"matchExpressions": [
                         {"key": "zone", "operator": "In", "values": ["a", "b"]}]}]}}},
                 "tolerations": [{"operator": "Exists", "tolerationSeconds": 30}],
                 "schedulingGates": [{"name": "wait"}]},
        "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "lastTransitionTime": "2023-11-14T22:14:20Z"}]},
    }


def test_an_error_event_reads_as_its_status():
    st_ = meta_v1_pb2.Status(status="Failure", code=410, reason="Expired", message="too old resource version: 1")
    ev = podproto.event(frame("ERROR", "Status", st_)[4:])
    assert ev == {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                              "message": "too old resource version: 1"}}
    assert podproto.status(envelope("Status", st_))["code"] == 410


@pytest.mark.parametrize("data, says", [
    (b"\x0a\x05ADDED\x12\x03\x0a\x01x", "prefix"),  # an object without the envelope
    (b"\xff\xff\xff", "not a protobuf"),
])
def test_what_is_not_the_api_servers_protobuf_is_a_frame_error(data, says):
    with pytest.raises(podproto.FrameError, match=says):
        podproto.event(data)


def test_an_object_of_another_kind_in_a_pod_stream_is_a_frame_error():
    with pytest.raises(podproto.FrameError, match="'Node'"):
        podproto.event(frame("ADDED", "Node", core_v1_pb2.Node())[4:])


@given(st.lists(st.integers(0, 10_000), max_size=8))
def test_frames_are_found_whatever_the_chunks(cuts):
    pods = []
    for i in range(5):
        p = sample_pod()
        p.metadata.name = f"p{i}" * (i * 50 + 1)  # frames of different lengths
        pods.append(p)
    stream = b"".join(frame("ADDED", "Pod", p) for p in pods)
    cuts = sorted({c % (len(stream) + 1) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    names = [podproto.event(f)["object"]["metadata"]["name"] for f in podproto.frames(chunks)]
    assert names == [p.metadata.name for p in pods]


def test_a_stream_cut_inside_a_frame_is_a_frame_error():
    data = frame("ADDED", "Pod", sample_pod())
    with pytest.raises(podproto.FrameError, match="inside a frame"):
        list(podproto.frames([data, data[:10]]))


# ---- the client and the informer ------------------------------------------------------------------------------
class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, body: bytes, content_type: str):
        super().__init__(("127.0.0.1", 0), Reply)
        self.body, self.content_type, self.accepts = body, content_type, []


class Reply(BaseHTTPRequestHandler):
    server: Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self.server.accepts.append(self.headers.get("Accept"))
        self.send_response(200)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        body = self.server.body
        for i in range(0, len(body), 100):  # chunks that split the frames
            part = body[i:i + 100]
            self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


def serve(body: bytes, content_type: str) -> Iterator[tuple[Server, KubeClient]]:
    srv = Server(body, content_type)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    cfg = k8s_client.Configuration()
    cfg.host = f"http://127.0.0.1:{srv.server_address[1]}"
    try:
        yield srv, KubeClient(cfg, qps=0)
    finally:
        srv.shutdown()
        srv.server_close()


def test_the_client_asks_for_protobuf_and_reads_it_or_json_whichever_comes():
    stream = frame("ADDED", "Pod", sample_pod()) * 3
    for srv, client in serve(stream, podproto.CONTENT_TYPE + ";stream=watch"):
        events = list(client.watch("/api/v1/pods", "1", 1, pods_protobuf=True))
        assert [e["object"]["metadata"]["name"] for e in events] == ["p"] * 3
        assert srv.accepts[0].startswith(podproto.ACCEPT_WATCH)
    for _srv, client in serve(b'{"type":"ADDED","object":{"metadata":{"name":"j"}}}\n', "application/json"):
        assert [e["object"]["metadata"]["name"] for e in client.watch("/api/v1/pods", "1", 1,
                                                                       pods_protobuf=True)] == ["j"]


def test_an_error_reply_in_protobuf_is_read_as_its_status():
    from gangsched.live.kube import _error

    e = _error(410, envelope("Status", meta_v1_pb2.Status(code=410, reason="Gone", message="expired")))
    assert (e.status, e.reason, e.message) == (410, "Gone", "expired")


class Garbled:
    """A client whose protobuf stream is garbage and whose JSON stream is a list's end: the informer must
    give up protobuf and list as JSON, not retry the same garbage."""

    def __init__(self) -> None:
        self.asked: list[bool] = []

    def watch(self, path: str, rv: str, timeout_seconds: int, query: dict | None = None, lean: bool = False,
              pods_protobuf: bool = False):
        self.asked.append(pods_protobuf)
        if pods_protobuf:
            raise podproto.FrameError("not a protobuf watch event: garbage")
        yield {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9",
                                                           "annotations": {inf.INITIAL_EVENTS_END: "true"}}}}
        raise ApiError(0, "ConnectionError", "closed")


def test_an_informer_that_cannot_read_the_protobuf_goes_on_in_json():
    out: queue.Queue = queue.Queue()
    stop = threading.Event()
    client = Garbled()
    informer = inf.Informer(client, inf.PODS, out, stop).start()  # type: ignore[arg-type]
    try:
        assert informer.synced.wait(5)
        assert client.asked[:2] == [True, False] and not informer.protobuf
    finally:
        stop.set()


def test_generated_modules_match_the_protos(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("grpc_tools")
    root = Path(__file__).resolve().parents[1]
    protos = sorted(f"gangsched/live/k8spb/{p.name}" for p in (root / "proto/k8s").glob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-Igangsched/live/k8spb=proto/k8s",
                    f"--python_out={tmp_path}", *protos], cwd=root, check=True, capture_output=True)
    made = sorted((tmp_path / "gangsched/live/k8spb").iterdir())
    assert [f.name for f in made] == sorted(p.name for p in (root / "gangsched/live/k8spb").glob("*_pb2.py"))
    for f in made:
        assert f.read_text() == (root / "gangsched/live/k8spb" / f.name).read_text(), \
            f"{f.name} is stale: regenerate (proto/README.md)"
