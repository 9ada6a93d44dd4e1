"""`gangsched status -o json` (and the `kubectl-gangsched` plugin executable) against the dev cluster, with a real
`gangsched run` placing gangs and posting the FailedScheduling Events the status reads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gangsched.live.translate import GPU_DEVICES_ANNOTATION
from tests.integration.live import wait_for


def status(kubeconfig: Path, *args: str, plugin: bool = False) -> dict:
    if plugin:
        exe = shutil.which("kubectl-gangsched", path=str(Path(sys.executable).parent))
        if exe is None:
            pytest.fail("kubectl-gangsched is not installed: pip install -e . creates it")
        cmd = [exe, "status"]
    else:
        cmd = [sys.executable, "-m", "gangsched.cli", "status"]
    proc = subprocess.run([*cmd, "--kubeconfig", str(kubeconfig), "-o", "json", *args], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_status_json_shows_queue_reasons_running_gangs_and_the_gpu_map(devcluster, cluster, start_scheduler):
    name = f"gs-{cluster.ns}"[:60]  # its own schedulerName: only this test's pods are its pods
    start_scheduler("--scheduler-name", name)
    (node,) = cluster.add_nodes(1, gpus=4)
    cluster.podgroup("run", 2)
    for i in range(2):
        cluster.pod(f"run-{i}", gpus=2, group="run", scheduler=name)
    wait_for(lambda: len(cluster.bound("run-")) == 2, 60, what="gang run bound")
    cluster.podgroup("wait", 2)
    for i in range(2):
        cluster.pod(f"wait-{i}", gpus=2, group="wait", scheduler=name)
    cluster.podgroup("short", 3)
    cluster.pod("short-0", gpus=1, group="short", scheduler=name)
    wait_for(lambda: cluster.events("wait", "FailedScheduling"), 60, what="FailedScheduling on PodGroup wait")

    args = ("-n", cluster.ns, "--scheduler-name", name)
    report = status(devcluster.kubeconfig, *args)
    assert report["namespace"] == cluster.ns
    waiting = {w["gang"]: w for w in report["waiting"]}
    assert set(waiting) == {f"{cluster.ns}/wait", f"{cluster.ns}/short"}
    wait = waiting[f"{cluster.ns}/wait"]
    assert wait["position"] == 1 and wait["kind"] == "PodGroup" and wait["gpus"] == 4
    assert (wait["min_member"], wait["members"], wait["bound"]) == (2, 2, 0)
    latest = max(cluster.events("wait", "FailedScheduling"), key=lambda e: e["lastTimestamp"])
    assert wait["reason"] == latest["message"] and "Insufficient nvidia.com/gpu" in wait["reason"]
    short = waiting[f"{cluster.ns}/short"]
    assert short["position"] is None and "1 of minMember=3 pods exist" in short["reason"]
    assert [r["gang"] for r in report["running"]] == [f"{cluster.ns}/run"]  # short-0 holds no node
    assert report["running"][0]["pods"] == 2 and report["running"][0]["gpus"] == 4
    assert report["running"][0]["nodes"] == [node]
    (ours,) = [n for n in report["nodes"] if n["node"] == node]
    holders = {}
    for p in cluster.bound("run-"):
        for d in p["metadata"]["annotations"][GPU_DEVICES_ANNOTATION].split(","):
            holders[int(d)] = [f"{cluster.ns}/{p['metadata']['name']}"]
    assert {d["index"]: d["pods"] for d in ours["devices"]} == holders  # who holds which device, as annotated
    assert ours["free"] == 0 and ours["model"] == "A100" and ours["gpus"] == 4
    # the kubectl plugin executable says the same
    again = status(devcluster.kubeconfig, *args, plugin=True)
    assert [(w["gang"], w["position"], w["reason"]) for w in again["waiting"]] == \
        [(w["gang"], w["position"], w["reason"]) for w in report["waiting"]]


def test_status_text_when_piped_is_plain(devcluster, cluster, start_scheduler):
    cluster.add_nodes(1, gpus=2)
    cluster.pod("alone", gpus=1, scheduler="nobody-schedules-this")
    proc = subprocess.run([sys.executable, "-m", "gangsched.cli", "status", "--kubeconfig", str(devcluster.kubeconfig),
                           "-n", cluster.ns, "--scheduler-name", "nobody-schedules-this"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "\033[" not in proc.stdout
    assert proc.stdout.splitlines()[0] == f"Waiting gangs (1, namespace {cluster.ns})"
    assert f"{cluster.ns}/alone" in proc.stdout and "not tried yet" in proc.stdout


def test_status_without_a_cluster_is_one_line(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(json.dumps({"apiVersion": "v1", "kind": "Config", "current-context": "x",
                                      "clusters": [{"name": "x", "cluster": {"server": "https://127.0.0.1:1"}}],
                                      "contexts": [{"name": "x", "context": {"cluster": "x", "user": "u"}}],
                                      "users": [{"name": "u", "user": {"token": "t"}}]}))
    proc = subprocess.run([sys.executable, "-m", "gangsched.cli", "status", "--kubeconfig", str(kubeconfig)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("gangsched status: error:")
