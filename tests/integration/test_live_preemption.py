"""Gang preemption by `gangsched run` on the real API server: a low-priority gang evicted whole for a
high-priority one, no futile eviction, what the victims free held for the preemptor, and a scheduler killed
between eviction and binding."""

from __future__ import annotations

import time

import pytest

from gangsched.live.translate import POD_GROUP_LABEL
from tests.integration.live import Cluster, wait_for

pytestmark = pytest.mark.integration
# The nodes are nobody's (kwok=False), so an evicted pod stays terminating (its 30 s grace period, no kubelet
# to end it sooner) until the test force-deletes it, as a kubelet would once its containers stopped.


def low_gang(cluster: Cluster, pc: str, n: int) -> None:
    cluster.podgroup("low", n)
    for i in range(n):
        cluster.pod(f"low-{i:02d}", gpus=1, group="low", priority_class=pc, grace=30)
    wait_for(lambda: len(cluster.bound("low-")) == n, 30, what="the low gang bound")


def high_gang(cluster: Cluster, pc: str, n: int) -> None:
    cluster.podgroup("high", n)
    for i in range(n):
        cluster.pod(f"high-{i}", gpus=1, group="high", priority_class=pc)


def terminating(cluster: Cluster, prefix: str) -> list[dict]:
    return [p for p in cluster.pods(prefix) if p["metadata"].get("deletionTimestamp")]


def disrupted(pod: dict) -> bool:
    return any(c["type"] == "DisruptionTarget" and c.get("reason") == "PreemptionByScheduler"
               for c in pod["status"].get("conditions") or [])


def test_a_low_gang_is_evicted_whole_for_a_high_gang(cluster: Cluster, start_scheduler, priorities):
    cluster.add_nodes(3, gpus=4, kwok=False)
    start_scheduler("--profile", "binpack")
    low_gang(cluster, priorities["low"], 12)
    high_gang(cluster, priorities["high"], 8)
    wait_for(lambda: len(terminating(cluster, "low-")) == 12, 30, what="all 12 low pods evicted")
    assert all(disrupted(p) for p in cluster.pods("low-"))
    ev = wait_for(lambda: cluster.events("low-00", "Preempted"), what="Preempted event")
    assert "priority 10000" in ev[0]["message"], ev[0]["message"]
    wait_for(lambda: all(p["status"].get("nominatedNodeName") for p in cluster.pods("high-")),
             what="the preemptor's pods nominated")  # (written after the evictions)
    assert not cluster.bound("high-")  # the victims still hold their GPUs while they terminate
    for p in cluster.pods("low-"):
        cluster.force_delete(p["metadata"]["name"])
    wait_for(lambda: len(cluster.bound("high-")) == 8, 30, what="the high gang bound whole")
    cluster.gpu_use_ok()


def test_a_gang_too_large_evicts_nothing(cluster: Cluster, start_scheduler, priorities):
    cluster.add_nodes(2, gpus=4, kwok=False)
    start_scheduler()
    low_gang(cluster, priorities["low"], 4)
    cluster.podgroup("huge", 9)
    for i in range(9):
        cluster.pod(f"huge-{i}", gpus=1, group="huge", priority_class=priorities["high"])
    # (while its 9 pods are being created the gang may first be told it lacks pods: wait for the GPU verdict)
    wait_for(lambda: [e for e in cluster.events("huge-0", "FailedScheduling") if "nvidia.com/gpu" in e["message"]],
             what="FailedScheduling naming the GPUs")
    time.sleep(2)
    assert not terminating(cluster, "low-") and len(cluster.bound("low-")) == 4


def test_what_victims_free_goes_to_the_preemptor(cluster: Cluster, start_scheduler, priorities):
    cluster.add_nodes(1, gpus=4, kwok=False)
    start_scheduler("--profile", "binpack")
    low_gang(cluster, priorities["low"], 4)
    high_gang(cluster, priorities["high"], 4)
    wait_for(lambda: len(terminating(cluster, "low-")) == 4, 30, what="the low gang evicted")
    cluster.pod("latecomer", gpus=1, priority_class=priorities["low"])
    cluster.force_delete("low-00")  # one GPU frees; the preemptor needs all four
    time.sleep(3)
    assert not cluster.bound("latecomer") and not cluster.bound("high-")
    for i in range(1, 4):
        cluster.force_delete(f"low-{i:02d}")
    wait_for(lambda: len(cluster.bound("high-")) == 4, 30, what="the preemptor bound")
    assert not cluster.bound("latecomer")


def test_killed_between_eviction_and_binding(cluster: Cluster, start_scheduler, priorities):
    cluster.add_nodes(2, gpus=4, kwok=False)
    sched = start_scheduler("--profile", "binpack")
    low_gang(cluster, priorities["low"], 8)
    high_gang(cluster, priorities["high"], 6)
    wait_for(lambda: len(terminating(cluster, "low-")) == 8, 30, what="the low gang evicted")
    sched.kill()
    cluster.pod("latecomer", gpus=1, priority_class=priorities["low"])
    start_scheduler("--profile", "binpack")
    time.sleep(3)
    for p in cluster.pods("low-"):
        cluster.force_delete(p["metadata"]["name"])
    wait_for(lambda: len(cluster.bound("high-")) == 6, 30, what="the preemptor bound whole after the restart")
    cluster.gpu_use_ok()


def test_a_disruption_budget_steers_the_choice(cluster: Cluster, start_scheduler, priorities):
    # Unguarded, one 4-pod gang would go rather than two 2-pod gangs (fewer victim gangs); a PodDisruptionBudget
    # over it (no disruption controller here, so its status allows 0 disruptions) ranks above that.
    cluster.add_nodes(2, gpus=4, kwok=False)
    cluster.c.request("POST", f"/apis/policy/v1/namespaces/{cluster.ns}/poddisruptionbudgets", {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "guard"},
        "spec": {"maxUnavailable": 0, "selector": {"matchLabels": {POD_GROUP_LABEL: "guarded"}}}})
    start_scheduler("--profile", "binpack")
    for name, n in (("guarded", 4), ("plain-a", 2), ("plain-b", 2)):
        cluster.podgroup(name, n)
        for i in range(n):
            cluster.pod(f"{name}-{i}", gpus=1, group=name, priority_class=priorities["low"], grace=30)
    wait_for(lambda: len(cluster.bound()) == 8, 30, what="the low gangs bound")
    high_gang(cluster, priorities["high"], 4)
    wait_for(lambda: len(terminating(cluster, "plain-")) == 4, 30, what="both plain gangs evicted")
    assert not terminating(cluster, "guarded-")
