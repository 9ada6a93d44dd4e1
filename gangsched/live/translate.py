"""Kubernetes objects (JSON dicts) -> the core's model. Errors name the field, for Events users can act on."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from gangsched.model import (
    CPU,
    GPU,
    MEMORY,
    PODS,
    Demand,
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
GPU_DEVICES_ANNOTATION = "gangsched.io/gpu-devices"  # the device indices we picked, for the device plugin
GPU_MODELS_ANNOTATION = "gangsched.io/gpu-models"  # comma-separated GPU models the pod accepts
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
MILLI_RESOURCES = {CPU}


def quantity(value: Any, field: str, milli: bool = False) -> int:
    try:
        q = parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError):
        raise ModelError(f"{field}={value!r} is not a Kubernetes quantity") from None
    q = q * 1000 if milli else q
    return int(q.to_integral_value(rounding="ROUND_CEILING")) if isinstance(q, Decimal) else int(q)


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
        if res.startswith("hugepages-") or res == "ephemeral-storage":
            continue  # not scheduled on by any of our filters; keeps the resource matrix small
        allocatable[res] = quantity(value, f"node {name} status.allocatable[{res}]", milli=res in MILLI_RESOURCES)
    taints = tuple(_taint(t, name) for t in spec.get("taints") or [] if t.get("effect") in _EFFECTS)
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    # With no node-lifecycle controller (our dev cluster) nobody taints a NotReady node, so check it here.
    return Node(name=name, allocatable=allocatable, labels=dict(meta.get("labels") or {}), taints=taints,
                unschedulable=bool(spec.get("unschedulable")) or not ready)


_EFFECTS = {e.value for e in TaintEffect}


def _taint(t: dict, node: str) -> Taint:
    return Taint(key=t.get("key", ""), value=t.get("value", "") or "", effect=TaintEffect(t["effect"]))


def pod_requests(obj: dict) -> dict[str, int]:
    """Effective requests, as kube-scheduler computes them: max(sum of containers, any init container)
    plus pod overhead."""
    spec = obj.get("spec") or {}
    name = (obj.get("metadata") or {}).get("name", "?")

    def of(container: dict, where: str) -> dict[str, int]:
        res = container.get("resources") or {}
        reqs = dict(res.get("limits") or {})  # the API server defaults requests to limits; be robust anyway
        reqs.update(res.get("requests") or {})
        return {r: quantity(v, f"pod {name} {where}.resources.requests[{r}]", milli=r in MILLI_RESOURCES)
                for r, v in reqs.items()}

    total: dict[str, int] = {}
    for i, c in enumerate(spec.get("containers") or []):
        for r, q in of(c, f"spec.containers[{i}]").items():
            total[r] = total.get(r, 0) + q
    for i, c in enumerate(spec.get("initContainers") or []):
        for r, q in of(c, f"spec.initContainers[{i}]").items():
            total[r] = max(total.get(r, 0), q)
    for r, v in (spec.get("overhead") or {}).items():
        total[r] = total.get(r, 0) + quantity(v, f"pod {name} spec.overhead[{r}]", milli=r in MILLI_RESOURCES)
    return total


def demand_from(obj: dict) -> Demand:
    spec = obj.get("spec") or {}
    meta = obj.get("metadata") or {}
    reqs = pod_requests(obj)
    gpus = reqs.pop(GPU, 0)
    reqs[PODS] = 1
    for res in (CPU, MEMORY):
        reqs.setdefault(res, 0)
    models = frozenset(m.strip() for m in (meta.get("annotations") or {}).get(GPU_MODELS_ANNOTATION, "").split(",")
                       if m.strip())
    selector = tuple(sorted((spec.get("nodeSelector") or {}).items()))
    affinity = _affinity(spec, meta.get("name", "?"))
    tolerations = tuple(_toleration(t) for t in spec.get("tolerations") or [])
    return Demand(requests=tuple(sorted(reqs.items())), gpu_count=gpus, gpu_models=models, node_selector=selector,
                  affinity=affinity, tolerations=tolerations)


def _affinity(spec: dict, name: str) -> tuple[tuple[Requirement, ...], ...]:
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    terms = []
    for i, term in enumerate(required.get("nodeSelectorTerms") or []):
        reqs = []
        for j, expr in enumerate(term.get("matchExpressions") or []):
            try:
                reqs.append(Requirement(expr["key"], expr["operator"], tuple(expr.get("values") or ())))
            except (KeyError, ModelError) as e:
                raise ModelError(f"pod {name} spec.affinity.nodeAffinity.requiredDuringSchedulingIgnored"
                                 f"DuringExecution.nodeSelectorTerms[{i}].matchExpressions[{j}]: {e}") from None
        terms.append(tuple(reqs))
    return tuple(terms)


def _toleration(t: dict) -> Toleration:
    effect = t.get("effect")
    return Toleration(key=t.get("key", "") or "", operator=t.get("operator", "Equal") or "Equal",
                      value=t.get("value", "") or "", effect=TaintEffect(effect) if effect else None)


def group_name(obj: dict) -> str | None:
    """The PodGroup a pod belongs to: scheduler-plugins' label, else Volcano's annotation."""
    meta = obj.get("metadata") or {}
    return (meta.get("labels") or {}).get(POD_GROUP_LABEL) or (meta.get("annotations") or {}).get(
        VOLCANO_GROUP_ANNOTATION) or None


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
