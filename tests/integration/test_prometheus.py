"""A real Prometheus (built from its Go module, cached) scrapes `gangsched run` on the dev cluster and evaluates
the shipped rules; the test asks Prometheus over its HTTP API what it saw."""

from __future__ import annotations

import json
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from gangsched.devcluster.binaries import ensure_prometheus
from gangsched.devcluster.cluster import free_ports
from tests.integration.live import wait_for

RULES = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "gangsched-rules.yaml"


class PromServer:
    def __init__(self, binary: Path, workdir: Path, target: str):
        (port,) = free_ports(1)
        self.url = f"http://127.0.0.1:{port}"
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "gangsched", "static_configs": [{"targets": [target]}]}]}))
        self.log = open(workdir / "prometheus.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen([str(binary), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
                                      f"--web.listen-address=127.0.0.1:{port}"], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, what="Prometheus ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}", timeout=5) as r:
            body = json.load(r)
        assert body["status"] == "success", body
        return body["data"]

    def value(self, query: str) -> float | None:
        """The single sample an instant query returns, or None if it returns nothing (yet)."""
        result = self.api("query", query=query)["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture
def prometheus_bin(pytestconfig: pytest.Config) -> Path:
    capman = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capman.global_and_fixture_disabled():  # a first build takes minutes: show its progress
        return ensure_prometheus(progress=lambda msg: print(f"\n{msg}", end="", flush=True)).prometheus


def test_prometheus_scrapes_the_scheduler_and_evaluates_the_rules(cluster, start_scheduler, prometheus_bin,
                                                                   tmp_path):
    name = f"gs-{cluster.ns}"[:60]  # its own schedulerName: only this test's pods are its pods
    (health,) = free_ports(1)
    start_scheduler("--scheduler-name", name, "--health-port", str(health))
    nodes = cluster.add_nodes(2, gpus=8)
    for n in nodes:  # a node pool, as GKE labels it
        cluster.c.request("PATCH", f"/api/v1/nodes/{n}", {"metadata": {"labels": {
            "cloud.google.com/gke-nodepool": cluster.ns}}}, content_type="application/merge-patch+json")
    cluster.podgroup("train", 4)
    for i in range(4):
        cluster.pod(f"train-{i}", gpus=2, group="train", scheduler=name)
    cluster.pod("huge", gpus=16, scheduler=name)  # more than any node has: waits for ever
    wait_for(lambda: len(cluster.bound("train-")) == 4, 60, what="the gang bound")

    prom = PromServer(prometheus_bin, tmp_path, f"127.0.0.1:{health}")
    try:
        pool = cluster.ns
        wait_for(lambda: prom.value('up{job="gangsched"}') == 1, 60, what="the target up")
        wait_for(lambda: prom.value('gangsched_schedule_attempts_total{result="scheduled"}') == 1, 60,
                 what="one scheduled attempt scraped")
        assert (prom.value('gangsched_schedule_attempts_total{result="unschedulable"}') or 0) >= 1
        assert prom.value("gangsched_gang_scheduling_duration_seconds_count") == 1
        assert prom.value("gangsched_pods_bound_total") == 4
        assert prom.value('sum(gangsched_binding_duration_seconds_count{result="bound"})') == 4
        wait_for(lambda: prom.value(f'sum(gangsched_node_gpus{{pool="{pool}",state="allocated"}})') == 8, 30,
                 what="8 GPUs allocated in the pool")
        assert prom.value(f'sum(gangsched_node_gpus{{pool="{pool}",state="free"}})') == 8
        assert prom.value(f'gangsched_node_gpus{{pool="{pool}",model="A100",state="capacity"}}') == 16
        assert prom.value('gangsched_pending_pods{queue="default",priority="0"}') == 1
        assert prom.value("gangsched_gpu_fragmentation_ratio") is not None
        assert prom.value('count(gangsched_build_info{profile="default"})') == 1
        # the types Prometheus learned from the scrape: real counters and histograms, not gauges
        meta = prom.api("metadata")
        assert meta["gangsched_schedule_attempts_total"][0]["type"] == "counter"
        assert meta["gangsched_pods_bound_total"][0]["type"] == "counter"
        assert meta["gangsched_gang_scheduling_duration_seconds"][0]["type"] == "histogram"
        assert meta["gangsched_pending_pods"][0]["type"] == "gauge"
        # the shipped rules load and evaluate
        groups = {g["name"]: g for g in prom.api("rules")["groups"]}
        assert set(groups) == {"gangsched.recording", "gangsched.alerts"}
        assert all(r["health"] == "ok" for g in groups.values() for r in g["rules"]), groups
        wait_for(lambda: prom.value("gangsched:gpu_allocation:ratio") is not None, 30, what="a recording rule")
        assert prom.value("gangsched:pending_gangs:sum") == 1
    finally:
        prom.stop()
