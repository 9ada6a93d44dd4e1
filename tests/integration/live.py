"""Helpers for tests that run `gangsched run` against the dev cluster's real API server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gangsched.devcluster.nodes import KWOK_ANNOTATION, gpu_node_manifest
from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.translate import GPU_DEVICES_ANNOTATION, POD_GROUP_LABEL

PG_PATH = "/apis/scheduling.x-k8s.io/v1alpha1/namespaces/{ns}/podgroups"


def wait_for(cond: Callable[[], Any], timeout: float = 30.0, interval: float = 0.2, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


class SchedulerProcess:
    """`gangsched run` as a child process, as it runs in production (so it can be SIGKILLed)."""

    def __init__(self, kubeconfig: Path, log_path: Path, *extra: str):
        self.log_path = log_path
        self.log = open(log_path, "ab")  # noqa: SIM115 (closed in stop)
        cmd = [sys.executable, "-m", "gangsched.cli", "run", "--kubeconfig", str(kubeconfig), *extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()
        return self.proc.returncode

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


class Cluster:
    """Test-side API access for one namespace, with its own nodes (labelled so only its pods land there)."""

    def __init__(self, client: KubeClient, namespace: str):
        self.c = client
        self.ns = namespace
        self.nodes: list[str] = []

    def add_nodes(self, count: int, gpus: int, extra: dict[str, str] | None = None, kwok: bool = True) -> list[str]:
        """Fake GPU nodes only this namespace's pods select; `extra`: more allocatable (ephemeral-storage...).
        `kwok=False`: nodes nobody runs (Ready from creation, and nothing marks them otherwise): their pods stay
        Pending once bound, and a deleted one stays terminating for its grace period, until `force_delete`."""
        names = []
        for i in range(len(self.nodes), len(self.nodes) + count):
            node = gpu_node_manifest(f"{self.ns}-n{i}", gpus=gpus, gpu_model="A100", cpu="32", memory="256Gi")
            node["metadata"]["labels"]["gangsched.test/ns"] = self.ns
            if not kwok:
                node["metadata"]["annotations"].pop(KWOK_ANNOTATION)
                node["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
            for key in ("capacity", "allocatable"):
                node["status"][key].update(extra or {})
            self.c.request("POST", "/api/v1/nodes", node)
            names.append(node["metadata"]["name"])
        self.nodes += names
        wait_for(lambda: all(self._ready(n) for n in names), 30, what="nodes Ready")
        return names

    def _ready(self, name: str) -> bool:
        node = self.c.request("GET", f"/api/v1/nodes/{name}")
        return any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", []))

    def podgroup(self, name: str, min_member: int, timeout: int | None = None) -> dict:
        spec: dict[str, Any] = {"minMember": min_member}
        if timeout is not None:
            spec["scheduleTimeoutSeconds"] = timeout
        body = {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
                "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        return self.c.request("POST", PG_PATH.format(ns=self.ns), body)

    def pod(self, name: str, gpus: int = 1, group: str | None = None, volcano: bool = False,
            scheduler: str = "gangsched", cpu: str = "1", gates: list[str] | None = None,
            priority_class: str | None = None, grace: int = 0) -> dict:
        meta: dict[str, Any] = {"name": name, "namespace": self.ns, "labels": {}, "annotations": {}}
        if group and volcano:
            meta["annotations"]["scheduling.k8s.io/group-name"] = group
        elif group:
            meta["labels"][POD_GROUP_LABEL] = group
        res = {"cpu": cpu, "memory": "1Gi"}
        limits = {"nvidia.com/gpu": str(gpus)} if gpus else {}
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
            "schedulerName": scheduler, "nodeSelector": {"gangsched.test/ns": self.ns},
            "terminationGracePeriodSeconds": grace,
            "containers": [{"name": "main", "image": "busybox", "resources": {"requests": {**res, **limits},
                                                                              "limits": limits}}]}}
        if gates:
            body["spec"]["schedulingGates"] = [{"name": g} for g in gates]
        if priority_class:
            body["spec"]["priorityClassName"] = priority_class
        return self.c.request("POST", f"/api/v1/namespaces/{self.ns}/pods", body)

    def force_delete(self, name: str) -> None:
        """What a kubelet does once a terminating pod's containers stopped: the pod goes."""
        try:
            self.c.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{name}",
                           {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0})
        except ApiError as e:
            if e.status != 404:
                raise

    def pods(self, prefix: str = "") -> list[dict]:
        items = self.c.request("GET", f"/api/v1/namespaces/{self.ns}/pods")["items"]
        return [p for p in items if p["metadata"]["name"].startswith(prefix)]

    def bound(self, prefix: str = "") -> list[dict]:
        return [p for p in self.pods(prefix) if p["spec"].get("nodeName")]

    def delete_pods(self, prefix: str = "") -> None:
        for p in self.pods(prefix):
            self.force_delete(p["metadata"]["name"])
        wait_for(lambda: not self.pods(prefix), 30, what=f"pods {prefix}* gone")

    def events(self, name: str, reason: str | None = None) -> list[dict]:
        items = self.c.request("GET", f"/api/v1/namespaces/{self.ns}/events")["items"]
        return [e for e in items if e["involvedObject"].get("name") == name
                and (reason is None or e["reason"] == reason)]

    def group_status(self, name: str) -> dict:
        return self.c.request("GET", f"{PG_PATH.format(ns=self.ns)}/{name}").get("status") or {}

    def gpu_use_ok(self) -> dict[str, list[int]]:
        """Devices per node of every active pod; asserts no device is handed out twice and no node over-booked."""
        use: dict[str, list[int]] = {}
        for p in self.pods():
            node = p["spec"].get("nodeName")
            if not node or p["status"].get("phase") in ("Succeeded", "Failed"):
                continue
            want = int(p["spec"]["containers"][0]["resources"].get("limits", {}).get("nvidia.com/gpu", 0))
            devices = [int(d) for d in (p["metadata"].get("annotations") or {}).get(
                GPU_DEVICES_ANNOTATION, "").split(",") if d]
            assert len(devices) == want, f"{p['metadata']['name']}: devices {devices} for {want} GPU(s)"
            if want:
                use.setdefault(node, []).extend(devices)
        for node, devices in use.items():
            assert len(devices) == len(set(devices)), f"{node}: a GPU handed out twice: {sorted(devices)}"
            cap = int(self.c.request("GET", f"/api/v1/nodes/{node}")["status"]["allocatable"]["nvidia.com/gpu"])
            assert all(0 <= d < cap for d in devices), f"{node}: devices {devices} beyond its {cap} GPUs"
        return use
