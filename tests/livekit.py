"""The live scheduler with no API server: Kubernetes objects fed as dicts, collaborators that record, a clock
the test moves. Used by the live unit tests and the state-machine test."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gangsched.core import Scheduler
from gangsched.live.binder import BIND, BindOutcome, BindRequest, binding_body
from gangsched.live.cache import Cache
from gangsched.live.giveback import GiveBack
from gangsched.live.kube import ApiError
from gangsched.live.preemption import Preemptor
from gangsched.live.scheduler import LiveScheduler
from gangsched.live.translate import POD_GROUP_LABEL
from gangsched.profile import Profile, load_profile, parse_profile
from gangsched.state import ClusterState

T0 = 1_800_000_000.0  # the test clock's start (epoch seconds), after every object's creationTimestamp
_uids = iter(range(1, 1 << 30))


def stamp(t: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def node(name: str, gpus: int = 8, cpu: str = "32", memory: str = "256Gi", ready: bool = True,
         **extra: str) -> dict:
    alloc = {"cpu": cpu, "memory": memory, "pods": "110", **{k.replace("_", "-"): v for k, v in extra.items()}}
    if gpus:
        alloc["nvidia.com/gpu"] = str(gpus)
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name}},
            "status": {"allocatable": alloc,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def pod(name: str, gpus: int = 1, cpu: str = "1", group: str | None = None, ns: str = "default",
        scheduler: str = "gangsched", node_name: str | None = None, devices: str | None = None,
        created: float = T0 - 100, phase: str = "Pending", requests: dict[str, Any] | None = None,
        **spec: Any) -> dict:
    reqs: dict[str, Any] = {"cpu": cpu, **(requests or {})}
    if gpus:
        reqs["nvidia.com/gpu"] = str(gpus)
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"uid-{name}-{next(_uids)}",
                            "creationTimestamp": stamp(created), "labels": {}, "annotations": {}}
    if group:
        meta["labels"][POD_GROUP_LABEL] = group
    if devices is not None:
        meta["annotations"]["gangsched.io/gpu-devices"] = devices
    body = {"schedulerName": scheduler, "containers": [{"name": "c", "resources": {"requests": reqs}}], **spec}
    if node_name:
        body["nodeName"] = node_name
    return {"metadata": meta, "spec": body, "status": {"phase": phase}}


def podgroup(name: str, min_member: int, ns: str = "default", **spec: Any) -> dict:
    return {"apiVersion": "scheduling.x-k8s.io/v1alpha1", "kind": "PodGroup",
            "metadata": {"name": name, "namespace": ns, "uid": f"pg-{name}", "creationTimestamp": stamp(T0 - 200)},
            "spec": {"minMember": min_member, **spec}}


class Events:
    def __init__(self) -> None:
        self.items: list[tuple[str, str, str, str]] = []  # (object name, kind, reason, message)

    def record(self, obj: dict, kind: str, reason: str, message: str, warning: bool = True,
               api_version: str = "v1") -> None:
        self.items.append((obj["metadata"]["name"], kind, reason, message))

    def of(self, name: str, reason: str | None = None) -> list[str]:
        return [m for n, _, r, m in self.items if n == name and (reason is None or r == reason)]


class Binds:
    def __init__(self) -> None:
        self.queued: list[tuple[BindRequest, float]] = []

    def submit(self, req: BindRequest, delay: float = 0.0) -> None:
        self.queued.append((req, delay))

    def shutdown(self) -> None:
        pass

    def take(self) -> list[BindRequest]:
        out, self.queued = [r for r, _ in self.queued], []
        return out


class Evictions:
    """Preemption's API side: victims evicted (the test decides when they go) and nominations."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.evicted: list[str] = []
        self.nominated: dict[str, str] = {}
        self.disrupted: dict[str, str] = {}  # native PodGroup -> DisruptionTarget message

    def evict(self, pod: dict, message: str) -> bool:
        key = f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"
        self.evicted.append(key)
        current = self.live.objects.get(("pods", key))
        if current is not None:  # terminating: it still holds its node until it goes
            self.live.put("pods", {**current, "metadata": {**current["metadata"], "deletionTimestamp": stamp(T0)}})
        return True

    def nominate(self, pod: dict, node: str) -> None:
        self.nominated[pod["metadata"]["name"]] = node

    def disrupt(self, group: dict, message: str) -> None:
        self.disrupted[group["metadata"]["name"]] = message


class Statuses:
    def __init__(self) -> None:
        self.written: dict[str, dict] = {}
        self.apis: dict[str, str] = {}  # key -> the API version its status went to

    def write(self, key: str, status: dict, api: str = "scheduling.x-k8s.io/v1alpha1") -> None:
        self.written[key] = status
        self.apis[key] = api


class Live:
    """One scheduler and the API objects it was shown."""

    def __init__(self, profile: str | Profile | dict = "default", gang_timeout: float = 60.0,
                 preemption: bool = False, hold_seconds: float = 120.0):
        if isinstance(profile, dict):
            profile = parse_profile(profile)
        elif isinstance(profile, str):
            profile = load_profile(profile)
        self.now = T0
        self.state = ClusterState([])
        self.cache = Cache(self.state)
        self.events, self.binds, self.statuses = Events(), Binds(), Statuses()
        self.deleted: list[str] = []
        self.objects: dict[tuple[str, str], dict] = {}  # (kind, key) -> what the API server holds
        self.giveback = GiveBack(self.cache, self._delete, self.events, gang_timeout)
        core = Scheduler(self.state, profile)
        self.evictions = Evictions(self)
        preemptor = Preemptor(self.cache, core, self.evictions, self.events, lambda: self.now,
                              hold_seconds) if preemption else None
        self.sched = LiveScheduler(self.cache, core, profile, self.binds, self.events, self.statuses, self.giveback,
                                   clock=lambda: self.now, preemptor=preemptor)

    def terminate(self, keys: Iterable[str]) -> None:
        """Evicted pods finish terminating: the API server removes them."""
        for key in keys:
            obj = self.objects.get(("pods", key))
            if obj is not None:
                self.remove("pods", obj)

    # ---- the API server's side ---------------------------------------------------------------------------------
    def put(self, kind: str, obj: dict, typ: str = "ADDED") -> dict:
        meta = obj["metadata"]
        key = f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/")
        typ = "MODIFIED" if (kind, key) in self.objects and typ == "ADDED" else typ
        self.objects[(kind, key)] = obj
        self.sched.handle(kind, typ, obj)
        return obj

    def remove(self, kind: str, obj: dict) -> None:
        meta = obj["metadata"]
        self.objects.pop((kind, f"{meta.get('namespace', '')}/{meta['name']}".lstrip("/")), None)
        self.sched.handle(kind, "DELETED", obj)

    def relist(self, kind: str) -> None:
        self.sched.handle(kind, "SYNC", [o for (k, _), o in self.objects.items() if k == kind])

    def _delete(self, obj: dict) -> bool:
        key = f"{obj['metadata']['namespace']}/{obj['metadata']['name']}"
        self.deleted.append(key)
        self.remove("pods", obj)
        return True

    # ---- the scheduler's side ----------------------------------------------------------------------------------
    def cycle(self, n: int = 1, advance: float = 0.0) -> None:
        for _ in range(n):
            self.now += advance
            self.sched.cycle()

    def answer(self, reqs: Iterable[BindRequest] | None = None, error: ApiError | None = None,
               watch: bool = True) -> list[BindRequest]:
        """Answer bindings as the API server would; on success the watch then shows the pod bound."""
        reqs = self.binds.take() if reqs is None else list(reqs)
        for req in reqs:
            key = f"{req.namespace}/{req.name}"
            self.sched.handle(BIND, "DONE", BindOutcome(req, error, 0.01))
            current = self.objects.get(("pods", key))
            if error is None and watch and current is not None:
                bound = {**current, "spec": {**current["spec"], "nodeName": req.node},
                         "metadata": {**current["metadata"], "annotations": {
                             **current["metadata"].get("annotations", {}),
                             **binding_body(req)["metadata"].get("annotations", {})}}}
                self.put("pods", bound)
        return reqs

    def place(self, cycles: int = 1) -> dict[str, str]:
        """Run cycles and answer every binding with success; pod key -> node of those bound."""
        bound = {}
        for _ in range(cycles):
            self.cycle()
            for req in self.answer():
                bound[f"{req.namespace}/{req.name}"] = req.node
        return bound

    def held(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        return {k: (a.node_name, a.devices) for k, a in self.state.assignments.items()}


def rebuilt(nodes: Iterable[dict], podgroups: Iterable[dict], pods: Iterable[dict],
            classes: Iterable[dict] | None = None, scheduler_name: str = "gangsched") -> Cache:
    """The books a scheduler starting now would build from these API objects: a fresh cache fed one SYNC
    of each kind (nodes, PodGroups, priority classes if given, pods), its nodes then refreshed."""
    from gangsched.live.informer import SYNC

    cache = Cache(ClusterState([]), scheduler_name)
    cache.apply("nodes", SYNC, list(nodes))
    cache.apply("podgroups", SYNC, list(podgroups))
    if classes is not None:
        cache.apply("priorityclasses", SYNC, list(classes))
    cache.apply("pods", SYNC, list(pods))
    cache.refresh_nodes()
    return cache
