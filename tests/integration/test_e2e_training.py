"""End to end: real distributed TensorFlow and PyTorch jobs whose workers gangsched placed.

Process nodes (gangsched.devcluster.procnode) run the bound pods as local processes, one network namespace
per pod, on the dev cluster's real API server. The head-to-head runs the same two TF jobs under gangsched and
under the real kube-scheduler, alone and with its own gang scheduling (Kubernetes >= 1.37). Every job has a
start-up deadline, and every wait here a timeout.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

from gangsched.demo import EXTENDER_PROFILE, PROCESS_NODE_LABEL, Timeline, delete_all, run_jobs, start_extender_mode
from gangsched.devcluster.procnode import ProcessNodes
from gangsched.jobs.manifests import as_native, pytorch_job, tf_job
from gangsched.live.kube import KubeClient
from tests.integration.live import SchedulerProcess, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

GPUS_PER_NODE = 2
NODES = 3  # 6 GPUs: one 4-worker job fits, two do not


@pytest.fixture(scope="module")
def client(devcluster) -> KubeClient:
    return KubeClient.load(str(devcluster.kubeconfig), qps=0)


@pytest.fixture(scope="module")
def procnodes(client, tmp_path_factory):
    names = [f"proc-{i}" for i in range(NODES)]
    with ProcessNodes(client, names, gpus_per_node=GPUS_PER_NODE, workdir=tmp_path_factory.mktemp("procnodes")) as p:
        yield p


@pytest.fixture
def namespace(client, request) -> str:
    ns = f"e2e-{uuid.uuid4().hex[:6]}"
    client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    yield ns
    delete_all(client, ns)


@pytest.fixture
def gangsched(devcluster, tmp_path):
    proc = SchedulerProcess(devcluster.kubeconfig, tmp_path / "gangsched.log")
    yield proc
    proc.stop()
    print(proc.output()[-3000:])


# kube-scheduler retries a rejected pod after its backoff, up to podMaxBackoffSeconds (10 s) once it has failed a
# few times, as the second job's pods have while the first ran: give it longer than that before calling it stuck
KUBE_SCHEDULER_SETTLE = 40.0


def on_process_nodes(objs: list[dict]) -> list[dict]:
    for o in objs:
        if o["kind"] == "Pod":
            o["spec"]["nodeSelector"] = {PROCESS_NODE_LABEL: "true"}
    return objs


def show(timeline: Timeline, procnodes: ProcessNodes, ns: str) -> None:
    print(timeline.table())
    for name, p in timeline.pods.items():
        if p.phase == "Failed" or p.exit_code:
            path = procnodes.log_path(ns, name)
            if path.exists():
                print(f"--- {name} log tail\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))


def assert_one_after_the_other(timeline: Timeline) -> None:
    """Both jobs succeeded, as whole gangs one after the other: the second job got no GPU while the first ran; it
    was bound once the first job's workers finished (as seen by polling every 0.25 s, hence the tolerance). The
    workers finish over a second or two: once some have, their GPUs may already fit the second job."""
    assert {j: timeline.outcome(j) for j in timeline.jobs()} == {"job-a": "succeeded", "job-b": "succeeded"}
    first_bound = {j: min(p.bound or 0.0 for p in pods) for j, pods in timeline.jobs().items()}
    first, second = sorted(first_bound, key=first_bound.__getitem__)
    freeing = min(p.finished or 0.0 for p in timeline.jobs()[first])
    assert max(p.running or 0.0 for p in timeline.jobs()[first]) < first_bound[second]
    assert first_bound[second] >= freeing - 1.0, (first_bound, freeing)


def test_head_to_head_gangsched_runs_both_jobs_one_after_the_other(client, procnodes, namespace, gangsched):
    jobs = [on_process_nodes(tf_job(j, namespace, workers=4, gpus_per_worker=1, deadline=120))
            for j in ("job-a", "job-b")]
    timeline = run_jobs(client, namespace, jobs, "gangsched", timeout=420)
    show(timeline, procnodes, namespace)
    assert_one_after_the_other(timeline)


def test_head_to_head_extender_runs_both_jobs_one_after_the_other(client, procnodes, namespace, devcluster,
                                                                  tmp_path):
    """`gangsched demo --mode extender`: the real kube-scheduler places the pods, calling `gangsched extender`."""
    jobs = [on_process_nodes(tf_job(j, namespace, workers=4, gpus_per_worker=1, scheduler_name=EXTENDER_PROFILE,
                                    deadline=120)) for j in ("job-a", "job-b")]
    both = start_extender_mode(devcluster, EXTENDER_PROFILE, tmp_path)
    try:
        timeline = run_jobs(client, namespace, jobs, "kube-scheduler + gangsched extender", timeout=420,
                            settle=KUBE_SCHEDULER_SETTLE)
    finally:
        both.stop()
        print((tmp_path / f"extender-{EXTENDER_PROFILE}.log").read_text(errors="replace")[-3000:])
    show(timeline, procnodes, namespace)
    assert_one_after_the_other(timeline)  # as under `gangsched run`


def test_head_to_head_native_gangs_of_kube_scheduler(client, procnodes, namespace, devcluster):
    """The native peer of `gangsched demo`: kube-scheduler's own gang scheduling (Kubernetes >= 1.37), the jobs'
    gangs as native PodGroups."""
    if not devcluster.workload_api:
        pytest.skip(f"Kubernetes {devcluster.binaries.k8s_version} has no Workload API")
    jobs = [as_native(on_process_nodes(tf_job(j, namespace, workers=4, gpus_per_worker=1,
                                              scheduler_name="native-gangs", deadline=120)))
            for j in ("job-a", "job-b")]
    sched = devcluster.start_kube_scheduler("native-gangs", gangs=True)
    try:
        timeline = run_jobs(client, namespace, jobs, "kube-scheduler native gangs", timeout=420,
                            settle=KUBE_SCHEDULER_SETTLE)
    finally:
        sched.stop()
    show(timeline, procnodes, namespace)
    assert_one_after_the_other(timeline)


def test_head_to_head_kube_scheduler_deadlocks_both_jobs(client, procnodes, namespace, devcluster):
    deadline = 30
    jobs = [on_process_nodes(tf_job(j, namespace, workers=4, gpus_per_worker=1, scheduler_name="default-scheduler",
                                    deadline=deadline)) for j in ("job-a", "job-b")]
    sched = devcluster.start_kube_scheduler("default-scheduler")
    try:
        timeline = run_jobs(client, namespace, jobs, "kube-scheduler", timeout=deadline * 4 + 60)
    finally:
        sched.stop()
    show(timeline, procnodes, namespace)
    by_job = timeline.jobs()
    first_failure = min(p.finished for pods in by_job.values() for p in pods if p.finished is not None)
    placed = {j: sum(p.bound is not None and p.bound < first_failure for p in pods) for j, pods in by_job.items()}
    assert sum(placed.values()) == NODES * GPUS_PER_NODE, placed  # every GPU handed out ...
    assert all(0 < n < 4 for n in placed.values()), placed  # ... to both jobs, neither whole: a deadlock
    for job in by_job:
        assert timeline.outcome(job) == "failed", job  # the workers waited for peers and gave up at the deadline


def test_tf_parameter_server_job(client, procnodes, namespace, gangsched):
    job = on_process_nodes(tf_job("ps-job", namespace, kind="ps", workers=2, ps=1, gpus_per_worker=1, deadline=120))
    timeline = run_jobs(client, namespace, [job], "gangsched", timeout=300)
    show(timeline, procnodes, namespace)
    assert timeline.outcome("ps-job") == "succeeded"


def test_pytorch_ddp_job(client, procnodes, namespace, gangsched):
    job = on_process_nodes(pytorch_job("ddp", namespace, workers=4, gpus_per_worker=1, deadline=120))
    timeline = run_jobs(client, namespace, [job], "gangsched", timeout=300)
    show(timeline, procnodes, namespace)
    assert timeline.outcome("ddp") == "succeeded"


def test_deleting_a_running_job_frees_its_gpus_for_the_waiting_one(client, procnodes, namespace, gangsched):
    hold = on_process_nodes(tf_job("hold", namespace, workers=4, gpus_per_worker=1, deadline=120))
    for o in hold:  # a long-running job: its workers just sleep
        if o["kind"] == "Pod":
            o["spec"]["containers"][0]["command"] = ["python", "-c", "import time; time.sleep(600)"]
            o["spec"]["containers"][0].pop("args", None)
    for o in hold:
        _create(client, o)
    wait_for(lambda: _phases(client, namespace, "hold") == ["Running"] * 4, 90, what="the holding job running")
    pids = [procnodes.pid(namespace, f"hold-worker-{i}") for i in range(4)]
    assert all(pids)
    waiting = on_process_nodes(tf_job("next", namespace, workers=4, gpus_per_worker=1, deadline=120))
    for o in waiting:
        _create(client, o)
    time.sleep(3)
    assert not [p for p in _pods(client, namespace, "next") if p["spec"].get("nodeName")], "no GPUs were free"
    for i in range(4):
        client.request("DELETE", f"/api/v1/namespaces/{namespace}/pods/hold-worker-{i}")
    wait_for(lambda: not any(_alive(pid) for pid in pids), 30, what="the holding job's processes stopped")
    wait_for(lambda: _phases(client, namespace, "next") == ["Succeeded"] * 4, 300, what="the waiting job succeeded")


def _create(client: KubeClient, obj: dict) -> None:
    from gangsched.demo import create

    create(client, obj)


def _pods(client: KubeClient, ns: str, job: str) -> list[dict]:
    return [p for p in client.request("GET", f"/api/v1/namespaces/{ns}/pods")["items"]
            if p["metadata"]["name"].startswith(f"{job}-")]


def _phases(client: KubeClient, ns: str, job: str) -> list[str]:
    return sorted((p.get("status") or {}).get("phase", "Pending") for p in _pods(client, ns, job))


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
