"""Which devices the kubelet should give a container, and what to write back when it gave others. Pure logic.

The kubelet's GetPreferredAllocation names no pod: it says which devices are free and how many it needs. The pod
being admitted is found among the pods bound to this node (from the API server): not finished, annotated by the
scheduler with devices that are not yet allocated to it (the pod-resources API tells what is) and all free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gangsched.live.translate import GPU_DEVICES_ANNOTATION, gpu_devices, parse_time

SCHEDULED_ANNOTATION = "gangsched.io/gpu-devices-scheduled"  # the scheduler's pick, kept when the node differed
TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class BoundPod:
    namespace: str
    name: str
    uid: str
    named: tuple[int, ...] | None  # the gangsched.io/gpu-devices annotation
    creation: float
    obj: dict

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def bound_pods(objs: Iterable[dict]) -> list[BoundPod]:
    """The pods that may hold or get devices on the node: not finished, not being deleted."""
    out = []
    for o in objs:
        meta = o.get("metadata") or {}
        if (o.get("status") or {}).get("phase") in TERMINAL or meta.get("deletionTimestamp"):
            continue
        out.append(BoundPod(meta.get("namespace", "default"), meta.get("name", ""), meta.get("uid", ""),
                            gpu_devices(o), parse_time(meta.get("creationTimestamp")), o))
    return out


@dataclass(frozen=True)
class Choice:
    devices: tuple[str, ...]  # device IDs to prefer; () lets the kubelet choose
    pod: BoundPod | None  # the pod whose annotation was honoured
    diverged: BoundPod | None  # an annotated pod of this size whose devices are not free: the kubelet chooses


def choose(size: int, available: Iterable[str], must_include: Iterable[str], pods: list[BoundPod],
           allocated: Mapping[str, set[str]], uuid_of: Mapping[int, str]) -> Choice:
    """The preferred devices for one container asking `size` devices. `allocated`: pod key -> device IDs the
    kubelet already gave it (pod-resources); `uuid_of`: device index -> ID."""
    free, must = set(available), list(dict.fromkeys(must_include))
    want = size - len(must)
    if want <= 0:
        return Choice(tuple(must[:size]), None, None)
    fits, blocked = [], []
    for p in pods:
        if p.named is None or any(i not in uuid_of for i in p.named):
            continue
        left = [uuid_of[i] for i in p.named if uuid_of[i] not in allocated.get(p.key, ()) and uuid_of[i] not in must]
        if len(left) < want:
            continue
        exact = len(left) == want
        (fits if set(left) <= free else blocked).append((not exact, p.creation, p.key, left, p))
    if fits:
        _, _, _, left, pod = min(fits, key=lambda t: t[:3])
        return Choice(tuple(must + left[:want]), pod, None)
    exact_blocked = [t for t in blocked if not t[0]]
    return Choice((), None, min(exact_blocked, key=lambda t: t[1:3])[4] if exact_blocked else None)


@dataclass(frozen=True)
class Correction:
    """A pod whose annotation is not what the node did: the patch that makes it so, and what to tell."""

    pod: BoundPod
    actual: tuple[int, ...]
    patch: dict
    reason: str  # GPUAllocationDiverged (the node gave other devices) | GPUAllocationRecorded (no annotation)
    message: str


def corrections(pods: list[BoundPod], allocated: Mapping[str, set[str]], index_of: Mapping[str, int]
                ) -> list[Correction]:
    """For every pod the kubelet gave devices to, the annotation rewrite that makes it name those devices (the
    live scheduler's books read it). The scheduler's own pick is kept in `gangsched.io/gpu-devices-scheduled`."""
    out = []
    for p in pods:
        ids = allocated.get(p.key)
        if not ids or any(d not in index_of for d in ids):
            continue
        actual = tuple(sorted(index_of[d] for d in ids))
        if p.named is not None and sorted(p.named) == list(actual):
            continue
        value = ",".join(map(str, actual))
        annotations = {GPU_DEVICES_ANNOTATION: value}
        if p.named is None:
            reason = "GPUAllocationRecorded"
            message = f"the kubelet allocated GPUs {value} (the pod named none); recorded for the scheduler's books"
        else:
            reason = "GPUAllocationDiverged"
            picked = ",".join(map(str, p.named))
            message = (f"the scheduler picked GPUs {picked} but the kubelet allocated {value} (they were not free "
                       f"on the node); the annotation now names what the node did")
            annotations.setdefault(SCHEDULED_ANNOTATION,
                                   ((p.obj.get("metadata") or {}).get("annotations") or {}).get(SCHEDULED_ANNOTATION)
                                   or picked)
        out.append(Correction(p, actual, {"metadata": {"annotations": annotations}}, reason, message))
    return out
