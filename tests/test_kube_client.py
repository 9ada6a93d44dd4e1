"""KubeClient's identity (User-Agent, fieldManager) and write fence, against a tiny recording HTTP server."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes import client as k8s_client

from gangsched.live.kube import NOT_LEADER, USER_AGENT, ApiError, KubeClient
from gangsched.live.leader import LeaderElector


class Recorder(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.seen: list[dict[str, Any]] = []
        self.delay = 0.0  # seconds before each reply
        self.hang_up = ""  # "after": close the connection after the reply, unannounced; "before": instead of it


class Handler(BaseHTTPRequestHandler):
    server: Recorder
    protocol_version = "HTTP/1.1"

    def _handle(self) -> None:
        url = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.server.seen.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                 "headers": dict(self.headers), "body": body, "peer": self.client_address})
        if self.server.hang_up == "before":
            self.close_connection = True
            return
        if self.server.delay:
            time.sleep(self.server.delay)
        if "watch" in parse_qs(url.query):
            reply = json.dumps({"type": "ADDED", "object": {"kind": "Pod"}}).encode() + b"\n"
        else:
            reply = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)
        if self.server.hang_up == "after":
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[Recorder]:
    srv = Recorder()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def make_client(server: Recorder, **kw: Any) -> KubeClient:
    cfg = k8s_client.Configuration()
    cfg.host = f"http://127.0.0.1:{server.server_address[1]}"
    return KubeClient(cfg, qps=0, **kw)


def test_user_agent_names_gangsched_on_every_request_watches_included(server: Recorder):
    client = make_client(server)
    client.request("GET", "/api/v1/pods")
    client.request("POST", "/api/v1/namespaces/ns/events", {"kind": "Event"})
    assert list(client.watch("/api/v1/pods", "1", timeout_seconds=1)) == [{"type": "ADDED", "object": {"kind": "Pod"}}]
    try:
        version = metadata.version("gangsched")
    except metadata.PackageNotFoundError:
        version = "dev"
    assert re.fullmatch(rf"gangsched/{re.escape(version)} \(\S+/\S+\)", USER_AGENT)
    assert [r["headers"].get("User-Agent") for r in server.seen] == [USER_AGENT] * 3


def test_field_manager_on_writes_with_a_body_only(server: Recorder):
    client = make_client(server)
    client.request("POST", "/api/v1/namespaces/ns/pods/p/binding", {"kind": "Binding"})
    client.request("PUT", "/api/v1/nodes/n", {"kind": "Node"})
    client.request("PATCH", "/api/v1/namespaces/ns/pods/p/status", {}, query={"dryRun": "All"},
                   content_type="application/merge-patch+json")
    client.request("GET", "/api/v1/pods", query={"limit": 5})
    client.request("DELETE", "/api/v1/namespaces/ns/pods/p")
    managers = [r["query"].get("fieldManager") for r in server.seen]
    assert managers == [["gangsched"]] * 3 + [None, None]
    assert server.seen[2]["query"]["dryRun"] == ["All"]  # the caller's query is kept
    assert server.seen[3]["query"] == {"limit": ["5"]}


def test_field_manager_is_configurable(server: Recorder):
    client = make_client(server, field_manager="gangsched-bench")
    client.request("POST", "/api/v1/namespaces/ns/events", {})
    client.field_manager = ""  # off: the server falls back to the User-Agent
    client.request("POST", "/api/v1/namespaces/ns/events", {})
    client.field_manager = "other"
    client.request("POST", "/api/v1/namespaces/ns/events", {}, query={"fieldManager": "explicit"})
    assert [r["query"].get("fieldManager") for r in server.seen] == [["gangsched-bench"], None, ["explicit"]]


def test_fence_down_stops_writes_without_sending_them(server: Recorder):
    up = {"ok": True}
    client = make_client(server, fence=lambda: up["ok"])
    client.request("POST", "/api/v1/namespaces/ns/events", {})
    up["ok"] = False
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(ApiError) as info:
            client.request(method, "/api/v1/namespaces/ns/pods/p", {})
        assert info.value.reason == NOT_LEADER and info.value.status == 0
        assert not info.value.retriable  # the binder must not retry it
    client.request("GET", "/api/v1/pods")  # reads go on: the informers keep the cache warm for a comeback
    client.request("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", {}, fenced=False)
    assert [r["method"] for r in server.seen] == ["POST", "GET", "PUT"]
    assert client.requests == 3


def test_fence_is_settable_and_checked_after_the_rate_limiters_wait(server: Recorder):
    client = make_client(server)
    up = {"ok": True}
    client.fence = lambda: up["ok"]
    client.limiter.acquire = lambda: up.update(ok=False)  # the lease is lost while the write waits its turn
    with pytest.raises(ApiError, match=NOT_LEADER):
        client.request("POST", "/api/v1/namespaces/ns/pods/p/binding", {})
    assert server.seen == []


class LeaseStub:
    """The elector's side of the API: its own Lease requests, answered in memory."""

    def __init__(self) -> None:
        self.lease: dict | None = None

    def request(self, method: str, path: str, body: Any = None, **_: Any) -> dict:
        if method == "GET":
            if self.lease is None:
                raise ApiError(404, "NotFound")
            return json.loads(json.dumps(self.lease))
        self.lease = body
        return body


def test_the_electors_fence_stops_a_bind_once_holds_turns_false(server: Recorder):
    now = [0.0]
    elector = LeaderElector(LeaseStub(), "ns", "gangsched", "a", clock=lambda: now[0])
    assert elector.acquire(threading.Event())
    client = make_client(server, fence=elector.holds)
    client.request("POST", "/api/v1/namespaces/ns/pods/p0/binding", {"kind": "Binding"})
    now[0] = 9.9
    client.request("POST", "/api/v1/namespaces/ns/pods/p1/binding", {"kind": "Binding"})
    now[0] = 10.0  # renew_deadline after the acquire, and no renewal since
    with pytest.raises(ApiError) as info:
        client.request("POST", "/api/v1/namespaces/ns/pods/p2/binding", {"kind": "Binding"})
    assert info.value.reason == NOT_LEADER and not info.value.retriable
    assert [r["path"].split("/")[-2] for r in server.seen] == ["p0", "p1"]


def test_timeout_bounds_the_whole_request(server: Recorder):
    client = make_client(server)
    server.delay = 2.0
    start = time.monotonic()
    with pytest.raises(ApiError) as info:
        client.request("PUT", "/apis/coordination.k8s.io/v1/namespaces/ns/leases/l", {}, timeout=0.3,
                       fenced=False)
    assert info.value.status == 0 and time.monotonic() - start < 1.5


def test_one_keep_alive_connection_serves_requests_one_after_another_threads_included(server: Recorder):
    client = make_client(server)
    for _ in range(3):
        client.request("GET", "/api/v1/pods")
    for _ in range(3):  # a thread per request, as the extender's handlers are per kube-scheduler connection
        t = threading.Thread(target=client.request, args=("GET", "/api/v1/pods"))
        t.start()
        t.join()
    assert len(server.seen) == 6 and len({r["peer"] for r in server.seen}) == 1


def test_a_connection_the_server_closed_while_idle_is_replaced_not_failed(server: Recorder):
    client = make_client(server)
    server.hang_up = "after"
    client.request("GET", "/api/v1/pods")
    time.sleep(0.2)  # the server's close reaches us
    client.request("POST", "/api/v1/namespaces/ns/pods/p/binding", {"target": {"name": "n"}})
    assert [r["method"] for r in server.seen] == ["GET", "POST"]  # the POST sent once, on a new connection
    assert len({r["peer"] for r in server.seen}) == 2


def test_a_connection_lost_mid_request_is_an_error_and_not_resent(server: Recorder):
    client = make_client(server)
    server.hang_up = "before"
    with pytest.raises(ApiError) as info:
        client.request("POST", "/api/v1/namespaces/ns/pods/p/binding", {"target": {"name": "n"}})
    assert info.value.status == 0 and info.value.retriable
    assert len(server.seen) == 1  # a POST the server may have applied is not sent again
    server.hang_up = ""
    assert client.request("GET", "/api/v1/pods") == {}  # and the next request gets a new connection


def test_managed_fields_are_cut_from_a_pod_s_json_and_the_rest_kept() -> None:
    import orjson

    from gangsched.live.kube import cut_managed_fields

    pod = {"kind": "Pod", "apiVersion": "v1",
           "metadata": {"name": "p", "labels": {"managedFields": "x"},
                        "annotations": {"a": ',"managedFields":[ ]},"spec":{'},
                        "ownerReferences": [{"kind": "Job", "name": "j"}], "finalizers": ["f"],
                        "managedFields": [{"manager": "m", "fieldsV1": {"f:metadata": {"f:labels": {".": {}}},
                                                                         "f:spec": {"k:{\"name\":\"c\"}": {}}}}]},
           "spec": {"containers": [{"name": "c"}]}, "status": {"phase": "Pending"}}
    line = orjson.dumps({"type": "ADDED", "object": pod}).decode()
    lean = orjson.loads(cut_managed_fields(line))["object"]
    assert lean == {**pod, "metadata": {k: v for k, v in pod["metadata"].items() if k != "managedFields"}}
    no_spec = orjson.dumps({"type": "ADDED", "object": {"metadata": {"name": "x", "managedFields": []}}}).decode()
    assert cut_managed_fields(no_spec) == no_spec  # no mark to end at: left whole
