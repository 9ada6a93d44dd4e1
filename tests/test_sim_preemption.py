"""Preemption study (`gangsched.sim.preemption`): synthetic jobs on tiny vcs of 8-GPU nodes, no trace.

Times are plain seconds; priorities 1000 (high) and 0 (low)."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timedelta

import numpy as np
import pytest

from gangsched.sim import timed
from gangsched.sim.philly import Job, build_nodes, with_priorities
from gangsched.sim.preemption import POLICIES, PreemptionReplay, run_study, summarize

HI, LO = 1000, 0


def job(k: int, t: float, duration: float, gpus: int, priority: int = LO, vc: str = "a") -> Job:
    return Job(k, t, duration, gpus, vc, priority)


def run(jobs: list[Job], policy: str, nodes: int = 2, **kw):
    return PreemptionReplay(build_nodes({"a": nodes}), jobs, policy, **kw).run()


# A low job fills both nodes (16 GPUs, 100 s); a high 8-GPU job arrives at t=10 for 10 s.
SIMPLE = [job(0, 0, 100, 16), job(1, 10, 10, 8, HI)]


def test_no_preemption_makes_the_high_job_wait():
    out = run(SIMPLE, "none")
    assert out.start.tolist() == [0, 100] and out.finish.tolist() == [100, 110]
    assert out.preemptions == 0 and out.lost_gpu_seconds == 0 and out.partial_gpu_seconds == 0


def test_gang_preemption_evicts_the_whole_victim_and_starts_the_preemptor_at_once():
    out = run(SIMPLE, "gang")
    assert out.evictions == [(10, 0, 1)]
    assert out.start.tolist() == [20, 10]  # the low job reruns from scratch once the high one is done
    assert out.finish.tolist() == [120, 20]
    assert out.lost_gpu_seconds == 16 * 10  # 10 s of work on 16 GPUs thrown away
    assert out.partial_gpu_seconds == 0 and out.max_partial_jobs == 0
    assert out.victim_pods == 2


def test_per_pod_preemption_leaves_the_victim_partial():
    out = run(SIMPLE, "per-pod")
    assert out.evictions == [(10, 0, 1)] and out.victim_pods == 1  # one pod of the low job, on one node
    assert out.start.tolist() == [20, 10] and out.finish.tolist() == [120, 20]
    assert out.lost_gpu_seconds == 16 * 10
    # the low job's other pod held its 8 GPUs from t=10 to t=20 without running
    assert out.partial_gpu_seconds == 8 * 10 and out.max_partial_jobs == 1


def test_per_pod_placement_alone_makes_partial_jobs_that_hold_gpus():
    # 1 GPU busy on node 0: the 16-GPU job places one pod on node 1 and holds it until t=50; gang placement
    # holds nothing meanwhile
    jobs = [job(0, 0, 50, 1), job(1, 1, 10, 16)]
    per_pod, gang = run(jobs, "per-pod"), run(jobs, "gang")
    assert per_pod.start.tolist() == gang.start.tolist() == [0, 50]
    assert per_pod.partial_gpu_seconds == 8 * 49 and gang.partial_gpu_seconds == 0


def test_per_pod_preemption_evicts_for_a_preemptor_that_still_cannot_run():
    # node 0: low job A (8 GPUs, 1000 s); node 1: high job H0 (8 GPUs, 100 s). High job H1 (16 GPUs, t=10)
    # per pod: its first pod evicts A's on node 0, its second finds no victim (H0 has the same priority), so
    # H1 holds node 0 partial, not running, until H0 ends at t=100. Gang preemption sees that evicting A alone
    # cannot make H1 fit, evicts nothing at t=10, and evicts A whole when H0 ends.
    jobs = [job(0, 0, 1000, 8), job(1, 0, 100, 8, HI), job(2, 10, 10, 16, HI)]
    per_pod, gang = run(jobs, "per-pod"), run(jobs, "gang")
    assert per_pod.evictions == [(10, 0, 2)]
    assert per_pod.start[2] == 100 and per_pod.lost_gpu_seconds == 8 * 10
    assert per_pod.partial_gpu_seconds == 8 * 90  # H1's first pod, t=10..100
    assert gang.evictions == [(100, 0, 2)] and gang.start[2] == 100
    assert gang.lost_gpu_seconds == 8 * 100 and gang.partial_gpu_seconds == 0


def test_partial_timeout_gives_the_pods_back():
    jobs = [job(0, 0, 500, 1), job(1, 1, 10, 16)]
    out = run(jobs, "per-pod", partial_timeout=100)
    # it holds node 1 from t=1, gives it back at t=101, takes it again at once (nothing else wants it) ...
    assert out.restarts >= 1 and out.start[1] == 500
    assert run(jobs, "per-pod", partial_timeout=None).restarts == 0


def test_equal_priorities_never_preempt():
    jobs = [job(0, 0, 100, 16, HI), job(1, 10, 10, 8, HI), job(2, 20, 10, 8)]
    for policy in POLICIES:
        out = run(jobs, policy)
        assert out.preemptions == 0, policy
        assert out.start.tolist() == [0, 100, 100], policy


def random_jobs(seed: int, n: int = 80) -> list[Job]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.exponential(20, n))
    gpus = rng.choice([1, 2, 4, 8, 12, 16, 24], n)
    dur = rng.integers(10, 400, n)
    return with_priorities([job(k, float(t[k]), float(dur[k]), int(gpus[k])) for k in range(n)], 0.25, seed)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_invariants_on_random_workloads(seed):
    jobs = random_jobs(seed)
    prio = [j.priority for j in jobs]
    for policy in POLICIES:
        out = run(jobs, policy, nodes=4)
        assert not out.errors, out.errors
        assert not np.isnan(out.finish).any(), policy  # everyone finishes
        assert all(prio[v] < prio[p] for _, v, p in out.evictions), policy  # only lower priorities preempted
        done = np.array([j.submit for j in jobs])
        assert (out.start >= done).all() and np.allclose(out.finish - out.start, [j.duration for j in jobs])
        if policy == "none":
            assert out.preemptions == 0 and out.lost_gpu_seconds == 0
        if policy != "per-pod":
            assert out.partial_gpu_seconds == 0 and out.max_partial_jobs == 0  # never partial
        if policy == "gang":
            starts = set(out.starts)
            assert all((t, p) in starts for t, _, p in out.evictions)  # the preemptor starts as its victims go
    gang = summarize(run(jobs, "gang", nodes=4))
    none = summarize(run(jobs, "none", nodes=4))
    assert gang["high_wait_avg"] <= none["high_wait_avg"]


def test_priority_draw_and_run_are_reproducible():
    base = [job(k, 10.0 * k, 100, 8) for k in range(50)]
    a, b = with_priorities(base, 0.2, 7), with_priorities(base, 0.2, 7)
    assert a == b and sum(j.priority == 1000 for j in a) == 10
    assert with_priorities(base, 0.2, 8) != a
    jobs = random_jobs(3)
    for policy in POLICIES:
        x, y = run(jobs, policy, nodes=4), run(jobs, policy, nodes=4)
        assert x.start.tolist() == y.start.tolist() and x.finish.tolist() == y.finish.tolist()
        assert x.evictions == y.evictions and summarize(x) == summarize(y)


def test_run_study_covers_every_policy_over_the_same_jobs():
    results = run_study(build_nodes({"a": 4}), random_jobs(4))
    assert list(results) == list(POLICIES)
    assert {r["jobs"] for _, r in results.values()} == {80}


def test_cli_preemption_study_writes_table_json_and_plot(tmp_path, capsys):
    t0 = datetime(2017, 10, 1)
    rows = [(0, 100, 16), (10, 10, 8), (20, 50, 4), (30, 30, 8), (40, 10, 16)]
    trace = tmp_path / "philly_jobs.csv"
    trace.write_text("timestamp,duration,num_gpus,gpu_time,cluster\n" + "".join(
        f"{t0 + timedelta(seconds=t):%Y-%m-%d %H:%M:%S},{d},{g},{d * g},a\n" for t, d, g in rows))
    layout = tmp_path / "helios_vc_nodes.csv"
    layout.write_text("vc,node num\na,2\n")
    parser = argparse.ArgumentParser()
    timed.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--trace", str(trace), "--vcs", str(layout), "--preemption-study",
                              "--high-fraction", "0.4", "--out", str(out), "--no-progress"])
    assert args.run(args) == 0
    printed = capsys.readouterr().out
    assert "gang (gangsched)" in printed and "per-pod (kube-scheduler)" in printed
    doc = json.loads((out / "preemption_1.json").read_text())
    assert doc["high_jobs"] == 2 and set(doc["policies"]) == set(POLICIES)
    assert (out / "preemption_1.txt").read_text().strip() in printed
    assert (out / "preemption_wait_cdf_1.png").stat().st_size > 0
