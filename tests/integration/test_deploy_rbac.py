"""`gangsched run` under the identity deploy/rbac.yaml gives it, on the real API server (RBAC on): binding,
Events, PodGroup status, leader election and preemption all work with those grants and no others."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gangsched.live.kube import ApiError
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SA_NS, SA = "gangsched-system", "gangsched"


def _apply(cluster: Cluster, doc: dict) -> None:
    kind, meta = doc["kind"], doc["metadata"]
    group_version = doc["apiVersion"]
    base = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    plural = {"ServiceAccount": "serviceaccounts", "ClusterRole": "clusterroles", "Role": "roles",
              "ClusterRoleBinding": "clusterrolebindings", "RoleBinding": "rolebindings"}[kind]
    ns = meta.get("namespace")
    path = f"{base}/namespaces/{ns}/{plural}" if ns else f"{base}/{plural}"
    try:
        cluster.c.request("POST", path, doc)
    except ApiError as e:
        if e.status != 409:
            raise
        cluster.c.request("PUT", f"{path}/{meta['name']}", doc)  # another test's run left it: take ours


@pytest.fixture
def deployed_identity(cluster: Cluster, devcluster, tmp_path: Path) -> Path:
    """deploy/rbac.yaml applied, and a kubeconfig holding a token of its ServiceAccount."""
    try:
        cluster.c.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                         "metadata": {"name": SA_NS}})
    except ApiError as e:
        if e.status != 409:
            raise
    for doc in yaml.safe_load_all((DEPLOY / "rbac.yaml").read_text()):
        if doc:
            _apply(cluster, doc)
    token = cluster.c.request("POST", f"/api/v1/namespaces/{SA_NS}/serviceaccounts/{SA}/token",
                              {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                               "spec": {"expirationSeconds": 3600}})["status"]["token"]
    config = yaml.safe_load(Path(devcluster.kubeconfig).read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path = tmp_path / "gangsched-sa.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_deployed_grants_cover_scheduling_and_preemption(cluster: Cluster, start_scheduler, deployed_identity,
                                                             priorities):
    cluster.add_nodes(1, gpus=4, kwok=False)
    sched = start_scheduler("--kubeconfig", str(deployed_identity), "--leader-elect", "--lease-namespace",
                            SA_NS, "--lease-name", f"gangsched-{cluster.ns}")
    cluster.podgroup("low", 4)
    for i in range(4):
        cluster.pod(f"low-{i}", gpus=1, group="low", priority_class=priorities["low"], grace=30)
    wait_for(lambda: len(cluster.bound("low-")) == 4, 30, what="the low gang bound")
    wait_for(lambda: cluster.group_status("low").get("phase") == "Scheduled", 30, what="PodGroup status")
    cluster.podgroup("high", 4)
    for i in range(4):
        cluster.pod(f"high-{i}", gpus=1, group="high", priority_class=priorities["high"])
    wait_for(lambda: all(any(c["type"] == "DisruptionTarget" for c in p["status"].get("conditions") or [])
                         and p["metadata"].get("deletionTimestamp") for p in cluster.pods("low-")),
             30, what="the low gang evicted with its DisruptionTarget condition")
    wait_for(lambda: all(p["status"].get("nominatedNodeName") for p in cluster.pods("high-")), 30,
             what="the preemptor's pods nominated")
    assert cluster.events("low-0", "Preempted")
    for i in range(4):
        cluster.force_delete(f"low-{i}")
    wait_for(lambda: len(cluster.bound("high-")) == 4, 30, what="the high gang bound")
    out = sched.output()
    assert "403" not in out and "forbidden" not in out.lower(), out[-3000:]
