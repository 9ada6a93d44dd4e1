"""Smoke test of `benchmarks/live_throughput.py` against the session's dev cluster: a tiny run of every scheduler
binds every pod, writes the rows it documents, and leaves none of its nodes behind. No timing is asserted."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

from gangsched.devcluster import DevCluster
from gangsched.live.kube import KubeClient

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live_throughput.py"


def load_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("live_throughput", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_live_throughput_tiny_run(devcluster: DevCluster, tmp_path: Path, capsys) -> None:
    bench = load_script()
    out = tmp_path / "live_throughput.json"
    pods = 128  # one mix block; 90 % of the 20 nodes' 160 GPUs
    rc = bench.main(["--kubeconfig", str(devcluster.kubeconfig), "--nodes", "20", "--pods", str(pods),
                     "--rounds", "1", "--timeout", "120", "--out", str(out)])
    assert rc == 0
    assert "pods bound per second" in capsys.readouterr().out

    doc = json.loads(out.read_text())
    runs = doc["runs"]
    assert {(r["workload"], r["scheduler"]) for r in runs} == {
        (w, s) for w in bench.WORKLOADS for s in bench.SCHEDULERS}
    for r in runs:
        assert r["bound"] == pods, r
        assert "error" not in r, r
        assert r["pods_per_s"] > 0
        assert r["rounds_complete"] == 1 and len(r["rounds"]) == 1, r
        assert r["pods_per_s_min"] <= r["pods_per_s"] <= r["pods_per_s_max"]
        gangs = {"single": 0, "gang8": pods // 8, "gang64": pods // 64, "mix": 5}[r["workload"]]
        if gangs:
            assert r["gangs_complete"] == gangs and r["partial_gangs"] == 0, r
    assert "20/gang8" in doc["comparison"] and "ceiling-go" in doc["comparison"]["20/mix"]["gangsched_over"]
    assert doc["meta"]["kwok_stopped"] is False  # a shared cluster keeps its KWOK

    client = KubeClient.load(str(devcluster.kubeconfig), qps=0)
    nodes, _ = client.list_all("/api/v1/nodes", {"labelSelector": bench.BENCH_LABEL})
    assert nodes == []  # its nodes are deleted, so later tests never see them
