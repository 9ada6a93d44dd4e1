"""Fixtures for tests against a real local control plane (etcd + kube-apiserver + KWOK, see gangsched.devcluster).

The first run builds the control-plane binaries (several minutes, cached afterwards); integration tests never skip
for want of them.
"""

from __future__ import annotations

import contextlib
import itertools
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gangsched.devcluster import DevCluster, ensure_binaries
from gangsched.live.kube import KubeClient
from tests.integration.live import Cluster, SchedulerProcess


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def devcluster(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Iterator[DevCluster]:
    # A first-run build takes minutes: show its progress lines through pytest's output capture.
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled() if capman else contextlib.nullcontext():
        binaries = ensure_binaries(progress=lambda msg: print(f"\n{msg}", end="", flush=True))
    cluster = DevCluster(tmp_path_factory.mktemp("devcluster"), binaries=binaries)
    cluster.up(progress=lambda msg: None)
    try:
        yield cluster
    finally:
        cluster.down()


@pytest.fixture(scope="session")
def kube(devcluster: DevCluster) -> Iterator[Any]:
    """A `kubernetes.client.ApiClient` with the cluster's admin identity."""
    with devcluster.api_client() as api:
        yield api


@pytest.fixture
def namespace(kube: Any) -> str:
    """A fresh namespace per test. Never deleted: without a controller-manager it would stay Terminating anyway,
    and names are unique, so leftovers cannot collide."""
    from kubernetes import client

    name = f"t-{uuid.uuid4().hex[:10]}"
    client.CoreV1Api(kube).create_namespace({"metadata": {"name": name}})
    return name


# ---- `gangsched run` against the API server: a namespace with its own nodes, and scheduler processes ------------
@pytest.fixture
def cluster(devcluster, request):
    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    ns = f"t{uuid.uuid4().hex[:6]}-{request.node.name.removeprefix('test_').replace('_', '-')[:30].rstrip('-')}"
    client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    c = Cluster(client, ns)
    yield c
    c.delete_pods()
    for node in c.nodes:
        client.request("DELETE", f"/api/v1/nodes/{node}")


@pytest.fixture
def start_scheduler(devcluster, tmp_path):
    procs: list[SchedulerProcess] = []
    counter = itertools.count()

    def start(*extra: str) -> SchedulerProcess:
        p = SchedulerProcess(devcluster.kubeconfig, tmp_path / f"gangsched-{next(counter)}.log", *extra)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()
    for p in procs:
        print(f"--- {p.log_path.name}\n{p.output()[-4000:]}")


@pytest.fixture
def priorities(cluster):
    """Two PriorityClasses of the test's own, {"low": name (value 100), "high": name (value 10,000)}."""
    made = {}
    for level, value in {"low": 100, "high": 10_000}.items():
        name = f"{cluster.ns}-{level}"
        cluster.c.request("POST", "/apis/scheduling.k8s.io/v1/priorityclasses",
                          {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
                           "metadata": {"name": name}, "value": value})
        made[level] = name
    yield made
    for name in made.values():
        cluster.c.request("DELETE", f"/apis/scheduling.k8s.io/v1/priorityclasses/{name}")
