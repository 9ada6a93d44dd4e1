"""`gangsched demo`: two 4-worker TensorFlow jobs on 6 GPUs, under gangsched and under kube-scheduler.

The head-to-head of the README: on process nodes (pods really run, as local processes in their own network
namespaces) with 6 GPUs in all, two TF MultiWorkerMirroredStrategy jobs of 4 workers x 1 GPU are submitted with
their pods interleaved. gangsched binds one job whole, it trains and succeeds, then the other; with `--mode
extender` the real kube-scheduler places the pods, calling `gangsched extender`, to the same effect. kube-scheduler
places pods one at a time: both jobs get some workers, neither can form its cluster, and both fail at their
start-up deadline. On Kubernetes >= 1.37 kube-scheduler's own gang scheduling (the Workload API: the jobs' gangs
as native PodGroups) runs them too. The same `run_jobs` drives the e2e tests (tests/integration/test_e2e_training.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import zip_longest
from pathlib import Path

from gangsched.live.kube import ApiError, KubeClient
from gangsched.live.podgroups import PODGROUP_API
from gangsched.live.translate import NATIVE_PODGROUP_API

PROCESS_NODE_LABEL = "gangsched.io/process-node"
EXTENDER_PROFILE = "gangsched-extender"  # the kube-scheduler profile that calls the extender in --mode extender
LABELS = {"gangsched": "gangsched", "extender": "kube-scheduler + gangsched extender",
          "kube-scheduler": "kube-scheduler", "kube-scheduler-gangs": "kube-scheduler native gangs"}
PEERS = ("kube-scheduler", "kube-scheduler-gangs")  # the schedulers gangsched is compared with, in this order
PEER_PROFILES = {"kube-scheduler": "default-scheduler", "kube-scheduler-gangs": "native-gangs"}
PODGROUP_APIS = (PODGROUP_API, NATIVE_PODGROUP_API)  # scheduler-plugins', Kubernetes' own
TERMINAL = ("Succeeded", "Failed")


@dataclass
class PodTimes:
    job: str
    created: float
    bound: float | None = None
    node: str = ""
    running: float | None = None
    finished: float | None = None
    phase: str = "Pending"
    exit_code: int | None = None


@dataclass
class Timeline:
    scheduler: str
    start: float
    pods: dict[str, PodTimes] = field(default_factory=dict)
    end: float = 0.0

    def jobs(self) -> dict[str, list[PodTimes]]:
        out: dict[str, list[PodTimes]] = {}
        for p in self.pods.values():
            out.setdefault(p.job, []).append(p)
        return out

    def outcome(self, job: str) -> str:
        """succeeded (every worker exited 0), failed, partial (some workers never bound) or running."""
        pods = self.jobs()[job]
        if all(p.phase == "Succeeded" for p in pods):
            return "succeeded"
        if any(p.bound is None for p in pods) and any(p.bound is not None for p in pods):
            return "partial"
        if all(p.phase in TERMINAL for p in pods if p.bound is not None) and any(p.phase == "Failed" for p in pods):
            return "failed"
        return "running"

    def table(self) -> str:
        def t(x: float | None) -> str:
            return f"{x - self.start:7.1f}" if x is not None else "      -"

        lines = [f"timeline under {self.scheduler} (seconds since the first pod was created)",
                 f"{'pod':<22} {'node':<10} {'created':>7} {'bound':>7} {'running':>7} {'finished':>8}  phase"]
        for name in sorted(self.pods):
            p = self.pods[name]
            ec = f" (exit {p.exit_code})" if p.exit_code not in (None, 0) else ""
            lines.append(f"{name:<22} {p.node or '-':<10} {t(p.created)} {t(p.bound)} {t(p.running)} "
                         f"{t(p.finished):>8}  {p.phase}{ec}")
        for job in sorted(self.jobs()):
            lines.append(f"job {job}: {self.outcome(job)}")
        return "\n".join(lines)


def interleave(jobs: list[list[dict]]) -> list[dict]:
    """PodGroups first, then the pods of the jobs alternately: the order that deadlocks a pod-at-a-time scheduler."""
    groups = [o for job in jobs for o in job if o["kind"] == "PodGroup"]
    pods = [[o for o in job if o["kind"] == "Pod"] for job in jobs]
    return groups + [p for batch in zip_longest(*pods) for p in batch if p is not None]


def create(client: KubeClient, obj: dict) -> None:
    ns = obj["metadata"]["namespace"]
    if obj["kind"] == "PodGroup":
        path = f"/apis/{obj['apiVersion']}/namespaces/{ns}/podgroups"
    else:
        path = f"/api/v1/namespaces/{ns}/pods"
    client.request("POST", path, obj)


def run_jobs(client: KubeClient, namespace: str, jobs: list[list[dict]], scheduler: str, timeout: float,
             on_change: Callable[[str, PodTimes, str], None] | None = None, poll: float = 0.25,
             settle: float = 10.0) -> Timeline:
    """Create the jobs' objects interleaved, then follow their pods until all are finished or `timeout`, or the
    bound ones are and nothing moved for `settle` seconds (see `_finished`)."""
    start = time.monotonic()
    timeline = Timeline(scheduler, start)
    for obj in interleave(jobs):
        create(client, obj)
        if obj["kind"] == "Pod":
            job = obj["metadata"]["labels"].get("training.kubeflow.org/job-name") or obj["metadata"]["name"]
            timeline.pods[obj["metadata"]["name"]] = PodTimes(job, time.monotonic())
    deadline = start + timeout
    last_change = time.monotonic()
    while time.monotonic() < deadline:
        items = client.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]
        now = time.monotonic()
        for pod in items:
            times = timeline.pods.get(pod["metadata"]["name"])
            if times is not None and _update(times, pod, now, on_change):
                last_change = now
        if _finished(timeline, now - last_change, settle):
            break
        time.sleep(poll)
    timeline.end = time.monotonic()
    return timeline


def _finished(timeline: Timeline, quiet: float, settle: float = 10.0) -> bool:
    """Every pod finished; or every pod that was bound finished and nothing has moved for `settle` seconds, so
    the unbound ones will never run (their job is stuck: what the kube-scheduler half shows)."""
    pods = timeline.pods.values()
    if all(p.phase in TERMINAL for p in pods):
        return True
    bound = [p for p in pods if p.bound is not None]
    return bool(bound) and all(p.phase in TERMINAL for p in bound) and quiet >= settle


def _update(times: PodTimes, pod: dict, now: float, on_change: Callable[[str, PodTimes, str], None] | None) -> bool:
    """Record what changed since the last poll; True if anything did."""
    name = pod["metadata"]["name"]
    node = pod["spec"].get("nodeName")
    phase = (pod.get("status") or {}).get("phase", "Pending")
    events = []
    if node and times.bound is None:
        times.bound, times.node = now, node
        events.append(f"bound to {node}")
    if phase == "Running" and times.running is None:
        times.running = now
        events.append("running")
    if phase in TERMINAL and times.finished is None:
        times.finished = now
        if times.running is None:
            times.running = now
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                times.exit_code = term.get("exitCode")
        events.append(phase.lower() + (f" (exit {times.exit_code})" if times.exit_code else ""))
    times.phase = phase
    if on_change:
        for e in events:
            on_change(name, times, e)
    return bool(events)


def delete_all(client: KubeClient, namespace: str, timeout: float = 60.0) -> None:
    """Delete the namespace's pods (the node agent stops their processes) and PodGroups, and wait."""
    for path in (f"/api/v1/namespaces/{namespace}/pods",
                 *(f"/apis/{api}/namespaces/{namespace}/podgroups" for api in PODGROUP_APIS)):
        try:
            client.request("DELETE", path)
        except ApiError as e:
            if e.status != 404:  # (404 also: a control plane without the Workload API)
                raise
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not client.request("GET", f"/api/v1/namespaces/{namespace}/pods")["items"]:
            return
        time.sleep(0.5)


# ---- the command ------------------------------------------------------------------------------------------------
def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dir", type=Path, help="dev cluster state directory (default: a fresh temporary one)")
    p.add_argument("--workers", type=int, default=4, help="workers per job (default 4)")
    p.add_argument("--gpus", type=int, default=6, help="GPUs on the process nodes in all (default 6, 2 per node)")
    p.add_argument("--deadline", type=int, default=45, help="start-up deadline of each training worker (s)")
    p.add_argument("--mode", choices=("run", "extender"), default="run",
                   help="how gangsched places the pods: `run`, as its own scheduler (default), or `extender`, "
                        "kube-scheduler calling `gangsched extender` for filter, prioritize, bind and preempt")
    p.add_argument("--peers", type=_peers, default=PEERS, metavar="LIST",
                   help=f"the schedulers to compare with, comma-separated, of {','.join(PEERS)} (default: both; "
                        "kube-scheduler-gangs, kube-scheduler's own gang scheduling, needs Kubernetes >= 1.37)")
    p.add_argument("--no-compare", dest="peers", action="store_const", const=(), help="compare with nobody")
    p.add_argument("--keep", action="store_true", help="leave the dev cluster running afterwards")
    p.set_defaults(run=run)


def _peers(text: str) -> tuple[str, ...]:
    peers = tuple(p for p in text.split(",") if p)
    bad = [p for p in peers if p not in PEERS]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown scheduler {', '.join(bad)}: choose from {', '.join(PEERS)}")
    return peers


def say(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace) -> int:
    import cryptography  # noqa: F401  (the devcluster's certificates: fail now, not after a 15-minute build)

    from gangsched.devcluster import DevCluster, ensure_binaries
    from gangsched.devcluster.procnode import ProcessNodes

    say(f"gangsched demo: two 4-worker TensorFlow jobs on 6 GPUs, "
        f"{LABELS['extender' if args.mode == 'extender' else 'gangsched']} vs "
        f"{', '.join(LABELS[p] for p in args.peers) or 'nobody'}")
    binaries = ensure_binaries(progress=say)
    state_dir = args.dir or Path(tempfile.mkdtemp(prefix="gangsched-demo-"))
    cluster = DevCluster(state_dir, binaries=binaries)
    say(f"starting the control plane in {state_dir} ...")
    cluster.up(progress=say)
    client = KubeClient.load(str(cluster.kubeconfig), qps=0)
    n_nodes = max(1, args.gpus // 2)
    names = [f"gpu-{i}" for i in range(n_nodes)]
    results: list[Timeline] = []
    try:
        from gangsched.devcluster.nodes import create_gpu_nodes
        say(f"creating 8 fake GPU nodes (KWOK) and {n_nodes} process nodes with {args.gpus} GPUs in all ...")
        create_gpu_nodes(cluster.api_client(), 8, gpus=8)
        with ProcessNodes(client, names, gpus_per_node=args.gpus // n_nodes,
                          workdir=state_dir / "procnodes") as nodes:
            first = ("extender", EXTENDER_PROFILE) if args.mode == "extender" else ("gangsched", "gangsched")
            peers = [p for p in args.peers if p != "kube-scheduler-gangs" or cluster.workload_api]
            if len(peers) < len(args.peers):
                say(f"(kube-scheduler native gangs left out: Kubernetes {cluster.binaries.k8s_version} has no "
                    "Workload API)")
            for label, scheduler_name in [first] + [(p, PEER_PROFILES[p]) for p in peers]:
                results.append(_one_run(cluster, client, nodes, label, scheduler_name, args))
    finally:
        if not args.keep:
            say("cleaning up ...")
            cluster.down()
        else:
            say(f"dev cluster left running: export KUBECONFIG={cluster.kubeconfig}")
    say("")
    for tl in results:
        say(tl.table())
        say("")
    ok = results and all(results[0].outcome(j) == "succeeded" for j in results[0].jobs())
    who = results[0].scheduler if results else "gangsched"
    say(f"{who}: both jobs succeeded, one after the other." if ok else f"{who}: NOT every job succeeded.")
    for peer in results[1:]:
        outcomes = {j: peer.outcome(j) for j in peer.jobs()}
        say(f"{peer.scheduler}: {', '.join(f'{j} {o}' for j, o in sorted(outcomes.items()))}.")
    return 0 if ok else 1


def _one_run(cluster, client: KubeClient, nodes, label: str, scheduler_name: str,
             args: argparse.Namespace) -> Timeline:
    from gangsched.jobs.manifests import as_native, tf_job

    namespace = f"demo-{label}"
    client.request("POST", "/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace",
                                                   "metadata": {"name": namespace}})
    jobs = []
    for name in ("job-a", "job-b"):
        objs = tf_job(name, namespace, workers=args.workers, gpus_per_worker=1, scheduler_name=scheduler_name,
                      deadline=args.deadline)
        for o in objs:
            if o["kind"] == "Pod":
                o["spec"]["nodeSelector"] = {PROCESS_NODE_LABEL: "true"}
        jobs.append(as_native(objs) if label == "kube-scheduler-gangs" else objs)
    say(f"\n== {LABELS[label]}: starting the scheduler, submitting job-a and job-b (pods interleaved) ==")
    proc = _start_scheduler(cluster, label, scheduler_name)
    t0 = time.monotonic()

    def show(pod: str, times: PodTimes, what: str) -> None:
        say(f"  {time.monotonic() - t0:6.1f}s  {pod:<20} {what}")

    try:
        timeline = run_jobs(client, namespace, jobs, LABELS[label], timeout=args.deadline * 3 + 120, on_change=show)
    finally:
        proc.stop()
        delete_all(client, namespace)
    for job in sorted(timeline.jobs()):
        say(f"  {job}: {timeline.outcome(job)}")
    return timeline


def start_extender_mode(cluster, scheduler_name: str, log_dir: Path):
    """`gangsched extender` for kube-scheduler profile `scheduler_name`, then the real kube-scheduler with that
    profile calling it (nodeCacheCapable, ignorable: false); `stop()` stops both, kube-scheduler first."""
    from gangsched.extender.process import ExtenderProcess

    ext = ExtenderProcess(cluster.kubeconfig, log_dir / f"extender-{scheduler_name}.log", scheduler_name).wait_ready()
    try:
        sched = cluster.start_kube_scheduler_with_extender(scheduler_name, ext.url)
    except BaseException:
        ext.stop()
        raise

    class _Both:
        def stop(self) -> None:
            sched.stop()
            ext.stop()
    return _Both()


def _start_scheduler(cluster, label: str, scheduler_name: str):
    if label == "extender":
        return start_extender_mode(cluster, scheduler_name, cluster.state_dir / "logs")
    if label == "gangsched":
        import subprocess
        log = open(cluster.state_dir / "logs" / "gangsched-demo.log", "ab")  # noqa: SIM115 (owned by the process)
        popen = subprocess.Popen([sys.executable, "-m", "gangsched.cli", "run", "--kubeconfig",
                                  str(cluster.kubeconfig), "--scheduler-name", scheduler_name],
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        class _Proc:
            def stop(self) -> None:
                popen.terminate()
                try:
                    popen.wait(20)
                except subprocess.TimeoutExpired:
                    popen.kill()
                log.close()
        return _Proc()
    return cluster.start_kube_scheduler(scheduler_name, gangs=label == "kube-scheduler-gangs")
