"""The live scheduler's Prometheus metrics, fed plain Kubernetes objects (livekit): names, types, labels and the
values each hook leaves, read back through the exposition format Prometheus scrapes."""

from __future__ import annotations

import pytest
from livekit import T0, Live, node, pod, podgroup
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gangsched.live.metrics import SchedulerMetrics, node_pool, registry_for


def live_with_metrics(**kwargs) -> Live:
    live = Live(**kwargs)
    live.sched.metrics = SchedulerMetrics(profile=live.sched.profile.name, wall=lambda: live.now, every=0)
    return live


def scrape(live: Live) -> dict[str, tuple[str, dict[tuple, float]]]:
    """family name -> (type, {(sample name, sorted labels): value})"""
    text = generate_latest(registry_for(live.sched)).decode()
    return {f.name: (f.type, {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples})
            for f in text_string_to_metric_families(text)}


def value(families: dict, family: str, sample: str | None = None, **labels: str) -> float:
    _, samples = families[family]
    return samples[(sample or family, tuple(sorted(labels.items())))]


def test_a_gang_placed_and_bound_counts_an_attempt_its_bindings_and_its_end_to_end_latency() -> None:
    live = live_with_metrics()
    live.put("nodes", node("n0", gpus=8))
    live.put("podgroups", podgroup("g", 2, queue="research"))
    live.put("pods", pod("a", group="g", created=T0 - 100))
    live.put("pods", pod("b", group="g", created=T0 - 40))
    live.sched.metrics.refresh(live.cache, None, force=True)
    before = scrape(live)
    assert value(before, "gangsched_pending_gangs", queue="research", priority="0") == 1
    assert value(before, "gangsched_pending_pods", queue="research", priority="0") == 2
    live.cycle()
    live.now += 5
    live.answer()
    live.cycle()
    m = scrape(live)
    assert m["gangsched_schedule_attempts"][0] == "counter"
    assert value(m, "gangsched_schedule_attempts", "gangsched_schedule_attempts_total", result="scheduled",
                 profile="default") == 1
    assert value(m, "gangsched_schedule_attempts", "gangsched_schedule_attempts_total", result="unschedulable",
                 profile="default") == 0
    assert m["gangsched_scheduling_attempt_duration_seconds"][0] == "histogram"
    assert value(m, "gangsched_scheduling_attempt_duration_seconds",
                 "gangsched_scheduling_attempt_duration_seconds_count", result="scheduled", profile="default") == 1
    # first member created at T0-100, last bound at T0+5
    assert value(m, "gangsched_gang_scheduling_duration_seconds", "gangsched_gang_scheduling_duration_seconds_count"
                 ) == 1
    assert value(m, "gangsched_gang_scheduling_duration_seconds", "gangsched_gang_scheduling_duration_seconds_sum"
                 ) == pytest.approx(105)
    assert value(m, "gangsched_binding_duration_seconds", "gangsched_binding_duration_seconds_count",
                 result="bound") == 2
    assert m["gangsched_pods_bound"][0] == "counter"
    assert value(m, "gangsched_pods_bound", "gangsched_pods_bound_total") == 2
    assert value(m, "gangsched_gangs_scheduled", "gangsched_gangs_scheduled_total") == 1
    assert m["gangsched_pending_gangs"][1] == {}  # nobody waits any more
    model = next(dict(k[1])["model"] for k in m["gangsched_node_gpus"][1])
    assert value(m, "gangsched_node_gpus", pool="", model=model, state="allocated") == 2
    assert value(m, "gangsched_node_gpus", pool="", model=model, state="free") == 6
    assert value(m, "gangsched_node_gpus", pool="", model=model, state="capacity") == 8
    [((_, labels), one)] = m["gangsched_build_info"][1].items()  # an Info: a gauge of 1 with labels
    assert one == 1 and dict(labels)["profile"] == "default" and dict(labels)["version"] == "0.1.0"


def test_a_gang_with_a_refused_binding_is_not_counted_as_scheduled_end_to_end() -> None:
    from gangsched.live.kube import ApiError

    live = live_with_metrics()
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("g", 2))
    live.put("pods", pod("a", group="g"))
    live.put("pods", pod("b", group="g"))
    live.cycle()
    reqs = {r.name: r for r in live.binds.take()}
    live.answer([reqs["a"]])
    live.answer([reqs["b"]], error=ApiError(422, "Invalid", "refused"))
    m = scrape(live)
    assert value(m, "gangsched_gang_scheduling_duration_seconds", "gangsched_gang_scheduling_duration_seconds_count"
                 ) == 0
    assert value(m, "gangsched_binding_duration_seconds", "gangsched_binding_duration_seconds_count",
                 result="error") == 1
    assert value(m, "gangsched_bind_errors", "gangsched_bind_errors_total") == 1


def test_unschedulable_and_error_attempts() -> None:
    live = live_with_metrics()
    live.put("nodes", node("n0", gpus=2))
    live.put("pods", pod("big", gpus=4))
    live.cycle()
    m = scrape(live)
    assert value(m, "gangsched_schedule_attempts", "gangsched_schedule_attempts_total", result="unschedulable",
                 profile="default") == 1

    def broken(gang):
        raise RuntimeError("boom")

    live.sched.core.schedule_gang = broken  # run_pass turns the exception into an ERROR result
    live.put("pods", pod("other", gpus=1))
    live.cycle()
    m = scrape(live)
    assert value(m, "gangsched_schedule_attempts", "gangsched_schedule_attempts_total", result="error",
                 profile="default") >= 1
    assert value(m, "gangsched_scheduling_attempt_duration_seconds",
                 "gangsched_scheduling_attempt_duration_seconds_count", result="error", profile="default") >= 1


def test_a_preemption_observes_its_victims() -> None:
    live = live_with_metrics(profile="binpack", preemption=True)
    live.put("nodes", node("n0", gpus=4))
    live.put("podgroups", podgroup("low", 4))
    for i in range(4):
        live.put("pods", pod(f"low-{i}", group="low", priority=0))
    assert len(live.place()) == 4
    live.put("podgroups", podgroup("high", 2))
    for i in range(2):
        live.put("pods", pod(f"high-{i}", group="high", priority=1000))
    live.cycle()
    assert len(live.evictions.evicted) == 4
    m = scrape(live)
    assert m["gangsched_preemption_victims"][0] == "histogram"
    assert value(m, "gangsched_preemption_victims", "gangsched_preemption_victims_count") == 1
    assert value(m, "gangsched_preemption_victims", "gangsched_preemption_victims_sum") == 4
    assert value(m, "gangsched_preemption_attempts", "gangsched_preemption_attempts_total") == 1
    assert value(m, "gangsched_preempted_pods", "gangsched_preempted_pods_total") == 4
    assert value(m, "gangsched_pending_pods", queue="default", priority="1000") == 2


def test_fragmentation_per_pool_is_fgds_measure_against_the_pods_held_and_waiting() -> None:
    live = live_with_metrics()
    live.put("nodes", node("n0", gpus=8))
    pooled = node("n1", gpus=8)
    pooled["metadata"]["labels"]["cloud.google.com/gke-nodepool"] = "a100-pool"
    live.put("nodes", pooled)
    live.put("pods", pod("held", gpus=5, scheduler="other", node_name="n0", phase="Running"))
    live.put("pods", pod("held2", gpus=5, scheduler="other", node_name="n1", phase="Running"))
    live.put("pods", pod("wants", gpus=4))
    live.cycle()
    # typical pods: 5 GPUs (2 of 3 pods) and 4 GPUs (1 of 3); each node has 3 idle GPUs neither can use
    m = scrape(live)
    assert value(m, "gangsched_gpu_fragmentation_gpus", pool="") == pytest.approx(3)
    assert value(m, "gangsched_gpu_fragmentation_gpus", pool="a100-pool") == pytest.approx(3)
    assert value(m, "gangsched_gpu_fragmentation_ratio") == pytest.approx(1.0)
    assert value(m, "gangsched_pending_pods", queue="default", priority="0") == 1


def test_node_pool_label_order() -> None:
    assert node_pool({"eks.amazonaws.com/nodegroup": "ng", "agentpool": "x"}) == "ng"
    assert node_pool({"kubernetes.io/hostname": "n0"}) == ""
