"""Extender mode on the real API server: the real kube-scheduler (built by the dev cluster) configured with
`gangsched extender` for filter, prioritize, bind and preempt, both as processes.

Each test has its own kube-scheduler profile name, so only its own pods reach its scheduler and extender."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from gangsched.devcluster.cluster import free_ports
from gangsched.devcluster.pki import generate_tls
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration
DEPLOY_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "extender" / "kube-scheduler-config.yaml"


class ExtenderProcess:
    """`gangsched extender` as a child process (so it can be SIGKILLed), always on the same port."""

    def __init__(self, kubeconfig: Path, log_path: Path, port: int, *extra: str):
        self.log_path, self.port = log_path, port
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        cmd = [sys.executable, "-m", "gangsched.cli", "extender", "--kubeconfig", str(kubeconfig),
               "--address", "127.0.0.1", "--port", str(port), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_healthy(self, health_port: int) -> None:
        def ok() -> bool:
            assert self.proc.poll() is None, f"extender exited: {self.output()[-2000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False
        wait_for(ok, 30, what="the extender synced")

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Setup:
    """One test's kube-scheduler profile, its extender(s) and its kube-scheduler(s)."""

    def __init__(self, devcluster, tmp_path: Path):
        self.devcluster, self.tmp = devcluster, tmp_path
        self.name = f"gs-ext-{uuid.uuid4().hex[:6]}"
        self.port, self.health = free_ports(2)
        self.extenders: list[ExtenderProcess] = []
        self.schedulers: list = []
        self.tls = None

    def extender(self, *extra: str, bind_wait: float = 15.0) -> ExtenderProcess:
        if self.tls is not None:
            extra = ("--tls-cert", str(self.tls.server_crt), "--tls-key", str(self.tls.server_key),
                     "--client-ca", str(self.tls.ca), *extra)
        p = ExtenderProcess(self.devcluster.kubeconfig, self.tmp / f"extender-{len(self.extenders)}.log", self.port,
                            "--scheduler-name", self.name, "--health-port", str(self.health),
                            "--bind-wait", str(bind_wait), *extra)
        self.extenders.append(p)
        p.wait_healthy(self.health)
        return p

    def kube_scheduler(self) -> None:
        if self.tls is None:
            self.schedulers.append(self.devcluster.start_kube_scheduler_with_extender(
                self.name, f"http://127.0.0.1:{self.port}"))
            return
        # with TLS, the shipped deploy/extender/kube-scheduler-config.yaml, pointed at this test's files
        cfg = yaml.safe_load(DEPLOY_CONFIG.read_text())
        cfg["profiles"][0]["schedulerName"] = self.name
        (ext,) = cfg["extenders"]
        ext["urlPrefix"] = f"https://127.0.0.1:{self.port}"
        ext["tlsConfig"].update(caFile=str(self.tls.ca), certFile=str(self.tls.client_crt),
                                keyFile=str(self.tls.client_key))
        self.schedulers.append(self.devcluster.start_kube_scheduler(self.name, config=cfg))

    def plain_kube_scheduler(self, name: str) -> None:
        self.schedulers.append(self.devcluster.start_kube_scheduler(name))

    def close(self) -> None:
        for h in self.schedulers:
            h.stop()
        for p in self.extenders:
            p.stop()
        for p in self.extenders:
            print(f"--- {p.log_path.name}\n{p.output()[-4000:]}")
        for h in self.schedulers:
            print(f"--- {h.log.name}\n{h.log_tail(40)}")


@pytest.fixture
def setup(devcluster, tmp_path):
    s = Setup(devcluster, tmp_path)
    yield s
    s.close()


def gang(cluster: Cluster, setup: Setup, group: str, n: int, min_member: int | None = None, **pod) -> list[str]:
    cluster.podgroup(group, min_member or n)
    names = [f"{group}-{i}" for i in range(n)]
    for name in names:
        cluster.pod(name, group=group, scheduler=setup.name, **pod)
    return names


def said(cluster: Cluster, pod: str, text: str) -> list[dict]:
    return [e for e in cluster.events(pod, "FailedScheduling") if text in e["message"]]


def test_a_gang_is_bound_all_or_nothing_over_mutual_tls(cluster: Cluster, setup: Setup, tmp_path):
    cluster.add_nodes(2, gpus=4)
    setup.tls = generate_tls(tmp_path / "tls")
    setup.extender()
    setup.kube_scheduler()
    cluster.podgroup("g", 4)
    for i in range(3):
        cluster.pod(f"g-{i}", gpus=2, group="g", scheduler=setup.name)
    # kube-scheduler asked the extender, which placed nothing: the gang is incomplete. The count is what the
    # extender saw when asked: g-2 came after the others in its watch, so 3; an earlier member may have been
    # asked (and set aside by kube-scheduler, which no other pod's creation re-queues) before its mates existed
    wait_for(lambda: said(cluster, "g-2", "3 of minMember=4 pods exist") and all(
        said(cluster, f"g-{i}", "of minMember=4 pods exist") for i in range(2)), 30,
        what="kube-scheduler's FailedScheduling with the extender's reason")
    assert not cluster.bound()
    cluster.pod("g-3", gpus=2, group="g", scheduler=setup.name)
    wait_for(lambda: len(cluster.bound("g-")) == 4, 30, what="the gang bound")
    use = cluster.gpu_use_ok()  # every bound GPU pod carries its devices; none handed out twice
    assert sorted(len(d) for d in use.values()) == [4, 4]
    with urllib.request.urlopen(f"http://127.0.0.1:{setup.health}/metrics", timeout=5) as r:
        metrics = r.read().decode()
    assert 'gangsched_extender_request_duration_seconds_count{verb="filter"}' in metrics
    assert "gangsched_extender_pods_bound_total 4.0" in metrics


def test_interleaved_gangs_one_whole_the_other_none(cluster: Cluster, setup: Setup):
    cluster.add_nodes(3, gpus=4)  # 12 GPUs, two gangs of 8
    # kube-scheduler alone: both gangs placed in part, neither can start
    plain = f"{setup.name}-plain"
    setup.plain_kube_scheduler(plain)
    for g in ("pa", "pb"):
        cluster.podgroup(g, 8)
    for i in range(8):
        for g in ("pa", "pb"):
            cluster.pod(f"{g}-{i}", group=g, scheduler=plain)
    wait_for(lambda: len(cluster.bound("p")) == 12, 30, what="kube-scheduler alone filling the 12 GPUs")
    alone = {g: len(cluster.bound(f"{g}-")) for g in ("pa", "pb")}
    assert all(0 < n < 8 for n in alone.values()), alone  # two half-bound gangs
    cluster.delete_pods("p")

    setup.extender()
    setup.kube_scheduler()
    for g in ("a", "b"):
        cluster.podgroup(g, 8)
    for i in range(8):
        for g in ("a", "b"):
            cluster.pod(f"{g}-{i}", group=g, scheduler=setup.name)
    wait_for(lambda: len(cluster.bound("a-")) == 8 or len(cluster.bound("b-")) == 8, 60, what="one gang bound whole")
    winner, loser = ("a", "b") if len(cluster.bound("a-")) == 8 else ("b", "a")
    wait_for(lambda: said(cluster, f"{loser}-0", "minMember=8"), 30, what="the other gang told why it waits")
    assert not cluster.bound(f"{loser}-"), cluster.bound(f"{loser}-")
    cluster.gpu_use_ok()
    # the winner goes: the other gang now fits, whole
    cluster.delete_pods(f"{winner}-")
    wait_for(lambda: len(cluster.bound(f"{loser}-")) == 8, 60, what="the other gang bound whole")
    cluster.gpu_use_ok()


def test_a_member_kube_scheduler_rejects_keeps_the_whole_gang_unbound(cluster: Cluster, setup: Setup):
    nodes = cluster.add_nodes(2, gpus=4)
    # a pod every member of the gang but one may live beside; that one's anti-affinity spans all the nodes
    blocker = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": "blocker", "namespace": cluster.ns, "labels": {"role": "blocker"}},
               "spec": {"nodeName": nodes[0], "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "main", "image": "busybox"}]}}
    cluster.c.request("POST", f"/api/v1/namespaces/{cluster.ns}/pods", blocker)
    setup.extender(bind_wait=5)
    setup.kube_scheduler()
    names = gang(cluster, setup, "g", 3, min_member=4)
    body = {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "g-3", "namespace": cluster.ns, "labels": {"scheduling.x-k8s.io/pod-group": "g"}},
            "spec": {"schedulerName": setup.name, "nodeSelector": {"gangsched.test/ns": cluster.ns},
                     "terminationGracePeriodSeconds": 0,
                     "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                         "labelSelector": {"matchLabels": {"role": "blocker"}}, "topologyKey": "gangsched.test/ns"}]}},
                     "containers": [{"name": "main", "image": "busybox", "resources": {
                         "requests": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"},
                         "limits": {"nvidia.com/gpu": "1"}}}]}}
    cluster.c.request("POST", f"/api/v1/namespaces/{cluster.ns}/pods", body)
    wait_for(lambda: said(cluster, "g-3", "anti-affinity"), 30, what="kube-scheduler rejecting g-3")
    # the others reached bind, waited for g-3 there, and were turned back with the gang's reason
    wait_for(lambda: any(said(cluster, n, "reached binding") for n in names), 60, what="the bind barrier timing out")
    assert not [p for p in cluster.bound("g-")], [p["metadata"]["name"] for p in cluster.bound("g-")]
    # the blocker goes: the whole gang binds
    cluster.force_delete("blocker")
    wait_for(lambda: len(cluster.bound("g-")) == 4, 60, what="the gang bound once g-3 fits")
    cluster.gpu_use_ok()


def test_pods_wait_while_the_extender_is_down_and_resume_when_it_returns(cluster: Cluster, setup: Setup):
    cluster.add_nodes(2, gpus=4)
    first = setup.extender()
    setup.kube_scheduler()
    first.kill()
    names = gang(cluster, setup, "g", 4)
    # ignorable: false: kube-scheduler cannot reach the extender, so it places nothing and retries
    wait_for(lambda: said(cluster, names[0], "connection refused"), 30, what="kube-scheduler failing to call it")
    assert not cluster.bound()
    setup.extender()
    wait_for(lambda: len(cluster.bound("g-")) == 4, 60, what="the gang bound once the extender is back")
    cluster.gpu_use_ok()


def test_preemption_through_the_extender_evicts_a_whole_low_gang(cluster: Cluster, setup: Setup, priorities):
    cluster.add_nodes(2, gpus=4)
    setup.extender()
    setup.kube_scheduler()
    low = gang(cluster, setup, "low", 8, priority_class=priorities["low"])
    wait_for(lambda: len(cluster.bound("low-")) == 8, 60, what="the low gang bound")
    uids = {p["metadata"]["uid"] for p in cluster.pods("low-")}
    gang(cluster, setup, "high", 3, priority_class=priorities["high"])  # needs 3 GPUs: fewer than the low gang has
    wait_for(lambda: len(cluster.bound("high-")) == 3, 90, what="the high gang bound whole")
    # the whole low gang went, not only the 3 pods kube-scheduler would have evicted
    assert not uids & {p["metadata"]["uid"] for p in cluster.pods("low-")}, [
        p["metadata"]["name"] for p in cluster.pods("low-") if p["metadata"]["uid"] in uids]
    assert len(low) == 8
    cluster.gpu_use_ok()


def test_podgroup_status_and_a_gang_left_incomplete_gives_back_its_members(cluster: Cluster, setup: Setup):
    cluster.add_nodes(2, gpus=4)
    setup.extender()
    setup.kube_scheduler()
    cluster.podgroup("g", 3, timeout=3)
    names = [f"g-{i}" for i in range(3)]
    for name in names:
        cluster.pod(name, gpus=2, group="g", scheduler=setup.name)
    wait_for(lambda: len(cluster.bound("g-")) == 3, 60, what="the gang bound")
    wait_for(lambda: cluster.group_status("g").get("phase") == "Running", 30, what="PodGroup status Running")
    cluster.delete_pods("g-0")  # a member goes and nobody replaces it: 2 of minMember=3 hold their GPUs
    ev = wait_for(lambda: cluster.events("g", "GangIncomplete"), 30, what="the GangIncomplete Event")
    assert "2 of minMember=3 pods bound" in ev[0]["message"]
    wait_for(lambda: not cluster.pods("g-"), 30, what="the bound members given back")
