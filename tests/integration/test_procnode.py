"""Process nodes against the real dev cluster: bound pods run as local processes, with per-pod addresses and names."""

from __future__ import annotations

import json
import os
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gangsched.devcluster import DevCluster
from gangsched.devcluster.cluster import pid_alive
from gangsched.devcluster.procnode import PROCESS_NODE_LABEL, ProcessNodes
from gangsched.live.kube import ApiError, KubeClient
from tests.integration.live import wait_for

TIMEOUT = 90.0  # the machine is shared with builds and benchmarks: generous, but every wait has one


@pytest.fixture
def client(devcluster: DevCluster) -> KubeClient:
    return KubeClient.load(str(devcluster.kubeconfig), qps=0)


@pytest.fixture
def node_names() -> list[str]:
    prefix = f"pn-{uuid.uuid4().hex[:6]}"
    return [f"{prefix}-0", f"{prefix}-1"]


@pytest.fixture
def procnodes(client: KubeClient, node_names: list[str], tmp_path: Path) -> Iterator[ProcessNodes]:
    network = os.environ.get("GANGSCHED_PROCNODE_NETWORK", "auto")  # "loopback" tries the fallback
    with ProcessNodes(client, node_names, gpus_per_node=4, workdir=tmp_path / "procnodes", network=network) as pn:
        yield pn


def make_pod(client: KubeClient, ns: str, name: str, code: str, node: str | None = None,
             env: list[dict[str, Any]] | None = None) -> dict:
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}, "spec": {
        "schedulerName": "nobody",  # bound by hand below, never by a scheduler
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": "ignored", "command": ["python", "-c", textwrap.dedent(code)],
                        "env": env or [], "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}}
    pod = client.request("POST", f"/api/v1/namespaces/{ns}/pods", body)
    if node:
        bind(client, ns, name, node)
    return pod


def bind(client: KubeClient, ns: str, name: str, node: str) -> None:
    client.request("POST", f"/api/v1/namespaces/{ns}/pods/{name}/binding", {
        "apiVersion": "v1", "kind": "Binding", "metadata": {"name": name},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node}})


def get_pod(client: KubeClient, ns: str, name: str) -> dict | None:
    try:
        return client.request("GET", f"/api/v1/namespaces/{ns}/pods/{name}")
    except ApiError as e:
        if e.status == 404:
            return None
        raise


def wait_phase(client: KubeClient, ns: str, name: str, *phases: str, timeout: float = TIMEOUT) -> dict:
    def done() -> dict | None:
        pod = get_pod(client, ns, name)
        return pod if pod and pod["status"].get("phase") in phases else None

    return wait_for(done, timeout, 0.3, what=f"pod {name} in phase {'/'.join(phases)}")


def terminated(pod: dict) -> dict:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def test_nodes_registered(client: KubeClient, procnodes: ProcessNodes, node_names: list[str]) -> None:
    for name in node_names:
        node = client.request("GET", f"/api/v1/nodes/{name}")
        assert node["metadata"]["labels"][PROCESS_NODE_LABEL] == "true"
        assert not any(k.startswith("kwok.x-k8s.io") for k in node["metadata"].get("annotations") or {})
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "4"
        assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    assert procnodes.mode in ("netns", "loopback")


def test_pod_runs_and_reports_exit(client: KubeClient, procnodes: ProcessNodes, node_names: list[str],
                                   namespace: str) -> None:
    ns = namespace
    make_pod(client, ns, "ok", """
        import json, os, socket
        out = {k: os.environ.get(k) for k in ("MY_NAME", "MY_NS", "MY_IP", "MY_NODE", "LITERAL")}
        out["resolved"] = socket.gethostbyname(f"ok.{os.environ['MY_NS']}.svc")
        out["hostname"] = socket.gethostname()
        json.dump(out, open("out.json", "w"))
        print("done")
    """, node_names[0], env=[
        {"name": "LITERAL", "value": "x-$(MY_NAME)"},  # expands only earlier vars: MY_NAME is defined after it
        {"name": "MY_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "MY_NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "MY_NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}])
    make_pod(client, ns, "bad", "import sys; print('failing'); sys.exit(3)", node_names[1])

    ok = wait_phase(client, ns, "ok", "Succeeded", "Failed")
    log = procnodes.log_path(ns, "ok").read_text()
    assert ok["status"]["phase"] == "Succeeded", log
    assert terminated(ok)["exitCode"] == 0 and terminated(ok)["reason"] == "Completed"
    assert "done" in log
    ip = ok["status"]["podIP"]
    out = json.loads((procnodes.pod_dir(ns, "ok") / "out.json").read_text())
    assert out == {"MY_NAME": "ok", "MY_NS": ns, "MY_IP": ip, "MY_NODE": node_names[0], "LITERAL": "x-$(MY_NAME)",
                   "resolved": ip, "hostname": "ok" if procnodes.mode == "netns" else out["hostname"]}
    assert ok["status"]["hostIP"] and {c["type"] for c in ok["status"]["conditions"]} >= {"Ready", "PodScheduled"}

    bad = wait_phase(client, ns, "bad", "Succeeded", "Failed")
    assert bad["status"]["phase"] == "Failed"
    assert terminated(bad)["exitCode"] == 3 and terminated(bad)["reason"] == "Error"
    assert "failing" in procnodes.log_path(ns, "bad").read_text()


def test_pods_share_a_port_and_find_each_other_by_name(client: KubeClient, procnodes: ProcessNodes,
                                                       node_names: list[str], namespace: str) -> None:
    if procnodes.mode != "netns":
        pytest.skip("two pods on one port need a network namespace each (not available here)")
    ns = namespace
    server = """
        import os, socket
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", 2222))
        s.listen()
        s.settimeout(120)  # a deadline: never outlive a broken test
        conn, _ = s.accept()
        conn.sendall(os.environ["HOSTNAME"].encode())
        conn.close()
    """
    make_pod(client, ns, "cli", f"""
        import json, socket, time
        got = {{}}
        deadline = time.monotonic() + 120
        for peer in ("srv-a.{ns}.svc", "srv-b.{ns}.svc.cluster.local"):
            while True:  # peers may start after us: retry, as training code does
                try:
                    with socket.create_connection((peer, 2222), timeout=5) as c:
                        got[peer] = c.recv(100).decode()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        json.dump(got, open("got.json", "w"))
    """, node_names[1])
    # The client runs first: names of peers that start later must appear in its (already mounted) hosts file.
    wait_phase(client, ns, "cli", "Running")
    for name in ("srv-a", "srv-b"):  # both on node 0, both on :2222
        make_pod(client, ns, name, server, node_names[0])
    for name in ("cli", "srv-a", "srv-b"):
        pod = wait_phase(client, ns, name, "Succeeded", "Failed")
        assert pod["status"]["phase"] == "Succeeded", procnodes.log_path(ns, name).read_text()
    got = json.loads((procnodes.pod_dir(ns, "cli") / "got.json").read_text())
    assert got == {f"srv-a.{ns}.svc": "srv-a", f"srv-b.{ns}.svc.cluster.local": "srv-b"}
    ips = {get_pod(client, ns, n)["status"]["podIP"] for n in ("srv-a", "srv-b", "cli")}  # type: ignore[index]
    assert len(ips) == 3


def test_deleting_a_running_pod_kills_it(client: KubeClient, procnodes: ProcessNodes, node_names: list[str],
                                         namespace: str) -> None:
    ns = namespace
    make_pod(client, ns, "sleeper", """
        import time
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.5)
    """, node_names[0])
    wait_phase(client, ns, "sleeper", "Running")
    pid = procnodes.pid(ns, "sleeper")
    assert pid is not None and pid_alive(pid)
    client.request("DELETE", f"/api/v1/namespaces/{ns}/pods/sleeper")  # graceful: the agent must finish it
    wait_for(lambda: get_pod(client, ns, "sleeper") is None, TIMEOUT, 0.3, what="pod sleeper gone")
    wait_for(lambda: not pid_alive(pid), 15, 0.1, what=f"pid {pid} gone")


def test_pods_bound_before_the_agent_starts(client: KubeClient, node_names: list[str], namespace: str,
                                            tmp_path: Path) -> None:
    ns = namespace
    make_pod(client, ns, "early", "print('early bird')", node_names[0])  # no agent, no node object yet
    make_pod(client, ns, "finished", "raise SystemExit(1)", node_names[0])
    client.request("PATCH", f"/api/v1/namespaces/{ns}/pods/finished/status", {"status": {"phase": "Succeeded"}},
                   content_type="application/merge-patch+json")
    with ProcessNodes(client, node_names, gpus_per_node=2, workdir=tmp_path / "pn") as pn:
        pod = wait_phase(client, ns, "early", "Succeeded", "Failed")
        assert pod["status"]["phase"] == "Succeeded", pn.log_path(ns, "early").read_text()
        assert "early bird" in pn.log_path(ns, "early").read_text()
        assert pn.pid(ns, "finished") is None  # a terminal pod is left alone
        assert get_pod(client, ns, "finished")["status"]["phase"] == "Succeeded"  # type: ignore[index]
    for name in node_names:  # stop() removed the nodes
        with pytest.raises(ApiError) as e:
            client.request("GET", f"/api/v1/nodes/{name}")
        assert e.value.status == 404
