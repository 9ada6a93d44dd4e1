"""Kubernetes objects (JSON dicts) -> the core's model. Errors name the field, for Events users can act on."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import ROUND_CEILING, Decimal, InvalidOperation
from typing import Any, NamedTuple

from kubernetes.utils.quantity import parse_quantity

from gangsched.model import (
    CPU,
    GPU,
    MEMORY,
    MILLI_PER_GPU,
    PODS,
    Demand,
    GpuDevice,
    ModelError,
    Node,
    PodGroup,
    Requirement,
    Taint,
    TaintEffect,
    Toleration,
)

POD_GROUP_LABEL = "scheduling.x-k8s.io/pod-group"  # scheduler-plugins coscheduling
VOLCANO_GROUP_ANNOTATION = "scheduling.k8s.io/group-name"  # Volcano
# Kubernetes' own PodGroups (the Workload API, KEP-4671; beta in 1.37): pods name theirs in this field.
NATIVE_PODGROUP_API = "scheduling.k8s.io/v1beta1"
NATIVE_GROUP_FIELD = "spec.schedulingGroup.podGroupName"
GPU_DEVICES_ANNOTATION = "gangsched.io/gpu-devices"  # the device indices we picked, for the device plugin
GPU_MODELS_ANNOTATION = "gangsched.io/gpu-models"  # comma-separated GPU models the pod accepts
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_INVENTORY_ANNOTATION = "gangsched.io/gpu-inventory"  # the node's devices, published by our device plugin
MILLI_RESOURCES = {CPU}
# The state holds quantities in int64 and adds a request to a node's usage (both at most MAX_QUANTITY): 2**61
# leaves that sum, and a few more, room below 2**63.
MAX_QUANTITY = 2**62 // 2
MAX_GPUS = (2**31 - 1) // MILLI_PER_GPU  # a pod's GPUs: GPU milli are int32 per device and per shape
MAX_NODE_GPUS = 1024  # every device is a column of the per-device arrays of all nodes; time-slicing stays below


class _TooLarge(ModelError):
    pass


def quantity(value: Any, field: str, milli: bool = False, limit: int = MAX_QUANTITY) -> int:
    """A Kubernetes quantity as an int (in thousandths if `milli`), rounded up as kube-scheduler does.
    ModelError naming `field` if it is not a finite quantity, is negative, or is above `limit`."""
    try:
        q = parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError):
        raise ModelError(f"{field}={value!r} is not a Kubernetes quantity") from None
    if not q.is_finite():  # "Infinity", "NaN" parse as Decimals
        raise ModelError(f"{field}={value!r} is not a Kubernetes quantity")
    if q < 0:
        raise ModelError(f"{field}={value!r} is negative")
    scale = 1000 if milli else 1
    if q > Decimal(limit) / scale:  # compared before converting: "1e999999999" must not become an int
        raise _TooLarge(f"{field}={value!r} is too large")
    return min(int((q * scale).to_integral_value(rounding=ROUND_CEILING)), limit)


def _limit(res: str) -> int:
    return MAX_GPUS if res == GPU else MAX_QUANTITY


def _dict(x: Any) -> dict:
    return x if isinstance(x, dict) else {}


def _list(x: Any) -> list[tuple[int, dict]]:
    """(index, entry) of the dict entries of a list: odd objects yield nothing rather than raise."""
    return [(i, e) for i, e in enumerate(x) if isinstance(e, dict)] if isinstance(x, list) else []


def parse_time(ts: str | None) -> float:
    """An RFC 3339 timestamp as epoch seconds (0.0 if absent or malformed)."""
    if not ts:
        return 0.0
    try:
        return datetime.fromisoformat(ts).timestamp()  # C-fast; 3.11 reads the trailing "Z"
    except ValueError:
        return 0.0


def node_from(obj: dict) -> Node:
    meta, spec, status = obj.get("metadata") or {}, obj.get("spec") or {}, obj.get("status") or {}
    name = meta["name"]
    allocatable: dict[str, int] = {}
    for res, value in (status.get("allocatable") or status.get("capacity") or {}).items():
        # ephemeral-storage and hugepages-* are ordinary scalar resources to kube-scheduler, so to us
        field = f"node {name} status.allocatable[{res}]"
        limit = MAX_NODE_GPUS if res == GPU else MAX_QUANTITY
        try:
            allocatable[res] = quantity(value, field, milli=res in MILLI_RESOURCES, limit=limit)
        except _TooLarge:
            # Clamped, not rejected: an ignored node would hide the pods bound to it, and a pod can ask for at
            # most MAX_QUANTITY anyway. (Not a quantity, or negative: still a ModelError.)
            allocatable[res] = limit
    taints = tuple(_taint(t, name) for t in spec.get("taints") or [] if t.get("effect") in _EFFECTS)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    gpus = node_gpus((meta.get("annotations") or {}).get(GPU_INVENTORY_ANNOTATION), allocatable.get(GPU, 0))
    if gpus:
        allocatable[GPU] = sum(d.healthy for d in gpus)
    # With no node-lifecycle controller (our dev cluster) nobody taints a NotReady node, so check it here.
    return Node(name=name, allocatable=allocatable, labels=dict(meta.get("labels") or {}), taints=taints,
                unschedulable=bool(spec.get("unschedulable")) or not ready, gpus=gpus)


def node_gpus(inventory: str | None, allocatable: int) -> tuple[GpuDevice, ...]:
    """The devices our device plugin published (`gangsched.io/gpu-inventory`: index, model, memoryMiB, island,
    healthy per device), reconciled with the kubelet's count: a device is usable only if both say so. The plugin
    marks a device unhealthy on the node before it tells the kubelet, so the annotation leads; where the kubelet
    offers fewer (plugin not registered yet, after a kubelet restart), the highest healthy indices are held back.
    () when absent or malformed: the node then counts as `allocatable` identical devices."""
    if not inventory:
        return ()
    try:
        gpus = [GpuDevice(index=int(e["index"]), model=str(e.get("model") or ""),
                          memory_mib=int(e.get("memoryMiB") or 0), group=int(e.get("island") or 0),
                          healthy=e.get("healthy", True) is True) for e in json.loads(inventory)]
    except (ValueError, TypeError, KeyError, AttributeError):
        return ()
    if not gpus or len(gpus) > MAX_NODE_GPUS or [d.index for d in gpus] != list(range(len(gpus))) or \
            any(not 0 <= d.group < 2**15 for d in gpus):
        return ()
    extra = sum(d.healthy for d in gpus) - allocatable
    for d in reversed(gpus):
        if extra <= 0:
            break
        if d.healthy:
            gpus[d.index] = GpuDevice(d.index, d.model, d.memory_mib, d.group, healthy=False)
            extra -= 1
    return tuple(gpus)


_EFFECTS = {e.value for e in TaintEffect}


def _taint(t: dict, node: str) -> Taint:
    return Taint(key=t.get("key", ""), value=t.get("value", "") or "", effect=TaintEffect(t["effect"]))


# ---- effective requests ----------------------------------------------------------------------------------------
Resources = dict[str, int]


class _Reader:
    """Reads a pod's quantities. Strict (ModelError naming the field) unless `notes` is a list: then a quantity
    that is not one counts as 0 and one too large as the limit, and each approximation is noted."""

    def __init__(self, pod: str, notes: list[str] | None):
        self.pod, self.notes = pod, notes

    def amount(self, value: Any, field: str, res: str) -> int:
        limit = _limit(res)
        try:
            return quantity(value, f"pod {self.pod} {field}", milli=res in MILLI_RESOURCES, limit=limit)
        except _TooLarge as e:
            self._note(e, f"clamped to {limit}")
            return limit
        except ModelError as e:
            self._note(e, "counted as 0")
            return 0

    def resources(self, values: Any, field: str) -> Resources:
        return {r: self.amount(v, f"{field}[{r}]", r) for r, v in _dict(values).items()}

    def total(self, res: str, qty: int) -> int:
        """A sum of requests, checked like one: many containers may add up past what the state holds."""
        limit = _limit(res)
        if qty <= limit:
            return qty
        self._note(_TooLarge(f"pod {self.pod} requests[{res}] summed over its containers ({qty}) is too large"),
                   f"clamped to {limit}")
        return limit

    def _note(self, error: ModelError, approximation: str) -> None:
        if self.notes is None:
            raise error
        self.notes.append(f"{error}; {approximation}")


def _add(into: Resources, more: Resources) -> None:
    for r, q in more.items():
        into[r] = into.get(r, 0) + q


def _max(*lists: Resources) -> Resources:
    out: Resources = {}
    for rl in lists:
        for r, q in rl.items():
            out[r] = max(out.get(r, 0), q)
    return out


def _resize_infeasible(status: dict) -> bool:
    if status.get("resize") == "Infeasible":  # before Kubernetes 1.33
        return True
    return any(c.get("type") == "PodResizePending" and c.get("reason") == "Infeasible"
               for _, c in _list(status.get("conditions")))


def pod_requests(obj: dict, notes: list[str] | None = None) -> Resources:
    """Effective requests, as kube-scheduler computes them (component-helpers resource.PodRequests):
    containers summed; sidecars (init containers with restartPolicy Always) added too, as they keep running;
    a regular init container runs with just the sidecars started before it, so the pod needs at least that sum
    (max); pod-level requests replace cpu, memory and hugepages-*; overhead added.
    While an in-place resize is pending, a container counts the largest of its spec and what the kubelet
    reports (status allocatedResources, resources.requests); once the resize is infeasible, only the latter.
    Strict unless `notes` is given (see `_Reader`)."""
    spec, status = _dict(obj.get("spec")), _dict(obj.get("status"))
    read = _Reader(_dict(obj.get("metadata")).get("name", "?"), notes)
    reported = {cs["name"]: (f"status.{kind}[{k}]", cs) for kind in ("containerStatuses", "initContainerStatuses")
                for k, cs in _list(status.get(kind)) if isinstance(cs.get("name"), str)}  # matched by name
    infeasible = _resize_infeasible(status)

    def of(c: dict, where: str, resizable: bool = True) -> Resources:
        res = _dict(c.get("resources"))
        # the API server defaults requests to limits; be robust anyway
        wanted = read.resources({**_dict(res.get("limits")), **_dict(res.get("requests"))},
                                f"{where}.resources.requests")
        path, cs = reported.get(c.get("name"), ("", {}))
        if not resizable or not ("resources" in cs or "allocatedResources" in cs):
            return wanted
        actual = read.resources(_dict(cs.get("resources")).get("requests"), f"{path}.resources.requests")
        allocated = read.resources(cs.get("allocatedResources"), f"{path}.allocatedResources")
        return _max(actual, allocated) if infeasible else _max(wanted, actual, allocated)

    total: Resources = {}
    for i, c in _list(spec.get("containers")):
        _add(total, of(c, f"spec.containers[{i}]"))
    sidecars: Resources = {}  # of the sidecars started so far
    init_peak: Resources = {}
    for i, c in _list(spec.get("initContainers")):
        if c.get("restartPolicy") == "Always":
            reqs = of(c, f"spec.initContainers[{i}]")
            _add(total, reqs)
            _add(sidecars, reqs)
            init_peak = _max(init_peak, sidecars)
        else:  # a regular init container cannot be resized
            alone = of(c, f"spec.initContainers[{i}]", resizable=False)
            _add(alone, sidecars)
            init_peak = _max(init_peak, alone)
    total = _max(total, init_peak)
    pod_level = _dict(spec.get("resources"))
    pod_level = {r: v for r, v in {**_dict(pod_level.get("limits")), **_dict(pod_level.get("requests"))}.items()
                 if r in (CPU, MEMORY) or r.startswith("hugepages-")}  # what pod-level requests may set
    total.update(read.resources(pod_level, "spec.resources.requests"))
    _add(total, read.resources(spec.get("overhead"), "spec.overhead"))
    return {r: read.total(r, q) for r, q in total.items()}


def _requests(reqs: Resources) -> tuple[tuple[tuple[str, int], ...], int]:
    """Demand.requests and gpu_count of effective requests: every pod takes a pod slot and shows cpu/memory."""
    gpus = reqs.pop(GPU, 0)
    reqs[PODS] = 1
    for res in (CPU, MEMORY):
        reqs.setdefault(res, 0)
    return tuple(sorted(reqs.items())), gpus


def held_demand(obj: dict) -> tuple[Demand, list[str]]:
    """What a pod that holds a node's resources (bound) takes from it: only its requests and GPU count, since
    where it may run no longer matters. Never raises, so a bound pod is always accounted: a quantity that is
    not one counts as 0 and one too large as the maximum; the notes name each such field, for a log/metric."""
    notes: list[str] = []
    requests, gpus = _requests(pod_requests(obj, notes))
    return Demand(requests=requests, gpu_count=gpus), notes


def demand_from(obj: dict) -> Demand:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    requests, gpus = _requests(pod_requests(obj))
    models = frozenset(m.strip() for m in (meta.get("annotations") or {}).get(GPU_MODELS_ANNOTATION, "").split(",")
                       if m.strip())
    selector = tuple(sorted((spec.get("nodeSelector") or {}).items()))
    affinity = _affinity(spec, meta.get("name", "?"))
    tolerations = tuple(_toleration(t, f"pod {meta.get('name', '?')} spec.tolerations[{i}]")
                        for i, t in enumerate(spec.get("tolerations") or []))
    return Demand(requests=requests, gpu_count=gpus, gpu_models=models, node_selector=selector,
                  affinity=affinity, tolerations=tolerations)


_REQUIRED = "spec.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution"


def _affinity(spec: dict, name: str) -> tuple[tuple[Requirement, ...], ...]:
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = []
    for i, term in enumerate(required.get("nodeSelectorTerms") or []):
        term, reqs = _dict(term), []  # a null term, like an empty one, matches no node
        # both lists of a term are ANDed; matchFields name node fields (only metadata.name), not labels
        for kind, field in (("matchExpressions", False), ("matchFields", True)):
            for j, expr in _list(term.get(kind)):
                where = f"pod {name} {_REQUIRED}.nodeSelectorTerms[{i}].{kind}[{j}]"
                if "key" not in expr:
                    raise ModelError(f"{where}: needs a key")
                try:
                    reqs.append(Requirement(expr["key"], expr.get("operator", ""), tuple(expr.get("values") or ()),
                                            field=field))
                except ModelError as e:
                    raise ModelError(f"{where}: {e}") from None
        terms.append(tuple(reqs))
    return tuple(terms)


def _toleration(t: dict, where: str) -> Toleration:
    effect = t.get("effect")
    if effect and effect not in _EFFECTS:
        raise ModelError(f"{where}.effect={effect!r}: expected one of {', '.join(sorted(_EFFECTS))}")
    return Toleration(key=t.get("key", "") or "", operator=t.get("operator", "Equal") or "Equal",
                      value=t.get("value", "") or "", effect=TaintEffect(effect) if effect else None)


def group_name(obj: dict) -> str | None:
    """The PodGroup a pod belongs to: scheduler-plugins' label, else Volcano's annotation."""
    meta = obj.get("metadata") or {}
    return (meta.get("labels") or {}).get(POD_GROUP_LABEL) or (meta.get("annotations") or {}).get(
        VOLCANO_GROUP_ANNOTATION) or None


def native_group_name(obj: dict) -> str | None:
    """The native PodGroup a pod names in spec.schedulingGroup.podGroupName (Kubernetes >= 1.36)."""
    name = _dict(_dict(obj.get("spec")).get("schedulingGroup")).get("podGroupName")
    return name if isinstance(name, str) and name else None


def group_conflict(obj: dict) -> str | None:
    """Why a pod names its PodGroup ambiguously: both natively and by scheduler-plugins' label or Volcano's
    annotation (each names a PodGroup of another API). None if it names at most one."""
    native, other = native_group_name(obj), group_name(obj)
    if native is None or other is None:
        return None
    meta = obj.get("metadata") or {}
    field = (f"label {POD_GROUP_LABEL}" if (meta.get("labels") or {}).get(POD_GROUP_LABEL)
             else f"annotation {VOLCANO_GROUP_ANNOTATION}")
    return (f"pod {meta.get('namespace', 'default')}/{meta.get('name', '?')}: {NATIVE_GROUP_FIELD}={native!r} and "
            f"{field}={other!r} both name a PodGroup; keep one")


class NativePolicy(NamedTuple):
    """What a native PodGroup says beyond the gang: how it may be preempted and whether it may preempt."""

    whole: bool = False  # spec.disruptionMode.all: evicted whole, never pod by pod (the default is single)
    never_preempts: bool = False  # spec.preemptionPolicy: Never


def native_podgroup_from(obj: dict) -> tuple[PodGroup, NativePolicy]:
    """A `scheduling.k8s.io/v1beta1` PodGroup: a gang of spec.schedulingPolicy.gang.minCount (a basic policy: of
    1, its pods placed as they come), its priority (spec.priority, which admission sets from priorityClassName),
    its disruption mode and preemption policy. ModelError naming the field if it is not one."""
    meta, spec = obj.get("metadata") or {}, _dict(obj.get("spec"))
    ns, name = meta.get("namespace", "default"), meta["name"]
    where = f"PodGroup {ns}/{name} ({NATIVE_PODGROUP_API})"
    policy = _dict(spec.get("schedulingPolicy"))
    if ("gang" in policy) == ("basic" in policy):
        raise ModelError(f"{where}: spec.schedulingPolicy needs exactly one of basic, gang")
    min_count = _dict(policy.get("gang")).get("minCount", 0) if "gang" in policy else 1
    if not isinstance(min_count, int) or isinstance(min_count, bool) or min_count < 1:
        raise ModelError(f"{where}: spec.schedulingPolicy.gang.minCount={min_count} must be an integer >= 1")
    priority = spec.get("priority")
    if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
        raise ModelError(f"{where}: spec.priority={priority!r} must be an integer")
    parent = spec.get("parentCompositePodGroupName")
    if parent:  # its gang is the composite's (minGroupCount groups at once): scheduling it alone would be wrong
        raise ModelError(f"{where}: spec.parentCompositePodGroupName={parent!r}: CompositePodGroups (alpha, "
                         "scheduling.k8s.io/v1alpha3) are not supported; its pods are not scheduled")
    policy_name = spec.get("preemptionPolicy")
    if policy_name not in (None, "Never", "PreemptLowerPriority"):
        raise ModelError(f"{where}: spec.preemptionPolicy={policy_name!r}: expected Never or PreemptLowerPriority")
    return (PodGroup(name=name, min_member=min_count, namespace=ns, priority=priority or 0,
                     creation=parse_time(meta.get("creationTimestamp"))),
            NativePolicy("all" in _dict(spec.get("disruptionMode")), policy_name == "Never"))


def podgroup_from(obj: dict) -> PodGroup:
    meta, spec = obj.get("metadata") or {}, obj.get("spec") or {}
    ns, name = meta.get("namespace", "default"), meta["name"]
    where = f"PodGroup {ns}/{name}"
    min_member = spec.get("minMember", 0)
    if not isinstance(min_member, int) or min_member < 1:
        raise ModelError(f"{where}: spec.minMember={min_member} must be an integer >= 1")
    timeout = spec.get("scheduleTimeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or timeout < 1):
        raise ModelError(f"{where}: spec.scheduleTimeoutSeconds={timeout} must be a positive integer")
    min_res = tuple(sorted(
        (r, quantity(v, f"{where} spec.minResources[{r}]", milli=r in MILLI_RESOURCES))
        for r, v in (spec.get("minResources") or {}).items()))
    return PodGroup(name=name, min_member=min_member, namespace=ns, min_resources=min_res,
                    creation=parse_time(meta.get("creationTimestamp")),
                    timeout=float(timeout) if timeout is not None else None)


def gpu_devices(obj: dict) -> tuple[int, ...] | None:
    value = ((obj.get("metadata") or {}).get("annotations") or {}).get(GPU_DEVICES_ANNOTATION)
    if not value:
        return None
    try:
        return tuple(int(x) for x in value.split(","))
    except ValueError:
        return None
